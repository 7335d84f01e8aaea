"""Executors: the local process pool retries a failed or lost run once, then reports it; Ray does the same
through a local Ray instance (skipped, with the reason, where Ray is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.executors import LocalPool, RunJob, make_executor
from repro_audit.audit.executors.base import thread_env
from repro_audit.audit.runner import raise_for_failures
from repro_audit.audit.trace import Trace


@pytest.fixture(scope="module")
def pool_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list, Path]:
    """One pool run of three jobs: a worker killed once (then fine), a run that always dies, and a config
    error (a recipe that cannot vary its data order), which is never retried."""
    import shutil

    folder = tmp_path_factory.mktemp("pool")
    recipes = Path(__file__).parent.parent / "recipes"
    for name in ("tiny_mlp.py", "misbehaving.py"):
        shutil.copy(recipes / name, folder / name)
    (folder / "once.yaml").write_text(f"recipe: misbehaving:build_dying_once\nsteps: 1\n"
                                      f"params: {{marker: {folder / 'marker'}}}\n")
    (folder / "always.yaml").write_text("recipe: misbehaving:build_exiting\nsteps: 2\nparams: {at: 1, code: 7}\n")
    (folder / "no_hook.yaml").write_text("recipe: tiny_mlp:build\nsteps: 1\ndata_order_seed: 3\n")
    jobs = [RunJob(load_config(folder / f"{name}.yaml"), folder / f"{name}.trace")
            for name in ("once", "always", "no_hook")]
    done: list[tuple[int, int, str]] = []
    results = LocalPool(workers=2).run(jobs, on_done=lambda count, total, result: done.append(
        (count, total, result.label)))
    return results, done, folder


def test_a_lost_worker_is_retried_once_and_its_trace_comes_back(pool_results) -> None:
    results, _, folder = pool_results
    once = results[0]
    assert once.ok and once.attempts == 2
    assert once.first_error["kind"] == "crash" and "SIGKILL" in once.first_error["message"]
    trace = Trace(folder / "once.trace")
    assert trace.complete and len(trace.steps) == 1
    # Many runs share the cores: one intra-op thread each unless OMP_NUM_THREADS says otherwise.
    assert trace.environment["threads"]["intra_op"] == int(thread_env()["OMP_NUM_THREADS"])


def test_a_run_that_fails_twice_is_reported_with_both_attempts(pool_results) -> None:
    results, _, _ = pool_results
    always = results[1]
    assert not always.ok and always.attempts == 2 and always.first_error is not None
    with pytest.raises(RunFailed, match=r"exited with code 7.* \(retried once; the first attempt ended: crash\)"):
        raise_for_failures([always])


def test_a_config_error_is_not_retried(pool_results) -> None:
    results, _, _ = pool_results
    no_hook = results[2]
    assert not no_hook.ok and no_hook.attempts == 1 and no_hook.error["kind"] == "user_error"
    assert "does not take data_order_seed" in no_hook.error["message"]


def test_progress_counts_runs_done_out_of_all(pool_results) -> None:
    _, done, _ = pool_results
    assert sorted(count for count, _, _ in done) == [1, 2, 3]
    assert {total for _, total, _ in done} == {3}


def test_unknown_executor_is_a_user_error() -> None:
    from repro_audit.audit.errors import UserError

    with pytest.raises(UserError, match="unknown executor 'slurm'"):
        make_executor("slurm")
