"""The zoom-in run of `check`/`diff`: train up to the diverging step, hash every op of the diverging module.

Steps before the diverging one run plain; at that step the module's forward ops and the backward ops of the
autograd nodes they created are hashed (or every op of the step when no module is named). zoom.json gets
the ops in execution order; the parent compares the two runs' lists (audit/ops/zoom.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.trace import TraceWriter

ZOOM_FILE = "zoom.json"


class _Zoom:
    """Switches the hashing on at the zoomed step: the module's forward (through its hooks) and the whole
    backward, where the mode keeps only the ops of the module's autograd nodes; or the whole step."""

    def __init__(self, mode: Any, region: Any, step: int) -> None:
        self.mode, self.region, self.step = mode, region, step
        self._backward: ExitStack | None = None

    def around_step(self, step: int) -> AbstractContextManager[Any]:
        if step != self.step:
            return nullcontext()
        if self.region is not None:
            self.region.active = True
            return nullcontext()
        return self.mode  # type: ignore[no-any-return]

    def forward_done(self, terms: dict[str, Any]) -> None:
        self.mode.phase = "backward"
        if self.region is not None and self.region.active:
            self._backward = ExitStack()
            self._backward.enter_context(self.mode)

    def backward_done(self, terms: dict[str, Any]) -> None:
        self.mode.phase = "forward"  # the next micro-batch
        if self._backward is not None:
            self._backward.close()
            self._backward = None

    def optimizer_starts(self) -> None:
        if self.region is not None:
            self.region.active = False
        self.mode.phase = "optimizer"

    def close(self) -> None:
        """A step that raised between forward and backward leaves no mode entered."""
        self.backward_done({})


def record_zoom(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None],
                zoom: dict[str, Any]) -> None:
    from repro_audit.probes.torch.op_hashes import ModuleRegion, OpHashMode
    from repro_audit.probes.torch.op_sites import ModuleStack
    from repro_audit.probes.torch.plain_loop import build_recipe, run_steps

    step, module = int(zoom["step"]), zoom.get("module")
    recipe = build_recipe(config)
    modules = ModuleStack(recipe.model)
    mode = OpHashMode(module_of=modules.current, region_backward_only=bool(module))
    region = None
    if module:
        try:
            region = ModuleRegion(recipe.model, module, mode)
        except AttributeError:
            raise ConfigError(f"zoom-in: the model has no module {module!r}") from None
    watcher = _Zoom(mode, region, step)
    try:
        run_steps(config, recipe, steps=step, watcher=watcher, progress=progress)
    finally:
        watcher.close()
        modules.close()
        if region is not None:
            region.close()
        writer.write_json(ZOOM_FILE, {"step": step, "module": module, "ops": mode.ops, "cut": mode.cut})
