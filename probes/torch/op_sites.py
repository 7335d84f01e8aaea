"""Where an op runs: the module on top of the forward stack and the innermost line of the user's code.

Lighter than the recorder's ModuleTracker (audit/ops needs no per-call records): one pre-hook and one hook
per module keep a stack of paths. The source line is looked up only for ops already found nondeterministic,
and for the forward ops whose backward may later be, so the walk up the frames stays off the hot path of
most ops.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

_OWN_ROOTS = (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,)
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OWN_PACKAGES = tuple(os.path.join(_REPO, name) + os.sep for name in ("probes", "audit", "reports"))
_STDLIB = os.path.dirname(os.__file__) + os.sep
_NOT_USER = (*_OWN_ROOTS, *_OWN_PACKAGES, _STDLIB, "<")


class ModuleStack:
    """Paths of the modules whose forward is running, innermost last."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.stack: list[str] = []
        self._handles: list[Any] = []
        for path, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter_hook(path)))
            self._handles.append(module.register_forward_hook(self._leave_hook(), always_call=True))

    def current(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _enter_hook(self, path: str) -> Any:
        def enter(module: torch.nn.Module, args: Any) -> None:
            self.stack.append(path or "<model>")
        return enter

    def _leave_hook(self) -> Any:
        def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self.stack:
                self.stack.pop()
        return leave


def user_frame(skip: int = 1) -> dict[str, Any] | None:
    """The innermost frame outside torch, repro-audit and the standard library: the user's line."""
    frame = sys._getframe(skip)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_NOT_USER):
            return {"file": filename, "line": frame.f_lineno, "function": frame.f_code.co_name}
        frame = frame.f_back  # type: ignore[assignment]
    return None


def user_stack(skip: int = 1, *, limit: int = 8) -> list[dict[str, Any]]:
    """The user's frames, innermost first (at most `limit`): the stack a zoom-in shows."""
    frames = []
    frame = sys._getframe(skip)
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if not filename.startswith(_NOT_USER):
            frames.append({"file": filename, "line": frame.f_lineno, "function": frame.f_code.co_name})
        frame = frame.f_back  # type: ignore[assignment]
    return frames
