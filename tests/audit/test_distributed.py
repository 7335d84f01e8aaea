"""Runs of 2 ranks under torchrun (gloo on CPU): per-rank traces, cross-rank checks, rank-by-rank comparison.

Each torchrun start costs seconds, so each fixture config is recorded once per module and shared.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import Future
from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.diff.compare_ranked import compare_ranked_runs
from repro_audit.audit.diff.compare_ranks import compare_ranks
from repro_audit.audit.divergence import Divergence
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.explain.distributed import world_size_change
from repro_audit.audit.runner import record
from repro_audit.audit.trace.ranks import open_ranks
from repro_audit.reports.json_report import render_json
from repro_audit.reports.text import render_text
from tests.helpers import in_background, one_line, run_cli, run_cli_process, will_run

DDP = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "ddp"


def _ranked(tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str) -> list:
    """Record fixtures/configs/torch/ddp/NAME.yaml with 2 ranks; the traces of its ranks."""
    run = tmp_path_factory.mktemp(name) / "run.trace"
    result = record(load_config(DDP / f"{name}.yaml", overrides=overrides, nproc=2), run)
    assert result.ok, result.failure_line()
    return open_ranks(run)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict, Path]:
    keep = tmp_path_factory.mktemp("check")
    report = keep.parent / "check.json"
    code, out, err = run_cli("check", str(DDP / "deterministic.yaml"), "--nproc", "2", "--keep", str(keep),
                             "--json", str(report), "-q")
    assert err == "" or "warning" in err, err
    return code, out, json.loads(report.read_text()), keep


def test_check_nproc_2_of_a_deterministic_ddp_config_is_identical(checked) -> None:
    code, _, document, keep = checked
    assert code == 0
    assert not (keep / "zoom").exists()  # no rank drifted: no re-run to look for the op before a drift
    assert document["identical"] is True and document["world_sizes"] == [2, 2]
    assert [(entry["rank"], entry["run"]) for entry in document["rank_by_rank"]] == [(0, 2), (1, 2)]
    assert all(entry["comparison"]["divergences"] == [] for entry in document["rank_by_rank"])
    assert all(cross["divergences"] == [] for cross in document["cross_rank"])
    ranks = open_ranks(next(keep.glob("1-*")))
    assert [trace.environment["distributed"]["rank"] for trace in ranks] == [0, 1]
    facts = ranks[1].environment["distributed"]
    assert facts["world_size"] == 2 and facts["backend"] == "gloo" and facts["launcher"] == "torch.distributed.run"
    # DDP keeps the parameters equal, the sampler gives each rank its own shard
    assert ranks[0].steps[-1]["parameters"] == ranks[1].steps[-1]["parameters"]
    assert ranks[0].steps[0]["batch"]["hash"] != ranks[1].steps[0]["batch"]["hash"]


def test_show_of_a_run_of_ranks_checks_its_ranks(checked) -> None:
    run = next(checked[3].glob("1-*"))
    code, out, _ = run_cli("show", str(run))
    assert code == 0
    assert out.startswith(f"2 ranks in {run}: rank 0 3 steps, rank 1 3 steps")
    assert "IDENTICAL: deterministic run 1 rank 0 and deterministic run 1 rank 1 match bitwise" in out
    code, _, err = run_cli("compare", str(run), str(run / "rank_00"))
    assert code == 2 and "is a run of several ranks (launch/--nproc), not one trace" in one_line(err)


@pytest.mark.parametrize("command", [["health"], ["noise", "--seeds", "2"], ["ops"], ["bisect"]])
def test_commands_that_read_one_trace_refuse_a_run_of_ranks(command: list[str]) -> None:
    args = [command[0], str(DDP / "deterministic.yaml"), *(["--set-b", "seed=1"] if command[0] == "bisect" else []),
            *command[1:]]
    code, _, err = run_cli(*args)
    assert code == 2 and f"{command[0]} does not take runs of several ranks (launch/--nproc) yet" in one_line(err), err


def test_diff_seeds_refuses_a_run_of_ranks() -> None:
    code, _, err = run_cli("diff", str(DDP / "deterministic.yaml"), "--set-b", "seed=1", "--seeds", "2", "--nproc", "2")
    assert code == 2 and "--seeds runs single processes" in one_line(err), err


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict, str, Path]:
    """`check` of the config whose rank 1 nudges 0.weight before step 2's optimizer step, zoom on (the
    default): two runs of 2 ranks and one re-run of both ranks to step 2."""
    keep = tmp_path_factory.mktemp("perturbed")
    report, page = keep.parent / "perturbed.json", keep.parent / "perturbed.html"
    code, out, _ = run_cli("check", str(DDP / "perturbed_rank.yaml"), "--keep", str(keep), "--json", str(report),
                           "--html", str(page), "-q")
    return code, out, json.loads(report.read_text()), page.read_text(), keep


def _nudge_line() -> int:
    """The fixture's line that nudges the parameter on one rank."""
    source = (DDP / "ddp_recipes.py").read_text().splitlines()
    return next(number for number, line in enumerate(source, start=1) if ".add_(1e-3)" in line)


