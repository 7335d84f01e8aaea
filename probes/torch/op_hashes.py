"""Op-level hashes inside one region of one step: what a zoom-in compares between two runs.

Only the diverging module is instrumented: the mode is entered by a forward pre-hook of that module and left
by its forward hook, so every other op of the step, and every other step, runs at full speed. Without a
module (a divergence outside any module output), the whole step is watched.
"""

from __future__ import annotations

from typing import Any

import torch
import xxhash
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from repro_audit.probes.torch.op_recheck import UNINITIALISED, _bits
from repro_audit.probes.torch.op_sites import user_stack
from repro_audit.probes.torch.tensors import dtype_name

MAX_OPS = 20_000  # a region larger than this is cut, and says so


class OpHashMode(TorchDispatchMode):
    """Records each op's name, module, output dtype/shape, a hash of its output bits and the user's stack."""

    def __init__(self, *, module_of: Any) -> None:
        super().__init__()
        self.module_of = module_of
        self.phase = "forward"
        self.ops: list[dict[str, Any]] = []
        self.cut = False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if len(self.ops) >= MAX_OPS:
            self.cut = True
            return out
        name = func._schema.name
        outputs = [value for value in tree_flatten(out)[0] if isinstance(value, torch.Tensor)]
        node = torch._C._current_autograd_node()
        self.ops.append({
            "index": len(self.ops),
            "op": name,
            "phase": "backward" if node is not None else self.phase,
            "module": self.module_of(),
            "dtypes": [dtype_name(t.dtype) for t in outputs],
            "shapes": [list(t.shape) for t in outputs],
            # Uninitialised outputs (empty) carry no result, only their shape.
            "hashes": [] if name in UNINITIALISED else [output_hash(t) for t in outputs],
            "stack": user_stack(2, limit=6),
        })
        return out


def output_hash(tensor: torch.Tensor) -> str:
    """xxh3 of the output's bit pattern (NaN payloads and signed zeros included)."""
    if tensor.is_sparse or tensor.is_quantized or tensor.device.type == "meta":
        return "uncomparable"
    bits = _bits(tensor).contiguous().cpu()
    return xxhash.xxh3_64_hexdigest(bits.view(torch.uint8).numpy().tobytes()) if bits.numel() else "empty"


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

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
