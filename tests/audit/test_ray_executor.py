"""The Ray executor through a local Ray instance: runs go to Ray tasks, traces come back as files, a lost
worker's run is retried once, the noise test gives the same verdict as the local pool with the same thread
count, and bisect over code (A and B in different folders) names the changed module."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.executors import RunJob, make_executor
from repro_audit.audit.executors.base import thread_env
from repro_audit.audit.noise import noise_result, record_noise
from repro_audit.audit.noise.series import DISTANCE_FROM_INIT
from repro_audit.audit.trace import Trace

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'repro-audit[ray]'): the Ray executor "
                                        "is not tested")

BASELINE = Path(__file__).parent.parent.parent / "fixtures" / "configs" / "torch" / "baseline.yaml"


@pytest.fixture(scope="module")
def ray_pool():
    pool = make_executor("ray", workers=2)  # a private local instance, shut down after the module
    yield pool
    pool.close()
    assert not ray.is_initialized()


def test_ray_runs_come_back_as_traces_and_a_lost_worker_is_retried(ray_pool, tmp_path: Path) -> None:
    recipes = Path(__file__).parent.parent / "recipes"
    for name in ("tiny_mlp.py", "misbehaving.py"):
        shutil.copy(recipes / name, tmp_path / name)
    (tmp_path / "once.yaml").write_text(f"recipe: misbehaving:build_dying_once\nsteps: 1\n"
                                        f"params: {{marker: {tmp_path / 'marker'}}}\n")
    done: list[int] = []
    (result,) = ray_pool.run([RunJob(load_config(tmp_path / "once.yaml"), tmp_path / "out" / "once.trace")],
                             on_done=lambda count, total, _: done.append(count))
    assert result.ok and result.attempts == 2 and "SIGKILL" in result.first_error["message"]
    assert Trace(tmp_path / "out" / "once.trace").complete and done == [1]


def test_noise_through_ray_puts_learning_rate_x10_outside(ray_pool, tmp_path: Path) -> None:
    configs = [load_config(BASELINE), load_config(BASELINE, overrides=["params.lr=0.01", "label=lr x10"])]
    traces, results = record_noise(configs, seeds=2, vary="all", steps=1, folder=tmp_path, executor=ray_pool)
    assert all(result.ok for result in results) and all(trace.complete for side in traces for trace in side)
    result = noise_result(configs, traces, vary="all")
    assert result.outside_metrics == [DISTANCE_FROM_INIT]
    # The caller decides the thread count, not the Ray worker (Ray sets OMP_NUM_THREADS=1 in its workers, and
    # the local pool gives the same): the same sums whichever executor ran it.
    expected = int(thread_env()["OMP_NUM_THREADS"])
    assert {trace.environment["threads"]["intra_op"] for side in traces for trace in side} == {expected}



def test_bisect_over_code_through_ray(ray_pool) -> None:
    """code_change/a and /b differ only in helper_ops.py; B also gets a harmless timeout. The mixed copy of
    a/ with B's helper_ops.py sits beside a/ while the Ray tasks run, and is gone after."""
    from repro_audit.audit.bisect import Bisection

    folders = BASELINE.parent / "cases" / "code_change"
    a = load_config(folders / "a" / "code_change.yaml", steps=1)
    b = load_config(folders / "b" / "code_change.yaml", steps=1, overrides=["timeout=300"])
    with tempfile.TemporaryDirectory() as scratch:
        result = Bisection(a, b, folder=Path(scratch), executor=ray_pool).run()
    assert [(change.kind, change.name) for change in result.changes] == [("config", "timeout"),
                                                                        ("code", "helper_ops.py")]
    assert [change.name for change in result.minimal] == ["helper_ops.py"]
    assert result.target is not None and result.target.step == 1
    assert not list(folders.glob(".repro-audit-bisect-*"))