def test_the_op_before_a_drift_between_ranks_is_named(perturbed) -> None:
    code, out, document, page, keep = perturbed
    assert code == 1 and not document["identical"]
    at = f"ddp_recipes.py:{_nudge_line()}"
    for cross in document["cross_rank"]:  # both runs drift alike; one re-run serves them
        first = cross["divergences"][0]
        assert (first["step"], first["evidence"]["rank"], first["evidence"]["item"]) == (2, 1, "0.weight")
        found = first["evidence"]["op_before_drift"]
        assert {key: found[key] for key in ("op", "phase", "at", "function", "found")} == {
            "op": "aten::add_", "phase": "before_optimizer_step", "at": at, "function": "nudge",
            "found": "only on rank 1"}
        # rank 0 writes 0.weight once in step 2 (Adam's update), rank 1 twice (the nudge, then Adam's)
        assert (found["writes_rank_0"], found["writes_rank_1"]) == (1, 2)
        assert first["evidence"]["op_before_drift_stack"][0]["file"].endswith("ddp_recipes.py")
        assert (f"The op before the drift: aten::add_ in before_optimizer_step at {at}, only on rank 1"
                in first["explanation"])
    assert [path.name for path in (keep / "zoom").iterdir()] == ["drift-1"]
    writers = [json.loads((keep / "zoom" / "drift-1" / f"rank_0{rank}" / "writers.json").read_text())
               for rank in (0, 1)]
    assert [(w["op"], w["phase"]) for w in writers[0]["writes"]["parameters:0.weight"]] == [
        ("aten::addcdiv_", "optimizer step")]
    assert [(w["op"], w["phase"]) for w in writers[1]["writes"]["parameters:0.weight"]] == [
        ("aten::add_", "before_optimizer_step"), ("aten::addcdiv_", "optimizer step")]
    assert f"aten::add_ in before_optimizer_step at {at}, only on rank 1" in " ".join(out.split())
    row = page[page.index(">op_before_drift<"):]
    assert "aten::add_" in row[:400] and "only on rank 1" in row[:400]


def test_no_zoom_names_no_op(tmp_path: Path) -> None:
    code, out, err = run_cli("record", str(DDP / "perturbed_rank.yaml"), "-o", str(tmp_path / "run.trace"),
                             "--steps", "2", "--no-zoom")
    assert code == 0
    assert "0.weight on rank 1" in out and "after the all-reduce" in out
    assert "perturbed_rank: step 2/2" in err and "(zoom)" not in err  # the progress of no re-run
    assert "op before the drift" not in out and "op_before_drift" not in out


