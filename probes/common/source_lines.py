"""The user's line behind an op: the innermost frame outside the frameworks, repro-audit and the standard
library. Found by walking frames (no traceback objects), and only where an op needs naming."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

_FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras", "numpy")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


_NOT_USER = (*_package_dirs(), *(os.path.join(_REPO, name) + os.sep for name in ("probes", "audit", "reports")),
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
