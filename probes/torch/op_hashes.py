"""Op-level hashes inside one region of one step: what a zoom-in compares between two runs.

Only the diverging module is instrumented in forward: the mode is entered by a forward pre-hook of that
module and left by its forward hook. Its backward is watched too: each forward op's autograd node is
remembered with the module and the user's stack where it was created, and during the step's backward the
mode hashes only the ops run by those nodes (a gradient can differ while every forward output agrees). Every
other op of the step, and every other step, runs at full speed. Without a module (a divergence outside any
module output), the whole step is watched, backward ops still named by the forward op that created their node.
"""

from __future__ import annotations

from typing import Any

import torch
import xxhash
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from repro_audit.probes.torch.bit_compare import bits
from repro_audit.probes.torch.op_recheck import UNINITIALISED
from repro_audit.probes.torch.op_sites import user_stack
from repro_audit.probes.torch.tensors import dtype_name

MAX_OPS = 20_000  # a region larger than this is cut, and says so
STACK_FRAMES = 6


class OpHashMode(TorchDispatchMode):
    """Records each op's name, module, output dtype/shape, a hash of its output bits and the user's stack.

    `region_backward_only`: in backward, hash only the ops of autograd nodes this mode saw created (the
    module zoom enters the mode for the whole backward, and the other modules' gradients are not its region).
    """

    def __init__(self, *, module_of: Any, region_backward_only: bool = False) -> None:
        super().__init__()
        self.module_of = module_of
        self.region_backward_only = region_backward_only
        self.phase = "forward"
        self.ops: list[dict[str, Any]] = []
        self.cut = False
        # autograd node -> (module, stack) of the forward op that created it: a backward op's whereabouts.
        self.origins: dict[Any, tuple[str | None, list[dict[str, Any]]]] = {}
        self._pending: list[tuple[torch.Tensor, str | None, list[dict[str, Any]]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        self.resolve_origins()
        out = func(*args, **(kwargs or {}))
        if len(self.ops) >= MAX_OPS:
            self.cut = True
            return out
        node = torch._C._current_autograd_node()
        if self.region_backward_only and self.phase == "backward" and self.origins.get(node) is None:
            return out  # another module's gradient, or the seed of the backward pass (ones_like)
        if node is not None:
            origin = self.origins.get(node)
            phase = "backward"
            module, stack = origin if origin is not None else (None, user_stack(2, limit=STACK_FRAMES))
        else:
            phase, module, stack = self.phase, self.module_of(), user_stack(2, limit=STACK_FRAMES)
        name = func._schema.name
        outputs = [value for value in tree_flatten(out)[0] if isinstance(value, torch.Tensor)]
        self.ops.append({
            "index": len(self.ops),
            "op": name,
            "phase": phase,
            "module": module,
            "node": node.name() if node is not None else None,
            "dtypes": [dtype_name(t.dtype) for t in outputs],
            "shapes": [list(t.shape) for t in outputs],
            # Uninitialised outputs (empty) carry no result, only their shape.
            "hashes": [] if name in UNINITIALISED else [output_hash(t) for t in outputs],
            # In backward: where the forward op that created the node ran (the backward call's own stack
            # would name only the line that called .backward()).
            "stack": stack,
        })
        if node is None and outputs:
            self._pending.append((outputs[0], module, stack))
        return out

    def resolve_origins(self) -> None:
        """Autograd sets grad_fn only after the dispatch call returns, so outputs are looked at one op later
        (and when the region's forward ends)."""
        for tensor, module, stack in self._pending:
            node = tensor.grad_fn
            if node is not None and node not in self.origins:
                self.origins[node] = (module, stack)
        self._pending = []


def output_hash(tensor: torch.Tensor) -> str:
    """xxh3 of the output's bit pattern (NaN payloads and signed zeros included)."""
    if tensor.is_sparse or tensor.is_quantized or tensor.device.type == "meta":
        return "uncomparable"
    pattern = bits(tensor).contiguous().cpu().reshape(-1)  # 0-d tensors cannot be viewed as bytes
    return xxhash.xxh3_64_hexdigest(pattern.view(torch.uint8).numpy()) if pattern.numel() else "empty"  # no copy


class ModuleRegion:
    """Enters `mode` when `path` starts its forward and leaves it when it returns (its calls at one step)."""

    def __init__(self, model: torch.nn.Module, path: str, mode: OpHashMode) -> None:
        module = model.get_submodule(path)
        self.mode = mode
        self.active = False
        self._handles = [module.register_forward_pre_hook(self._enter),
                         module.register_forward_hook(self._leave, always_call=True)]

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        if self.active:
            self.mode.__enter__()

    def _leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.active:
            self.mode.__exit__(None, None, None)
            self.mode.resolve_origins()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
