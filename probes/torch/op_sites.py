"""Where an op runs: the module on top of the forward stack and the innermost line of the user's code.

Lighter than the recorder's ModuleTracker (audit/ops needs no per-call records): one pre-hook and one hook
per module keep a stack of paths. The source line is looked up only for ops already found nondeterministic,
and for the forward ops whose backward may later be, so the walk up the frames stays off the hot path of
most ops.
"""

from __future__ import annotations

from typing import Any

import torch

from repro_audit.probes.common.source_lines import user_frame, user_stack

__all__ = ["ModuleStack", "user_frame", "user_stack"]


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
