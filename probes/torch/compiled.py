"""torch.compile is refused, plainly: the probes observe eager execution.

A compiled module runs a graph that dynamo captured once: module hooks, the dispatch capture and the
generator watch see the eager model (or nothing), so a trace of it would describe numbers the compiled run
did not compute. Until the recorder can hook into compiled graphs, a compiled model, or code compiled
during a recorded step, is one clear error instead of a plausible but wrong trace.
"""

from __future__ import annotations

import sys

import torch

from repro_audit.audit.errors import RunFailed

UNSUPPORTED = ("recording torch.compile'd code is not supported (the probes observe eager execution): "
               "record the model without torch.compile")


def refuse_compiled_model(model: torch.nn.Module, *, where: str) -> None:
    """Raise for a model from torch.compile(model) or with module.compile() called on any part."""
    parts = []
    if "torch._dynamo" in sys.modules:
        from torch._dynamo.eval_frame import OptimizedModule

        if isinstance(model, OptimizedModule):
            parts.append("the model")
    for path, module in model.named_modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            parts.append(f"module {path or '(root)'}")
    if parts:
        raise RunFailed(f"{where}: {parts[0]} is compiled; {UNSUPPORTED}")


def compiled_frames() -> int:
    """Frames dynamo has compiled in this process so far (0 where it was never imported)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["frames"].get("ok", 0))


def refuse_compiled_step(frames_before: int, *, where: str) -> None:
    """Raise if code run since `frames_before` was read was compiled by torch.compile."""
    if compiled_frames() > frames_before:
        raise RunFailed(f"{where}: code run during the recorded step was compiled by torch.compile; {UNSUPPORTED}")
