"""The user's line behind an op: the innermost frame outside the frameworks, repro-audit and the standard
library. Found by walking frames (no traceback objects), and only where an op needs naming."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

_FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras", "numpy")
# The folder above this package as imported (a checkout's `repro_audit/`, whose audit/, probes/ and reports/ are
# links, or an installed `repro_audit/`) and as it lies on disk: frames carry whichever path was imported.
_ROOTS = {os.path.dirname(os.path.dirname(os.path.dirname(path)))
          for path in (os.path.abspath(__file__), os.path.realpath(__file__))}
_OWN_PACKAGES = "audit probes reports".split()


def _package_dirs() -> tuple[str, ...]:
    """Folders of the installed frameworks, found without importing them."""
    folders = []
    for name in _FRAMEWORKS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            folders.append(os.path.abspath(location) + os.sep)
    return tuple(folders)


_NOT_USER = (*_package_dirs(), *(os.path.join(root, name) + os.sep for root in _ROOTS for name in _OWN_PACKAGES),
             os.path.dirname(os.__file__) + os.sep, "<")


def user_frame(skip: int = 1) -> dict[str, Any] | None:
    """The innermost user frame above the caller's `skip` frames, or None."""
    frames = user_stack(skip + 1, limit=1)
    return frames[0] if frames else None


def user_stack(skip: int = 1, *, limit: int = 8) -> list[dict[str, Any]]:
    """The user's frames, innermost first (at most `limit`): the stack a zoom-in shows."""
    frames: list[dict[str, Any]] = []
    frame: Any = sys._getframe(skip)
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if not filename.startswith(_NOT_USER):
            frames.append({"file": filename, "line": frame.f_lineno, "function": frame.f_code.co_name})
        frame = frame.f_back
    return frames
