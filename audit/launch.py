"""Record a config with `launch: {nproc: N}`: N ranks under torchrun, one trace per rank in one run folder.

The real launcher (`python -m torch.distributed.run --standalone`) starts the ranks, so what it sets up
(rendezvous, RANK/WORLD_SIZE/LOCAL_RANK, OMP_NUM_THREADS) is what a user's torchrun does. torchrun gives
each rank a session of its own and closes inherited pipes, so the ranks read the config from a file and
write their events to one file each, which this process polls. Every rank dies with torchrun
(parent_watch); at the end this process kills torchrun's group and each rank's group by the pids the ranks
reported, so nothing outlives the run. A rank that fails or hangs never loses the other ranks' traces:
every rank that did not finish has its partial trace finalised with the run's error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import UserError
from repro_audit.audit.rank_stacks import in_library, innermost_frame, request_stacks
from repro_audit.audit.run_process import end_group, has_exited, interrupted_error
from repro_audit.audit.runner import POLL_S, ProgressCallback, RunResult, Stop
from repro_audit.audit.tool_path import worker_environment
from repro_audit.audit.trace import finalize_partial
from repro_audit.audit.trace.ranks import RANKS_FORMAT, rank_folder, start_ranked_run, write_ranks_file

PHASES = ("forward", "backward", "optimizer step")  # what a rank reports entering, in step order
# What a collective says when another rank died: the error of a rank that was waiting, not the cause.
CONSEQUENCE_SIGNS = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
                     "NCCL communicator was aborted", "Socket Timeout")


def record_ranks(config: RunConfig, run: Path, *, progress: ProgressCallback | None = None,
                 stop: Stop | None = None, mode: str = "record", zoom: dict[str, Any] | None = None) -> RunResult:
    """Record `config` with `config.nproc` ranks into the run folder `run`; never raises for a failed run.
    `mode` and `zoom` as for runner.record (every rank runs the same mode)."""
    start_ranked_run(run, nproc=config.nproc, label=config.label)
    channel = Path(tempfile.mkdtemp(prefix="repro-audit-launch-"))
    try:
        (channel / "config.json").write_text(json.dumps({"config": config.to_dict(), "config_dir": config.config_dir,
                                                         "source": config.source, "mode": mode, "zoom": zoom}),
                                             encoding="utf-8")
        return _Ranks(config, run, channel, progress).run(stop)
    finally:
        shutil.rmtree(channel, ignore_errors=True)


class _Ranks:
    """torchrun and its ranks, from start to reaped process groups."""

    def __init__(self, config: RunConfig, run: Path, channel: Path, progress: ProgressCallback | None) -> None:
        self.config, self.run_folder, self.channel, self.progress = config, run, channel, progress
        self.events: dict[int, list[dict[str, Any]]] = {rank: [] for rank in range(config.nproc)}
        self._offsets: dict[int, int] = {}
        self._reported = 0
        self.stacks: dict[int, str | None] = {}

    def run(self, stop: Stop | None) -> RunResult:
        env = worker_environment(os.environ)  # this repro_audit first, as for a single run (audit/tool_path.py)
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, said here so it is not a warning
        command = [self.config.python or sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={self.config.nproc}", "-m", "repro_audit.audit.worker", "--trace", str(self.run_folder),
                   "--channel", str(self.channel)]
        with open(self.run_folder / "launcher.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ending = self._wait(process, stop)
        except BaseException as exc:
            self._end(process)
            self._keep_partials(interrupted_error(exc, self._last_step()), failed_rank=None)
            raise
        self._end(process)
        self._poll()
        return self._result(ending, process.returncode, stop.cause if stop is not None else None)

    def _wait(self, process: subprocess.Popen[bytes], stop: Stop | None) -> str:
        deadline = time.monotonic() + self.config.timeout
        while not has_exited(process):
            self._poll()
            if stop is not None and stop.is_set():
                return "interrupted"
            if time.monotonic() > deadline:
                self._ask_stacks()
                return "timeout"
            time.sleep(POLL_S)
        return "exited"

    def _poll(self) -> None:
        """Read what each rank appended to its events file; progress is the slowest rank's step."""
        for rank in self.events:
            path = self.channel / f"rank_{rank:02d}.jsonl"
            try:
                with open(path, "rb") as stream:
                    stream.seek(self._offsets.get(rank, 0))
                    data = stream.read()
            except OSError:
                continue
            whole = data[:data.rfind(b"\n") + 1]
            self._offsets[rank] = self._offsets.get(rank, 0) + len(whole)
            for line in whole.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events[rank].append(event)
        slowest = min(self._step_of(rank) for rank in self.events)
        if self.progress and slowest > self._reported:
            self._reported = slowest
            self.progress(self.config.label, slowest, self.config.steps)

    def _ask_stacks(self) -> None:
        pids = {rank: event["pid"] for rank, events in self.events.items() for event in events
                if event.get("event") == "started" and isinstance(event.get("pid"), int)}
        request_stacks(pids)
        self.stacks = {rank: innermost_frame(self.channel / f"rank_{rank:02d}.stack") for rank in pids}

    def _end(self, process: subprocess.Popen[bytes]) -> None:
        """Kill torchrun's group, then every rank's own group (torchrun starts each in a session of its own)."""
        end_group(process)
        self._poll()
        for events in self.events.values():
            for event in events:
                if event.get("event") == "started" and isinstance(event.get("pid"), int):
                    try:
                        os.killpg(event["pid"], signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass

    def _result(self, ending: str, returncode: int, cause: BaseException | None) -> RunResult:
        label = self.config.label
        if ending == "interrupted":
            return self._failed(interrupted_error(cause, self._last_step()), failed_rank=None)
        if ending == "timeout":
            return self._timed_out()
        done = [rank for rank, events in self.events.items() if any(e.get("event") == "done" for e in events)]
        if returncode == 0 and len(done) == len(self.events):
            write_ranks_file(self.run_folder, {"format": RANKS_FORMAT, "nproc": self.config.nproc, "label": label,
                                               "complete": True})
            return RunResult(label, self.run_folder, True)
        reported = [(rank, event) for rank, events in self.events.items() for event in events
                    if event.get("event") == "error"]
        if reported:
            rank, event = min(reported, key=lambda item: (_is_consequence(item[1]), int(item[1].get("step", 0)),
                                                          item[0]))
            error = {key: value for key, value in event.items() if key != "event"}
            error["message"] = f"rank {rank}: {error.get('message', 'unknown error')}"
            return self._failed({**error, "rank": rank}, failed_rank=rank)
        tail = _last_line(self.run_folder / "launcher.log")
        return self._failed({"kind": "crash", "type": "ProcessDied", "step": self._last_step() + 1,
                             "traceback": "", "message": f"torchrun exited with code {returncode}: {tail}"},
                            failed_rank=None)

    def _timed_out(self) -> RunResult:
        """One line that names the rank that hung and where: the rank whose stack ends in the user's code,
        not in a torch collective waiting for it; else the rank that got least far."""
        frames = self.stacks
        users = [rank for rank, frame in frames.items() if frame and not in_library(frame)]
        hung = users[0] if users else min(self.events, key=self._position)
        step = self._step_of(hung) + 1
        at = f" at {frames[hung]}" if frames.get(hung) else ""
        others = "; ".join(f"rank {rank} {self._where(rank)}" + (" (waits in torch)" if frames.get(rank) and
                                                                 in_library(str(frames[rank])) else "")
                           for rank in self.events if rank != hung)
        return self._failed({"kind": "timeout", "type": "Timeout", "step": step, "traceback": "", "rank": hung,
                             "message": f"no end after {self.config.timeout:g} s (config 'timeout'); rank {hung} hung "
                                        f"{self._where(hung)}{at}; {others}"}, failed_rank=hung)

    def _failed(self, error: dict[str, Any], *, failed_rank: int | None) -> RunResult:
        self._keep_partials(error, failed_rank=failed_rank)
        write_ranks_file(self.run_folder, {"format": RANKS_FORMAT, "nproc": self.config.nproc,
                                           "label": self.config.label, "complete": False, "error": error})
        return RunResult(self.config.label, self.run_folder, False, error)

    def _keep_partials(self, error: dict[str, Any], *, failed_rank: int | None) -> None:
        """Every rank that did not finish keeps what it recorded; the others were stopped by the failure."""
        for rank in self.events:
            own = error if failed_rank in (None, rank) else {
                "kind": "early_exit", "type": "Stopped", "step": self._step_of(rank) + 1, "traceback": "",
                "message": f"stopped by torchrun because rank {failed_rank} ended: {error.get('message', '')}"}
            try:
                finalize_partial(rank_folder(self.run_folder, rank), error=own)
            except UserError:
                pass  # that rank's folder cannot be finalised (disk): the other ranks still are

    def _position(self, rank: int) -> tuple[int, int]:
        """How far a rank got: its last finished step, then the phase of the next one it entered."""
        step = self._step_of(rank)
        phases = [e.get("phase") for e in self.events[rank] if e.get("event") == "phase" and e.get("step") == step + 1]
        return step, max((PHASES.index(p) + 1 for p in phases if p in PHASES), default=0)

    def _where(self, rank: int) -> str:
        step, phase = self._position(rank)
        return f"in step {step + 1}, {PHASES[phase - 1]}" if phase else f"after step {step}"

    def _step_of(self, rank: int) -> int:
        return max((int(e.get("step", 0)) for e in self.events[rank] if e.get("event") == "step"), default=0)

    def _last_step(self) -> int:
        return min(self._step_of(rank) for rank in self.events)


def _is_consequence(error: dict[str, Any]) -> bool:
    """A rank's error that only says another rank went away (its collective lost a peer): named after the
    error of the rank that went first."""
    message = str(error.get("message", ""))
    return error.get("type") == "DistBackendError" or any(sign in message for sign in CONSEQUENCE_SIGNS)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
