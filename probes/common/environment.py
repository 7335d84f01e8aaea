"""The framework-neutral part of the environment fingerprint.

Python, OS, CPU, installed distributions, a source hash of every imported module and the git state of the
recipe's repository. Framework probes add their own section (versions, devices, determinism flags).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

DETERMINISM_ENV_VARS = (
    "PYTHONHASHSEED",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_LAUNCH_BLOCKING",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_INTRA_OP_PARALLELISM_THREADS",
    "TF_INTER_OP_PARALLELISM_THREADS",
    "NVIDIA_TF32_OVERRIDE",
    "TORCH_CUDNN_V8_API_ENABLED",
)


def base_environment(*, recipe_dir: str | None) -> dict[str, Any]:
    """Everything except the framework section; module hashes are taken at the moment of the call."""
    from repro_audit.probes.common.installed_files import local_changes, modified_sources
    from repro_audit.probes.common.stat_cache import shared_cache

    modules = imported_module_hashes(recipe_dir=recipe_dir)
    changes = local_changes()
    shared_cache().save()
    return {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable_prefix": sys.prefix == sys.base_prefix and "system" or "venv"},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()},
        "cpu": {"model": cpu_model(), "count": os.cpu_count()},
        "env_vars": {name: os.environ.get(name) for name in DETERMINISM_ENV_VARS},
        "packages": installed_packages(),
        "modules": modules,
        "git": git_state(recipe_dir),
        # Installed packages whose imported files differ from what pip installed, and editable installs.
        "local_changes": changes,
        # Sources a comparison shows changed lines of: the user's modules and modified installed files.
        "sources": {**user_sources(modules, recipe_dir), **modified_sources(changes)},
    }


MAX_USER_SOURCE_BYTES = 256 * 1024  # one module's source kept for diffs
MAX_USER_SOURCES_BYTES = 2 * 1024 * 1024  # all of them together


def user_sources(modules: dict[str, dict[str, str]], recipe_dir: str | None) -> dict[str, str]:
    """Source of each imported module under the recipe's folder (its path is stored relative), capped."""
    if not recipe_dir:
        return {}
    root, kept, total = Path(recipe_dir), {}, 0
    for name, entry in modules.items():
        path = entry["path"]
        if path.startswith("/") or name.split(".")[0] in ("repro_audit",):
            continue
        try:
            data = (root / path).read_bytes()[:MAX_USER_SOURCE_BYTES]
        except OSError:
            continue
        if total + len(data) > MAX_USER_SOURCES_BYTES:
            break
        kept[name] = data.decode("utf-8", "replace")
        total += len(data)
    return kept


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def installed_packages() -> dict[str, str]:
    from repro_audit.probes.common.distributions import installed_distributions

    packages: dict[str, str] = {}
    for installed in installed_distributions():
        packages.setdefault(installed.name, installed.version)  # the first on sys.path is the one imported
    return dict(sorted(packages.items()))


def imported_module_hashes(*, recipe_dir: str | None) -> dict[str, dict[str, str]]:
    """Path and source hash of every imported module that has a source file.

    Paths inside the recipe's folder are stored relative to it, so the same code checked out in two places
    compares equal; everything else keeps its absolute path. Hashes come from the stat cache (stat_cache.py):
    hashing torch's ~1,000 imported files anew cost a tenth of a second of every run.
    """
    from repro_audit.probes.common.distributions import real_path
    from repro_audit.probes.common.stat_cache import shared_cache

    cache = shared_cache()
    root = str(Path(recipe_dir).resolve()) if recipe_dir else None
    modules: dict[str, dict[str, str]] = {}
    for name, module in sorted(list(sys.modules.items())):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        resolved = real_path(file)
        digests = cache.file_digests(resolved)
        if digests is not None:
            modules[name] = {"path": _display_path(resolved, root), "hash": digests.xxh3}
    return modules


def _display_path(resolved: str, root: str | None) -> str:
    """`resolved` relative to `root` where it lies inside it (both are real paths), else as it is."""
    if root is not None:
        inside = root.rstrip(os.sep) + os.sep
        if resolved.startswith(inside):
            return resolved[len(inside):]
    return resolved


def git_state(folder: str | None) -> dict[str, Any] | None:
    """Commit and dirty state of the repository holding the recipe, or None outside a repository."""
    if not folder:
        return None
    try:
        top = _git(folder, "rev-parse", "--show-toplevel")
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"root": top, "commit": commit, "dirty": dirty}


def _git(folder: str, *args: str) -> str:
    result = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10,
                            check=True)
    return result.stdout.strip()