def test_a_failed_re_run_of_the_drift_is_one_note(perturbed, tmp_path: Path) -> None:
    from repro_audit.audit.ops.drift_zoom import zoom_into_drifts

    run = next(perturbed[4].glob("1-*"))
    comparison = compare_ranks(open_ranks(run), label="perturbed")
    crashing = load_config(DDP / "perturbed_rank.yaml", overrides=["params.crash={rank: 0, step: 1}"])
    assert zoom_into_drifts([comparison], [crashing], folder=tmp_path / "zoom", kept=False) == 1
    note = comparison.notes[-1]
    assert note.startswith("the op before the drift was not found: its re-run of step 2 ended early: ")
    assert "rank 0: synthetic failure on rank 0 at step 1" in note
    assert "\n" not in note and "Traceback" not in note and "partial trace kept" not in note
    assert "op_before_drift" not in comparison.first_divergence.evidence
    assert [len(trace.steps) for trace in open_ranks(run)] == [3, 3]  # the recorded run is untouched


def test_the_same_writers_with_other_bits_name_what_they_read() -> None:
    """Every rank ran the same writes, the second left other bits: the drift came from what it read."""
    from repro_audit.audit.explain.distributed import rank_desync
    from repro_audit.audit.ops.drift_zoom import op_before_drift

    def write(index: int, op: str, digest: str, phase: str) -> dict:
        return {"index": index, "op": op, "phase": phase, "hash": digest, "stack": []}

    reference = [write(0, "aten::mul_", "1", "before_optimizer_step"), write(1, "aten::addcdiv_", "2", "optimizer step")]
    own = [write(0, "aten::mul_", "1", "before_optimizer_step"), write(1, "aten::addcdiv_", "3", "optimizer step")]
    found = op_before_drift(reference, own, rank=2, optimizer="Adam")
    assert (found["op"], found["index"], found["found"], found["same_writers"], found["optimizer"]) == (
        "aten::addcdiv_", 1, "output differs", True, "Adam")
    divergence = Divergence(category="parameters", name="w on rank 2", kind="desync", step=4, evidence={
        "rank": 2, "item": "w", "what": "parameter", "drifted": ["w"], "of": 1, "gradients_agree": False,
        "op_before_drift": found})
    rank_desync(divergence)
    assert ("Every rank writes it with the same ops at this step (2 writes on rank 0, 2 writes on rank 2); the "
            "first whose output differs is aten::addcdiv_ in the optimizer step (Adam.step): the drift came from "
            "what that op read") in divergence.explanation
    assert op_before_drift(reference, reference, rank=1)["found"] == "nothing"
    missing = op_before_drift(reference, own[:1], rank=1)
    assert (missing["op"], missing["found"], missing["writes_rank_0"], missing["writes_rank_1"]) == (
        "aten::addcdiv_", "only on rank 0", 2, 1)


def test_a_rank_that_perturbs_its_parameters_once_is_named(perturbed) -> None:
    comparison = compare_ranks(open_ranks(next(perturbed[4].glob("1-*"))), label="perturbed")
    first = comparison.first_divergence
    assert first is not None
    assert (first.step, first.evidence["rank"], first.evidence["item"]) == (2, 1, "0.weight")
    assert first.category == "parameters" and first.kind == "desync" and first.cause == "rank_desync"
    # the all-reduced gradients agreed, so the drift came after the all-reduce, and it lasts
    assert first.evidence["gradients_agree"] is True and first.evidence["later_steps"] == [3]
    text = render_text(comparison)
    assert "0.weight on rank 1" in text and "after step 2" in text and "after the all-reduce" in text
    assert json.loads(render_json(comparison))["divergences"][0]["cause"] == "rank_desync"


def test_every_rank_training_on_the_same_data_is_named(tmp_path_factory) -> None:
    comparison = compare_ranks(_ranked(tmp_path_factory, "same_data_every_rank"), label="same")
    first = comparison.first_divergence
    assert first is not None and first.cause == "shard_overlap"
    assert first.step == 1 and first.evidence["ranks"] == [0, 1]
    assert [d.step for d in comparison.divergences if d.cause == "shard_overlap"] == [1, 2, 3]
    assert any("same random stream" in note for note in comparison.notes)


