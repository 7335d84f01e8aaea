"""The child process that records one run: `python -m repro_audit.audit.worker`.

A fresh interpreter per run means no state leaks between runs (imported modules, seeded generators,
thread pools, cudnn autotuner caches). The parent sends the config as JSON on stdin (no temporary file to
leave behind) and listens on one pipe of JSON lines; the run counts as recorded only once the worker says
"done". The recipe's own stdout and stderr go to the trace's run.log. The worker dies with its parent
(audit/parent_watch.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro_audit.audit.tool_path import forget_tool_folder

# Exit codes the runner understands.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USER_ERROR = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro_audit.audit.worker")
    parser.add_argument("--trace", required=True)
    parser.add_argument("--events-fd", type=int)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--channel", help="under torchrun: the folder with config.json and the ranks' events")
    args = parser.parse_args(argv)
    forget_tool_folder()  # before the recipe is imported: an `audit` package it imports is the user's own
    from repro_audit.audit.parent_watch import die_with_parent

    if args.channel:  # one rank of a run under torchrun (audit/launch.py): it dies with torchrun
        rank = int(os.environ.get("RANK", "0"))
        die_with_parent(os.getppid())
        trace = str(Path(args.trace) / f"rank_{rank:02d}")
        events = open(Path(args.channel) / f"rank_{rank:02d}.jsonl", "a", buffering=1,  # noqa: SIM115 (lives as
                      encoding="utf-8")  # long as the rank, like the events pipe)
        events.write(json.dumps({"event": "started", "pid": os.getpid()}) + "\n")
        _stacks_on_request(Path(args.channel) / f"rank_{rank:02d}.stack")
        payload_text = (Path(args.channel) / "config.json").read_text(encoding="utf-8")
    else:
        die_with_parent(args.parent_pid)
        trace = args.trace
        events = os.fdopen(args.events_fd, "w", buffering=1, encoding="utf-8")
        payload_text = sys.stdin.read()

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")

    from repro_audit.audit.config import RunConfig
    from repro_audit.audit.errors import UserError
    from repro_audit.audit.trace import TraceWriter
    from repro_audit.audit.trace import format as fmt

    payload = json.loads(payload_text)
    _stdin_from_devnull()
    config = RunConfig.from_dict(payload["config"], config_dir=payload.get("config_dir"),
                                 source=payload.get("source"))
    try:
        writer = TraceWriter(trace, framework=config.framework, config=config.to_dict(), label=config.label)
    except UserError as exc:  # the trace cannot go there (not ours to replace, no space): said, not a traceback
        emit({"event": "error", **_error("user_error", exc, 1)})
        return EXIT_USER_ERROR
    _redirect_output(writer.staging / fmt.LOG)
    current_step = {"step": 0}

    def progress(step: int, phase: str | None = None) -> None:
        """A finished step; or, from a rank under torchrun, the phase of the step it enters (so a hang is
        placed: the rank still in forward is the one the others wait for in the all-reduce)."""
        if phase is not None:
            emit({"event": "phase", "step": step, "phase": phase})
            return
        current_step["step"] = step
        emit({"event": "step", "step": step, "steps": config.steps})

    try:
        random.seed(config.seed)
        _import_framework(config.framework)
        _seed_numpy(config.seed)
        record_run = _recorder_for(config.framework, payload.get("mode", "record"), payload.get("zoom"))
        record_run(config, writer, progress=progress)
    except UserError as exc:
        error = _error("user_error", exc, current_step["step"] + 1)
        return _finish(writer, emit, error=error, code=EXIT_USER_ERROR)
    except BaseException as exc:  # the recipe's own crash, KeyboardInterrupt included: keep what was recorded
        error = _error("crash", exc, current_step["step"] + 1)
        return _finish(writer, emit, error=error, code=EXIT_CRASH)
    code = _finish(writer, emit, error=None, code=EXIT_OK)
    if code == EXIT_OK:
        emit({"event": "done", "steps": current_step["step"]})
    return code


def _finish(writer: Any, emit: Callable[[dict[str, Any]], None], *, error: dict[str, Any] | None,
            code: int) -> int:
    """Close the trace and report how the run ended; a trace that cannot be closed (full disk) is the
    run's error, reported as one, never a silent "done"."""
    from repro_audit.audit.errors import UserError

    try:
        writer.finish(complete=error is None, error=error)
    except UserError as exc:
        error = error or _error("user_error", exc, writer.manifest.get("steps_recorded", 0) + 1)
        emit({"event": "error", **error})
        return EXIT_USER_ERROR
    if error is not None:
        emit({"event": "error", **error})
    return code


