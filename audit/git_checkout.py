"""Run a config as it was at another commit: a temporary git worktree of the user's repository.

`diff A B --ref-b REV` runs B's config, and every module beside it, from the commit REV of the repository
that holds it; the worktree is made before the run and removed after, whatever happens.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from repro_audit.audit.errors import UserError


@contextlib.contextmanager
def config_at(config: str, rev: str) -> Iterator[Path]:
    """`config`'s path inside a temporary worktree of its repository at `rev`."""
    path = Path(config).resolve()
    root = Path(_git(path.parent, "rev-parse", "--show-toplevel", what=f"{config} is not in a git repository"))
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}",
                  what=f"{rev!r} is not a commit of the repository {root}")
    folder = Path(tempfile.mkdtemp(prefix="repro-audit-ref-"))
    worktree = folder / "checkout"
    _git(root, "worktree", "add", "--detach", str(worktree), commit, what=f"cannot check out {rev} of {root}")
    try:
        inside = worktree / path.relative_to(root)
        if not inside.is_file():
            raise UserError(f"{path.relative_to(root)} does not exist at {rev} ({commit[:10]}) of {root}")
        yield inside
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _git(folder: Path, *args: str, what: str) -> str:
    try:
        result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise UserError(f"{what}: git cannot run ({exc.strerror or exc})") from exc
    if result.returncode != 0:
        raise UserError(what)
    return result.stdout.strip()
