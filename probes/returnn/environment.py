"""The environment of a RETURNN run: the torch one, plus RETURNN itself and its config file.

The config file is executed, not imported, so it is added to the code fingerprint by hand, under the name
RETURNN gives it (`__returnn_config__`); the files it imports are modules under its folder, found as usual.
RETURNN's installed files that differ from its RECORD are found by `local_changes` like any package's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.probes.common.environment import git_state
from repro_audit.probes.common.hashing import hash_bytes

CONFIG_MODULE = "__returnn_config__"


def returnn_environment(config: RunConfig, *, config_file: Path, framework: str = "torch") -> dict[str, Any]:
    import returnn

    if framework == "torch":
        from repro_audit.probes.torch.environment import torch_environment

        environment = torch_environment(recipe_dir=str(config_file.parent))
    else:
        from repro_audit.probes.tf.environment import tf_environment

        environment = tf_environment(recipe_dir=str(config_file.parent))
    source = config_file.read_bytes()
    environment["modules"][CONFIG_MODULE] = {"path": config_file.name, "hash": hash_bytes(source)}
    environment["sources"][CONFIG_MODULE] = source.decode("utf-8", "replace")
    package = Path(returnn.__file__).resolve().parent
    environment["returnn"] = {"version": getattr(returnn, "__version__", None), "path": str(package),
                              "git": git_state(str(package.parent))}
    return environment
