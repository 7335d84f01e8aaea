"""`--verify` proves the verdict's mechanisms by intervention: real runs of the fixtures, torch and TF.

Each intervened run is a real worker subprocess of run B's config; the table is read from the JSON report
and the text report of one `diff --verify` per framework, shared by the tests of this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.trace import Trace
from tests.helpers import one_line, run_cli

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "configs"


def _verified(folder: Path, framework: str) -> tuple[int, str, dict[str, Any]]:
    report = folder / "result.json"
    code, out, err = run_cli("diff", str(FIXTURES / framework / "baseline.yaml"),
                             str(FIXTURES / framework / "zero_entropy_loss.yaml"), "--steps", "2", "--verify", "-q",
                             "--keep", str(folder / "runs"), "--json", str(report), "--html", str(folder / "r.html"))
    assert code == 1, out + err
    return code, out, json.loads(report.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def torch_verified(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    return _verified(tmp_path_factory.mktemp("verify_torch"), "torch")


@pytest.fixture(scope="module")
def tf_verified(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    pytest.importorskip("tensorflow")
    return _verified(tmp_path_factory.mktemp("verify_tf"), "tf")


def _rows(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [row for row in result["verification"]["rows"] if row["kind"] == kind]


def _equal(row: dict[str, Any]) -> bool:
    return bool(row["effect"] and row["effect"]["equal_on_shared"])


def test_torch_headline_names_the_mechanisms_the_table_then_proves(torch_verified: Any) -> None:
    _, out, result = torch_verified
    causes = [m["cause"] for m in result["mechanisms"]]
    assert causes[:3] == ["nan_zero_weight_term", "random_stream_shift", "seed_offset_shift"]
    assert causes[-1] == "graph_change"  # it changes no shared number: last
    assert " ".join(out.split("\n\n", 1)[0].split()) == (  # the headline, wrapped to 100 columns
        "DIVERGED: baseline vs zero_entropy_loss: the config (3 keys) -> NaN through a zero-weighted loss term; "
        "random stream shift; seed-offset shift of shared parameters; changed graph")
    assert "Verified by intervention" in out
    assert "What remains after every intervention together: nothing; every shared number matches run A." in out


def test_torch_three_mechanisms_each_alone_leaves_b_apart_all_together_make_it_equal(torch_verified: Any) -> None:
    _, _, result = torch_verified
    baseline, singles, together = _rows(result, "none"), _rows(result, "single"), _rows(result, "all")
    assert len(baseline) == 1 and not _equal(baseline[0])
    assert {row["causes"][0] for row in singles} == {"nan_zero_weight_term", "random_stream_shift",
                                                     "seed_offset_shift"}
    assert not any(_equal(row) for row in singles)
    assert len(together) == 1 and _equal(together[0])
    assert together[0]["effect"]["parameter_distance"] == 0.0 and together[0]["effect"]["loss_difference"] == 0.0
    # Dropping the NaN terms alone gets finite but shifted numbers: closer, measurably.
    dropped = next(row for row in singles if row["causes"] == ["nan_zero_weight_term"])
    assert 0.0 < dropped["effect"]["parameter_distance"] < float("inf")
    assert "was NaN" in dropped["summary"]
    assert result["verification"]["remains"] is None


def test_torch_every_intervention_is_needed_and_the_graph_change_is_confirmed_harmless(torch_verified: Any) -> None:
    _, _, result = torch_verified
    all_but = _rows(result, "all_but")
    assert len(all_but) == 3 and not any(_equal(row) for row in all_but)
    graph = _rows(result, "graph")
    assert len(graph) == 1 and _equal(graph[0]) and graph[0]["summary"].startswith("confirmed without numeric effect")
    assert result["verification"]["untested"] == []


def test_intervened_traces_say_what_was_done_to_them(torch_verified: Any) -> None:
    _, _, result = torch_verified
    together = _rows(result, "all")[0]
    interventions = Trace(together["trace_path"]).config["interventions"]
    assert interventions["drop_terms"] == ["att_entropy_l0", "att_entropy_l1"]
    assert interventions["initial_values"] is True and interventions["rng_after_build"] is True
    assert Path(interventions["reference_trace"]).name.endswith("baseline.trace")


def test_tf_two_mechanisms_only_both_interventions_together_restore_equality(tf_verified: Any) -> None:
    _, _, result = tf_verified
    assert [m["cause"] for m in result["mechanisms"]] == ["nan_zero_weight_term", "seed_offset_shift",
                                                          "graph_change"]
    singles = _rows(result, "single")
    assert [row["causes"] for row in singles] == [["nan_zero_weight_term"], ["seed_offset_shift"]]
    assert not any(_equal(row) for row in singles)
    assert _equal(_rows(result, "all")[0])
    assert _rows(result, "all_but") == []  # with two, "all but one" is the other one alone
    assert _equal(_rows(result, "graph")[0])


def test_verify_refuses_a_config_the_trace_was_not_recorded_from(torch_verified: Any) -> None:
    _, _, result = torch_verified
    trace_a, trace_b = result["run_a"]["trace_path"], result["run_b"]["trace_path"]
    code, _, err = run_cli("verify", trace_a, trace_b, "--config-a", str(FIXTURES / "torch" / "baseline.yaml"),
                           "--config-b", str(FIXTURES / "torch" / "baseline.yaml"))
    assert code == 2
    assert one_line(err).startswith("repro-audit: error: trace B (") and "its 'params' differs" in err


def test_verify_needs_every_value_kept() -> None:
    code, _, err = run_cli("diff", str(FIXTURES / "torch" / "baseline.yaml"), "--set-b", "seed=1", "--verify",
                           "--values", "first")
    assert code == 2 and "--verify keeps every value (--values all)" in err


def test_an_unknown_intervention_in_a_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("recipe: nmt_recipe:build\ninterventions:\n  drop_everything: true\n", encoding="utf-8")
    code, _, err = run_cli("record", str(config), "-o", str(tmp_path / "x.trace"))
    assert code == 2 and "unknown intervention 'drop_everything'" in one_line(err)


def test_the_html_report_leads_with_the_mechanisms_and_their_proof(torch_verified: Any) -> None:
    _, _, result = torch_verified
    html = (Path(result["verification"]["rows"][0]["trace_path"]).parent.parent / "r.html").read_text(encoding="utf-8")
    verdict = html.split('id="verdict"', 1)[1].split("</section>", 1)[0]
    assert verdict.index('id="why"') < verdict.index('id="verification"') < verdict.index("What you changed")
    table = verdict.split('id="verification"', 1)[1]
    assert table.count("<tr class=") == len(result["verification"]["rows"])
    assert re.search(r'<tr class="same"><td class="causes">(<a href="#mechanism-\d">\d</a> ?)+</td>'
                     r'<td class="intervention">all of them together</td>', table), table
    assert "What remains after every intervention together: nothing; every shared number matches run A." in table


@pytest.mark.parametrize(("ulp", "nan_b", "said"), [
    (3, 0, "differs by 3 ULP (largest |A - B| 1e-07), all values finite: floating-point reordering of the same computation, not a cause"),
    (2_000_000, 0, "still differs (the output differs.): a cause no intervention here explains"),
    (3, 5, "still differs (the output differs.): a cause no intervention here explains"),
])
def test_what_remains_is_reordering_only_within_a_few_ulp_of_finite_values(ulp: int, nan_b: int, said: str) -> None:
    from repro_audit.audit.divergence import Divergence
    from repro_audit.audit.verify.effect import Effect
    from repro_audit.audit.verify.result import Row, Verification

    remaining = Divergence("module_outputs", "decoder#0", "changed", step=2, explanation="the output differs.",
                           evidence={"max_ulp": ulp, "max_abs_error": 1e-7, "nan_a": 0, "nan_b": nan_b})
    effect = Effect(equal=False, first=remaining, parameter_distance=1e-6, loss_difference=0.0, last_step=2)
    verification = Verification(rows=[Row("all of them together", "all", ["seed_offset_shift"], effect)])
    assert verification.remains == f"module_outputs decoder#0 at step 2 {said}"
