"""Module tree and per-call module tracking: which module is running, and what each module returned.

Global forward hooks keep a stack of module paths (so ops and random draws can name their module) and hand
every module output to an output probe the moment the module returns (see output_probe). Each call's input
and output autograd nodes are kept for the step, so NaN provenance can later say which module a backward
node belongs to without tracing every op.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.hooks import RemovableHandle

from repro_audit.probes.torch.tensors import dtype_name, flatten_tensors, tensors_in


_NN = torch.nn
DRAW_FREE_TYPES = frozenset({
    _NN.Linear, _NN.Bilinear, _NN.Embedding, _NN.EmbeddingBag, _NN.Identity, _NN.Flatten, _NN.Unflatten,
    _NN.Conv1d, _NN.Conv2d, _NN.Conv3d, _NN.ConvTranspose1d, _NN.ConvTranspose2d, _NN.ConvTranspose3d,
    _NN.LayerNorm, _NN.GroupNorm, _NN.BatchNorm1d, _NN.BatchNorm2d, _NN.BatchNorm3d, _NN.InstanceNorm1d,
    _NN.InstanceNorm2d, _NN.LocalResponseNorm, *([_NN.RMSNorm] if hasattr(_NN, "RMSNorm") else []),
    _NN.ReLU, _NN.ReLU6, _NN.GELU, _NN.SiLU, _NN.Mish, _NN.Tanh, _NN.Sigmoid, _NN.LeakyReLU, _NN.ELU, _NN.SELU,
    _NN.CELU, _NN.Softplus, _NN.Hardswish, _NN.Hardsigmoid, _NN.Hardtanh, _NN.PReLU, _NN.GLU,
    _NN.Softmax, _NN.LogSoftmax, _NN.MaxPool1d, _NN.MaxPool2d, _NN.MaxPool3d, _NN.AvgPool1d, _NN.AvgPool2d,
    _NN.AvgPool3d, _NN.AdaptiveAvgPool1d, _NN.AdaptiveAvgPool2d, _NN.AdaptiveMaxPool2d, _NN.Upsample,
})


def module_tree(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Every module in registration order with its own parameters and buffers (structure.json)."""
    modules = []
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        modules.append({
            "path": path,
            "type": type(module).__name__,
            "parameters": [{"name": prefix + name, "shape": list(p.shape), "dtype": dtype_name(p.dtype),
                            "requires_grad": p.requires_grad}
                           for name, p in module.named_parameters(recurse=False)],
            "buffers": [{"name": prefix + name, "shape": list(b.shape), "dtype": dtype_name(b.dtype)}
                        for name, b in module.named_buffers(recurse=False)],
        })
    return modules


@dataclass(slots=True)
class ModuleCall:
    """One call of one module during a step, in execution order."""

    path: str
    call: int
    module_type: str
    position: int  # among the step's calls, in the order they started
    # Made for every module call: fields that are replaced rather than filled start as a shared empty
    # tuple, not a new list each (fewer objects for the garbage collector to count and walk).
    input_nodes: Sequence[Any] = ()
    output_nodes: Sequence[Any] = ()
    n_outputs: int = 0
    # Where each output tensor sits in what the module returned (`0`, `1.hidden`): None for a bare tensor.
    # Named by place, not by count, so `(x, None)` in one run and `(x, y)` in the other still match on x.
    output_keys: Sequence[str] | None = None
    outputs: Sequence[torch.Tensor] = ()  # kept only where values are written
    summary_positions: list[int] = field(default_factory=list)
    summaries: Sequence[dict[str, Any]] = ()  # one per output, once the step stops
    activation_kinds: dict[int, str | None] = field(default_factory=dict)  # outputs health describes here
    activation_counts: dict[int, Any] = field(default_factory=dict)  # [saturated, dead, units] per kind

    def output_name(self, index: int) -> str:
        return self.path if self.output_keys is None else f"{self.path}[{self.output_keys[index]}]"