def test_a_sampler_without_set_epoch_is_named(tmp_path_factory) -> None:
    comparison = compare_ranks(_ranked(tmp_path_factory, "no_set_epoch"), label="no_set_epoch")
    found = [(d.step, d.evidence["rank"], d.evidence["repeats_step"]) for d in comparison.divergences]
    assert found == [(3, 0, 1), (3, 1, 1)]
    assert all(d.cause == "epoch_repeat" for d in comparison.divergences)
    assert "set_epoch" in render_text(comparison)


def test_a_failed_rank_keeps_the_other_ranks_traces(tmp_path: Path) -> None:
    config = load_config(DDP / "deterministic.yaml", overrides=["params.crash={rank: 1, step: 2}"])
    result = record(config, tmp_path / "run.trace")
    assert not result.ok and result.error is not None and result.error["rank"] == 1
    assert "rank 1: synthetic failure on rank 1 at step 2" in result.failure_line()
    ranks = open_ranks(tmp_path / "run.trace")
    assert [(trace.complete, len(trace.steps)) for trace in ranks] == [(False, 1), (False, 1)]


@pytest.fixture(scope="module", autouse=True)
def hung_rank(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Future[tuple[int, str, str]] | None:
    """A run whose rank 1 hangs at step 2, started in its own process before the module's first test: it
    waits out its timeout while the other tests run. The timeout is long enough for the start of torchrun
    and step 1 beside the other tests' runs."""
    if not will_run(request, "test_a_hung_rank_times_out_with_one_line_naming_it"):
        return None
    trace = tmp_path_factory.mktemp("hung") / "run.trace"
    return in_background(run_cli_process, "record", str(DDP / "deterministic.yaml"), "-o", str(trace),
                         "--set", "params.hang={rank: 1, step: 2}", "--set", "timeout=45", "-q")


def test_a_hung_rank_times_out_with_one_line_naming_it(
        hung_rank: Future[tuple[int, str, str]] | None) -> None:
    assert hung_rank is not None
    code, _, err = hung_rank.result()
    line = one_line(err)
    assert code == 2
    assert "timed out at step 2" in line and "rank 1 hung in step 2" in line and "ddp_recipes.py" in line
    assert "rank 0 in step 2" in line and "waits in torch" in line


@pytest.fixture(scope="module")
def world_sizes(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict, str, Path]:
    """2 ranks of 4 examples against 1 rank of 8: the same global batch, values of step 1 kept."""
    keep = tmp_path_factory.mktemp("world_sizes")
    report, page = keep.parent / "world_sizes.json", keep.parent / "world_sizes.html"
    code, out, _ = run_cli("diff", str(DDP / "deterministic.yaml"), "--set-b", "launch.nproc=1",
                           "--set-b", "params.global_batch=8", "--values", "first", "--keep", str(keep),
                           "--json", str(report), "--html", str(page), "-q")
    return code, out, json.loads(report.read_text()), page.read_text(), keep


def test_a_world_size_change_with_the_same_global_batch_is_reduction_reordering(world_sizes) -> None:
    code, out, document, _, _ = world_sizes
    assert code == 1 and document["world_sizes"] == [2, 1]
    change = document["world_size"]
    assert change["cause"] == "reduction_reordering"
    # the same 8 examples at each of the 3 steps, split over 2 ranks or not, from the same start ...
    assert change["data"] == {"union": "same", "steps": 3, "examples": [8, 8]} and change["initialisation_same"]
    # ... and step 1's all-reduced gradients differ by rounding only, measured element by element
    gradients = change["gradients"]
    assert gradients["exact"] and gradients["compared"] == 4 and not gradients["identical"]
    assert 0 < gradients["max_ulp"] <= 64 and gradients["max_rel"] < 1e-5
    assert change["loss"]["max_rel"] < 1e-6
    assert "World size:" in out and "the first value that differs is the all-reduced gradient" in out
    assert "rank 0, run 2 against run 1: first divergence" in out and "(step, rank) order" in out


def test_a_world_size_change_without_values_is_not_called_rounding(checked, world_sizes) -> None:
    """The same data and start, but one run kept no values: the summaries only bound the gradients below."""
    two_ranks = open_ranks(next(checked[3].glob("1-*")))
    one_rank = next(run for run in world_sizes[4].iterdir() if len(open_ranks(run)) == 1)
    result = compare_ranked_runs([two_ranks, open_ranks(one_rank)], labels=["two", "one"])
    assert result.world_size is not None and result.world_size["cause"] == "world_size"
    assert result.world_size["data"]["union"] == "same" and result.world_size["gradients"]["exact"] is False
    assert "store values (--values first)" in result.world_size["explanation"]


def test_the_html_report_of_ranked_runs_has_a_row_per_rank(world_sizes) -> None:
    page = world_sizes[3]
    table = page[page.index('id="ranks-table"'):page.index("</table>", page.index('id="ranks-table"'))]
    rows = [(kind, scope.strip()) for kind, scope in
            re.findall(r"<tr class=\"(r-same|r-changed)\">\s*<td class=\"name\">([^<]*)", table)]
    assert rows == [("r-same", "run 1 across its ranks"), ("r-same", "run 2 across its ranks"),
                    ("r-changed", "rank 0, run 2 against run 1")]
    assert "rank 0, run 2 against run 1 <b>shown</b>" in table and "config change" in table
    assert 'id="world-size"' in page and "reduction reordering" in page


def test_a_world_size_change_that_changes_the_data_says_so() -> None:
    evidence = {"sizes": [2, 4], "initialisation_same": True, "loss": None,
                "data": {"union": "differs", "step": 1, "steps": 3, "only_a": 8, "only_b": 24, "examples": [8, 24]},
                "gradients": {"compared": 0}}
    cause, sentence = world_size_change(evidence)
    assert cause == "world_size_data"
    assert sentence == ("world size 2 against 4: ranks 0-1 are compared rank by rank. The union of the ranks' "
                        "examples differs at step 1 (8 examples only in A, 24 only in B; 8 against 24 in all): the "
                        "runs train on other data (another global batch or sharding), not only in another reduction "
                        "order")


def test_fsdp_records_its_sharded_parameters_whole_and_matches_ddp(checked, tmp_path_factory) -> None:
    """FSDP2 (fully_shard) on CPU with gloo: each rank holds half of each parameter, the trace the gathered
    whole, so the run compares with the DDP run of the same config, step by step and bitwise."""
    fsdp = _ranked(tmp_path_factory, "fsdp")
    assert compare_ranks(fsdp, label="fsdp").identical
    assert fsdp[0].steps[0]["parameters"]["0.weight"]["shape"] == [8, 4]
    ddp = open_ranks(next(checked[3].glob("1-*")))
    for rank in (0, 1):
        comparison = compare_traces(ddp[rank], fsdp[rank], ignore=("environment", "code", "config"))
        for category in ("data", "loss_terms", "gradients", "optimizer", "parameters"):
            counts = comparison.category_counts[category]
            assert counts["compared"] > 0 and counts["diverged"] == 0, (rank, category, counts)
        # FSDP's all-gather and reduce-scatter are other ops than DDP's all-reduce: only the op graph differs
        assert {d.category for d in comparison.divergences} == {"graph"}


@pytest.mark.parametrize(("launch", "message"), [
    ("{nproc: 0}", "launch.nproc must be an integer from 1 to 64, got 0"),
    ("{ranks: 2}", "unknown launch option 'ranks' (known: nproc, wrap)"),
    ("{nproc: 2, wrap: zero}", "launch.wrap must be one of ddp, fsdp, got 'zero'"),
    ("{}", None),
    ("2", "'launch' must be a mapping like {nproc: 2}, got int"),
])
def test_launch_is_validated(tmp_path: Path, launch: str, message: str | None) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"recipe: ddp_recipes:build\nlaunch: {launch}\n")
    if message is None:
        assert load_config(path).nproc == 0
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_launch_needs_torch(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("recipe: m:build\nframework: tensorflow\nlaunch: {nproc: 2}\n")
    code, _, err = run_cli("record", str(path), "-o", str(tmp_path / "t"))
    assert code == 2 and "launch (torchrun) is for framework torch" in one_line(err)