def _recorder_for(framework: str, mode: str, zoom: dict[str, Any] | None) -> Callable[..., None]:
    """`record` writes a trace; `ops` (repro-audit ops) runs every op twice and writes ops.json; `zoom` (the
    zoom-in of check and diff) hashes the ops of one module at one step and writes zoom.json; `drift` (the
    cross-rank zoom-in) lists each rank's writes to the tensors that drifted and writes writers.json."""
    if mode == "drift":
        from functools import partial

        from repro_audit.probes.torch.drift_run import record_drift

        return partial(record_drift, zoom=zoom or {})
    if mode == "zoom":
        if framework != "torch":
            from repro_audit.audit.errors import ConfigError

            raise ConfigError("the op-level zoom-in supports torch runs only")
        from functools import partial

        from repro_audit.probes.torch.zoom_run import record_zoom

        return partial(record_zoom, zoom=zoom or {})
    if mode == "ops":
        if framework == "returnn":
            from repro_audit.audit.errors import ConfigError

            raise ConfigError("repro-audit ops runs torch and TensorFlow recipes; RETURNN configs are not supported yet")
        if framework == "torch":
            from repro_audit.probes.torch.ops_run import record_ops as record_torch_ops

            return record_torch_ops
        from repro_audit.probes.tf.ops_run import record_ops as record_tf_ops

        return record_tf_ops
    if framework == "torch":
        from repro_audit.probes.torch.recorder import record_run
    elif framework == "returnn":
        from repro_audit.probes.returnn.recorder import record_run
    else:
        from repro_audit.probes.tf.recorder import record_run
    return record_run


def _import_framework(framework: str) -> None:
    """torch or TensorFlow imported first, with the collector off (probes/common/collector.py: a quarter of
    the import otherwise); the recorders import it again from sys.modules. A missing install is the user's
    error, raised here as the recorder would. RETURNN picks its backend from its config: imported later."""
    from repro_audit.probes.common.collector import frozen_imports

    with frozen_imports():
        import numpy  # noqa: F401 (numpy's objects frozen with the framework's)

        if framework == "torch":
            from repro_audit.probes.torch import require_torch

            require_torch()
        elif framework == "tensorflow":
            from repro_audit.probes.tf import require_tensorflow

            require_tensorflow()


def _seed_numpy(seed: int) -> None:
    import numpy as np

    np.random.seed(seed)


def _error(kind: str, exc: BaseException, step: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "step": step,
    }


def _stacks_on_request(path: Path) -> None:
    """SIGUSR1 writes every thread's Python stack to `path`: on a timeout the launcher asks each rank where it
    waits, to tell the rank that hung from the ranks waiting for it in a collective."""
    import faulthandler
    import signal

    stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 (faulthandler writes to it until the rank ends)
    faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
    _KEPT.append(stream)


_KEPT: list[Any] = []  # the stack file stays open for faulthandler as long as the rank lives


def _stdin_from_devnull() -> None:
    """The config came on stdin; the recipe reads nothing from it."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _redirect_output(log_path: Path) -> None:
    """Point fd 1 and 2 at run.log, so prints from C extensions land there too."""
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)


if __name__ == "__main__":
    sys.exit(main())
