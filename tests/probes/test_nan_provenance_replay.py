"""NaN provenance on a later step: the runner replays the outbreak step instead of keeping every graph.

The fixture Transformer (with dropout, so the replay must rewind the random generators) trains on cross
entropy alone until step 3, where a zero-weighted entropy of -inf-masked attention joins and the
gradients turn NaN. The replayed step must name the same term, op and module as step 1 does for
`zero_entropy_loss`, and must leave no trace: a recording with provenance off is identical in every hash.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repro_audit.audit.config import load_config
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace
from repro_audit.probes.torch.step_replay import RandomState, replay_forward

TORCH = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch"
LATE_ENTROPY = ["params.extra_losses_from_step=3"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    folder = tmp_path_factory.mktemp("replay-traces")
    jobs = [(load_config(TORCH / "zero_entropy_loss.yaml", overrides=LATE_ENTROPY + extra), folder / f"{name}.trace")
            for name, extra in (("armed", []), ("off", ["capture.nan_provenance=false"]))]
    results = record_all(jobs)
    assert all(result.ok for result in results), [result.failure_line() for result in results if not result.ok]
    return {"armed": Trace(jobs[0][1]), "off": Trace(jobs[1][1])}


def test_replayed_outbreak_step_names_term_op_and_module(traces: dict[str, Trace]) -> None:
    steps = traces["armed"].steps
    assert [step["nan_provenance"] is not None for step in steps] == [False, False, True, False]
    provenance = steps[2]["nan_provenance"]
    assert provenance["replayed"] is True and provenance["replay_matches"] is True
    assert provenance["nonfinite_parameters"]
    origin = provenance["origins"][0]
    assert origin["loss_term"] == "att_entropy_l0" and origin["loss_weight"] == 0.0
    assert origin["node"] == "MulBackward0" and origin["forward_op"] == "aten::mul"
    assert sorted(origin["inputs_from"]) == ["aten::log_softmax", "aten::softmax"]
    assert origin["module"] == "decoder.layers.0.att_loss"
    assert origin["saved_nonfinite"]["other"]["neginf"] > 0
    attribution = steps[2]["term_attribution"]
    assert attribution["att_entropy_l0"]["params_nonfinite"] > 0 and attribution["ce"]["params_nonfinite"] == 0
    assert not [note for step in steps for note in step["notes"] if "replayed" in note]


def test_replay_leaves_training_and_ledger_untouched(traces: dict[str, Trace]) -> None:
    def fingerprint(trace: Trace) -> list[object]:
        rows: list[object] = []
        for step in trace.steps:
            rows.append({k: v["hash"] for k, v in step["parameters"].items()})
            rows.append({k: v and v["hash"] for k, v in step["gradients"].items()})
            rows.append([(o["module"], o["call"], o["summary"]["hash"]) for o in step["module_outputs"]])
            rows.append([(d["op"], d["module"], d["count"], d["offset_before"], d["rng_fingerprint"])
                         for d in step["random_draws"]])
            rows.append(step["optimizer"]["state"])
        return rows

    armed, off = fingerprint(traces["armed"]), fingerprint(traces["off"])
    assert len(armed) == len(off) == 5 * len(traces["armed"].steps)
    assert armed == off
    assert traces["off"].steps[2]["nan_provenance"] is None


def test_replay_rewinds_generators_and_puts_buffers_back() -> None:
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(3)
    start = RandomState()
    first = torch.rand(4)  # the step itself: four values drawn
    norm(torch.randn(8, 3))
    after_step, running_mean = torch.get_rng_state(), norm.running_mean.clone()

    def forward() -> torch.Tensor:
        drawn = torch.rand(4)
        norm(torch.randn(8, 3) + 5.0)  # moves the running statistics
        torch.rand(100)  # draws more than the step did
        return drawn

    assert torch.equal(replay_forward(forward, step_start=start, model=norm), first)
    assert torch.equal(torch.get_rng_state(), after_step)
    assert torch.equal(norm.running_mean, running_mean)