class ModuleTracker:
    """Forward hooks on every module of the model: the module stack and the calls of the current step."""

    def __init__(self, model: torch.nn.Module, *, probe: Any = None, keep_outputs: bool = False,
                 watch: Any = None, on_forward: Callable[[], None] | None = None) -> None:
        """`probe` (an OutputProbe, or None for no output summaries) sees every output as it is returned;
        `keep_outputs` keeps the tensors too, for values files. `watch` (a RandomWatch) is told where every
        module call starts and ends; `on_forward` is called when a call of the top module starts (a
        forward pass begins: the second micro-batch of an accumulating step, for one)."""
        self.paths = {module: path for path, module in model.named_modules()}
        # torch's own layers that cannot draw a random number: no generator is read around their calls (a
        # draw in one would still be seen, at the next boundary, in its parent). Exact types only: a
        # subclass may draw in its own forward.
        self.draw_free = {module for module in self.paths if type(module) in DRAW_FREE_TYPES}
        self.probe = probe
        self.watch = watch
        self.on_forward = on_forward
        self.keep_outputs = keep_outputs
        self.stack: list[str] = []
        self.calls: list[ModuleCall] = []
        self._open: list[ModuleCall | None] = []
        self._counts: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []
        self.active = False
        self.attach()

    def attach(self) -> None:
        """Register the hooks (done on creation; again after `remove`)."""
        if self._handles:
            return
        for module in self.paths:
            self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._after, with_kwargs=True, always_call=True))

    @property
    def current(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def start_step(self) -> None:
        self.calls = []
        self._counts = {}
        self.stack = []
        self._open = []
        self.active = True
        if self.probe is not None:
            self.probe.start()

    def stop(self) -> None:
        """End of the step's recording: every call gets its output summaries."""
        if self.active and self.probe is not None:
            self.probe.finish()
        self.active = False

    @contextmanager
    def separate_calls(self) -> Iterator[list[ModuleCall]]:
        """Calls made inside the block go to the yielded list, outputs not kept; the step's own calls,
        counts and stack are as before afterwards (a replayed forward pass must not count twice)."""
        saved = (self.calls, self._counts, self.stack, self._open, self.active, self.keep_outputs, self.probe,
                 self.watch, self.on_forward)
        self.calls, self._counts, self.stack, self._open = [], {}, [], []
        self.active, self.keep_outputs, self.probe, self.watch, self.on_forward = True, False, None, None, None
        try:
            yield self.calls
        finally:
            (self.calls, self._counts, self.stack, self._open, self.active, self.keep_outputs,
             self.probe, self.watch, self.on_forward) = saved

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summaries(self) -> list[dict[str, Any]]:
        """Summaries of every module output of the step, in execution order (after `stop`)."""
        return [{"module": call.output_name(index), "call": call.call, "summary": dict(summary)}
                for call in self.calls for index, summary in enumerate(call.summaries)]

    def output_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{call.output_name(index)}#{call.call}": tensor
                for call in self.calls for index, tensor in enumerate(call.outputs)}

    def _before(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        path = self.paths.get(module)
        if path is None:
            path = f"<{type(module).__name__}>"
        if not self.stack and self.active and self.on_forward is not None:
            self.on_forward()
        self.stack.append(path)
        if not self.active:
            self._open.append(None)
            return
        if self.watch is not None:
            if module in self.draw_free:
                self.watch.enter_inert()
            else:
                self.watch.enter(path)
        count = self._counts.get(path, 0)
        self._counts[path] = count + 1
        call = ModuleCall(path, count, type(module).__name__, len(self.calls), _grad_fns(args, kwargs))
        self.calls.append(call)
        self._open.append(call)

    def _after(self, module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()
        call = self._open.pop() if self._open else None
        if call is None:
            return
        if self.watch is not None:
            if module in self.draw_free:
                self.watch.leave_inert()
            else:
                self.watch.leave()
        # Hooks run for every module call: the common single-tensor output skips the generic walk.
        if type(output) is torch.Tensor or isinstance(output, torch.Tensor):
            tensors = [output]
        else:
            named = flatten_tensors(output)
            tensors = [tensor for _, tensor in named]
            call.output_keys = [key for key, _ in named]
        call.output_nodes = [t.grad_fn for t in tensors if t.grad_fn is not None]
        call.n_outputs = len(tensors)
        if self.keep_outputs:
            with _disable_current_modes():  # our detach is no op of the user's graph
                call.outputs = [t.detach() for t in tensors]
        if self.probe is not None:
            self.probe.observe(call, tensors)


def _grad_fns(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """Autograd nodes of a call's tensor inputs; plain tensor arguments skip the generic walk."""
    if not kwargs and all(type(arg) is torch.Tensor for arg in args):
        return [arg.grad_fn for arg in args if arg.grad_fn is not None]
    return [t.grad_fn for t in tensors_in((args, kwargs)) if t.grad_fn is not None]
