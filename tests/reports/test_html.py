"""The HTML report: escaping, self-containment, determinism, every section with and without data.

Inputs are built here by hand, the way the differ and the probes will produce them: a Comparison tree
with evidence, and two small traces written through TraceWriter with records as docs/trace-format.md
describes them. Browser checks are in test_html_browser.py.
"""

from __future__ import annotations

import difflib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from repro_audit.audit.diff.context import CompareContext
from repro_audit.audit.diff.distance import step_distances
from repro_audit.audit.divergence import Comparison, Divergence, RunInfo
from repro_audit.audit.trace import Trace, TraceWriter
from repro_audit.reports.html import render_html, write_html

EVIL_PARAM = "<script>alert(1)</script>"
EVIL_VALUE = "<img src=x onerror=alert(3)>"
EVIL_ATTR = "decoder.q\" onmouseover=\"alert(2)"
ENTROPY = "decoder.layers.0.cross_attn.entropy"
CONFIG_EXPLANATION = "Run B adds the loss term att_entropy_l0 with weight 0.0."
SHIFT_EXPLANATION = ("decoder.out.weight was initialised 1024 random values later in run B (seed offset 183040 → "
                     "184064): the entropy module was created before it and drew from the generator.")
NAN_EXPLANATION = ("NaN entered the gradients at MulBackward0 in decoder.layers.0.cross_attn.entropy (loss term "
                   "att_entropy_l0, weight 0.0): the -inf of the attention mask times 0 gives NaN, and a zero "
                   "weight does not stop a NaN.")
NAN_STEP = 2


def parameter_names(count: int | None) -> list[str]:
    """A small encoder-decoder's parameters (with hostile names), or `count` generated ones."""
    if count is None:
        return ["encoder.embed.weight", "encoder.layers.0.attn.q.weight", "encoder.layers.0.attn.k.weight",
                EVIL_PARAM, "decoder.layers.0.cross_attn.q.weight", EVIL_ATTR, "decoder.out.weight",
                "decoder.out.bias"]
    names = [f"encoder.layers.{i // 4}.ffn.w{i % 4}.weight" for i in range(count - 2)]
    return names + ["decoder.out.weight", "decoder.out.bias"]


def summary(rng: np.random.Generator, numel: int, *, nonfinite: bool = False) -> dict[str, Any]:
    scale = float(rng.uniform(0.01, 2.0))
    nan = numel if nonfinite else 0
    value = float("nan") if nonfinite else scale
    return {"shape": [numel], "dtype": "float32", "numel": numel, "hash": f"xxh3:{rng.integers(1 << 62):016x}",
            "norm": value, "min": -scale / 3 if not nonfinite else value, "max": scale / 3 if not nonfinite else value,
            "mean": scale / 1000 if not nonfinite else value, "max_abs": scale / 3 if not nonfinite else value,
            "nan": nan, "inf": 0, "zeros": 0}


def graph_ops(with_entropy: bool, extra: int = 0) -> list[dict[str, Any]]:
    ops: list[tuple[str, str, str, str | None]] = [
        ("aten::embedding", "forward", "encoder.embed", "shared"),
        ("aten::linear", "forward", "encoder.layers.0.attn.q", "shared"),
        ("aten::_softmax", "forward", "decoder.layers.0.cross_attn", "shared"),
        ("aten::masked_fill", "forward", "decoder.layers.0.cross_attn", None),
    ]
    ops += [("aten::linear", "forward", f"encoder.layers.{i}.ffn", "ce") for i in range(extra)]
    if with_entropy:
        ops += [("aten::_log_softmax", "forward", ENTROPY, "att_entropy_l0"),
                ("aten::mul", "forward", ENTROPY, "att_entropy_l0"),
                ("aten::sum", "forward", ENTROPY, "att_entropy_l0")]
    ops += [("aten::linear", "forward", "decoder.out", "ce"), ("aten::cross_entropy_loss", "forward", "", "ce"),
            ("LinearBackward0", "backward", "decoder.out", "ce")]
    if with_entropy:
        ops += [("MulBackward0", "backward", ENTROPY, "att_entropy_l0")]
    ops += [("EmbeddingBackward0", "backward", "encoder.embed", "shared"), ("aten::add_", "optimizer", "", None)]
    return [{"index": i, "op": op, "phase": phase, "module": module, "loss_term": term,
             "shapes": [[8, 32]], "inputs_from": [i - 1]} for i, (op, phase, module, term) in enumerate(ops)]


def write_trace(path: Path, *, label: str, names: list[str], steps: int, entropy: bool) -> Trace:
    """One recorded run as the probes would write it; with `entropy`, NaN from step NAN_STEP on."""
    weights = {"ce": 1.0, "att_entropy_l0": 0.0} if entropy else {"ce": 1.0}
    config = {"recipe": "model.py", "seed": 0, "steps": steps, "loss_weights": weights,
              "params": {"note": EVIL_VALUE if entropy else "plain"}}
    writer = TraceWriter(path, framework="torch", config=config, label=label)
    writer.write_json("environment.json", {"python": {"version": "3.11.7"}, "framework": {"name": "torch",
                                                                                          "version": "2.3.0"}})
    modules: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        modules.setdefault(name.rsplit(".", 1)[0], []).append({"name": name, "shape": [32, 32], "dtype": "float32"})
    writer.write_json("structure.json", {"modules": [{"path": path_, "type": "Linear", "parameters": params,
                                                      "buffers": []} for path_, params in modules.items()],
                                         "graph_steps": [1]})
    rng = np.random.default_rng(0)
    order = list(names)
    if entropy:  # the entropy module is created before decoder.out: later tensors move and shift
        order.remove("decoder.out.bias")
        order.append("decoder.out.bias")
    tensors, offset = [], 0
    for index, name in enumerate(order):
        if entropy and name == "decoder.out.weight":
            offset += 1024
        tensors.append({"name": name, "kind": "parameter", "module": name.rsplit(".", 1)[0],
                        "creation_index": index, "shape": [32, 32], "dtype": "float32",
                        "initialiser": "aten::uniform_", "generator": "cpu", "seed_offset": offset,
                        "rng_fingerprint": f"xxh3:{offset:08x}", "summary": summary(rng, 1024)})
        offset += 1024
    writer.write_json("initialisation.json", {"generators": {"cpu": {"seed": 0}}, "tensors": tensors, "draws": []})
    writer.write_graph(1, {"step": 1, "digest": "xxh3:g", "ops": graph_ops(entropy, extra=len(names) // 10)})
    for step in range(1, steps + 1):
        broken = entropy and step >= NAN_STEP
        terms = {"ce": {"weight": 1.0, "value": 2.5 / step, "hash": f"xxh3:ce{step}"}}
        if entropy:
            terms["att_entropy_l0"] = {"weight": 0.0, "value": float("nan") if broken else 0.7, "hash": "xxh3:e"}
        outputs = ["encoder.embed", "decoder.layers.0.cross_attn", *([ENTROPY] if entropy else []), "decoder.out"]
        record: dict[str, Any] = {
            "step": step, "loss_terms": terms, "total_loss": float("nan") if broken else 2.5 / step,
            "module_outputs": [{"module": module, "call": 0, "summary": summary(rng, 256, nonfinite=broken)}
                               for module in outputs],
            "gradients": {name: summary(rng, 1024, nonfinite=broken) for name in names},
            "graph": {"digest": "xxh3:g", "ops": 10, "stored": step == 1},
            "nan_provenance": None, "term_attribution": None, "notes": [],
        }
        record["gradients"]["decoder.out.bias"] = None if step == 1 else record["gradients"]["decoder.out.bias"]
        if broken and step == NAN_STEP:
            record["nan_provenance"] = {"origins": [{
                "node": "MulBackward0", "forward_op": "aten::mul", "module": ENTROPY, "loss_term": "att_entropy_l0",
                "loss_weight": 0.0, "inputs_from": ["aten::_softmax", "aten::_log_softmax"],
                "saved_nonfinite": {"other": {"nan": 0, "posinf": 0, "neginf": 40}},
                "grad_in_nonfinite": 0, "grad_out": {"nan": 40, "inf": 0, "numel": 960}}],
                "nonfinite_parameters": list(names)}
            record["term_attribution"] = {
                "ce": {"weight": 1.0, "nonfinite": {}, "nonzero": {n: 1024 for n in names}, "norm": {}},
                "att_entropy_l0": {"weight": 0.0, "nonfinite": {n: 1024 for n in names[:3]},
                                   "nonzero": {n: 1024 for n in names[:3]}, "norm": {}}}
        writer.append_step(record)
    writer.finish(complete=True)
    return Trace(path)


def build_comparison(names: list[str], steps: int, *, label_a: str = "baseline",
                     label_b: str = "entropy") -> Comparison:
    """The tree the differ would build for the two traces above, with explanations filled in."""
    ops_a, ops_b = graph_ops(False, len(names) // 10), graph_ops(True, len(names) // 10)
    matcher = difflib.SequenceMatcher(a=[op["op"] for op in ops_a], b=[op["op"] for op in ops_b], autojunk=False)
    gradient_children = [Divergence("gradients", name, "nonfinite", step=NAN_STEP,
                                    evidence={"a": 0, "b": 1024, "nan_b": 1024}) for name in names]
    divergences = [
        Divergence("config", "loss_weights.att_entropy_l0", "added", explanation=CONFIG_EXPLANATION,
                   cause="config_change", evidence={"a": None, "b": 0.0},
                   children=[Divergence("config", "params.note", "changed", evidence={"a": "plain", "b": EVIL_VALUE},
                                        explanation=f"params.note is now {EVIL_VALUE}")]),
        Divergence("initialisation", "decoder.out.weight", "changed", cause="seed_offset_shift",
                   explanation=SHIFT_EXPLANATION,
                   evidence={"seed_offset": {"a": 183040, "b": 184064}},
                   children=[Divergence("initialisation", "decoder.out.bias", "moved",
                                        evidence={"creation_index": {"a": len(names) - 1, "b": len(names) - 1}}),
                             Divergence("parameters", "decoder.out.weight", "changed", step=1,
                                        evidence={"mismatched": 1024, "numel": 1024, "max_abs_error": 0.031})]),
        Divergence("graph", "step 1 op sequence", "changed", step=1, evidence={
            "graph_step": 1, "opcodes": [list(code) for code in matcher.get_opcodes()]},
            explanation=f"Run B runs {len(ops_b) - len(ops_a)} more ops, in {ENTROPY}."),
        Divergence("nan_provenance", ENTROPY, "nonfinite", step=NAN_STEP, cause="nan_zero_weight_term",
                   explanation=NAN_EXPLANATION, evidence={"loss_term": "att_entropy_l0", "loss_weight": 0.0},
                   children=gradient_children),
        Divergence("gradients", EVIL_PARAM, "changed", step=1, explanation=f"gradient of {EVIL_PARAM} differs",
                   evidence={"a": EVIL_PARAM, "b": EVIL_VALUE, "mismatched": 3, "numel": 1024}),
    ]
    return Comparison(
        run_a=RunInfo(label_a, f"{label_a}.trace", "torch", True, steps),
        run_b=RunInfo(label_b, f"{label_b}.trace", "torch", True, steps),
        divergences=divergences,
        category_counts={"config": {"compared": 12, "diverged": 2}, "gradients": {"compared": len(names) * steps,
                                                                                  "diverged": len(names) + 1}},
        notes=[f"note about {EVIL_PARAM}"],
    )


def build_case(tmp_path: Path, *, parameters: int | None = None, steps: int = 3) -> dict[str, Any]:
    names = parameter_names(parameters)
    trace_a = write_trace(tmp_path / "a.trace", label="baseline", names=names, steps=steps, entropy=False)
    trace_b = write_trace(tmp_path / "b.trace", label="entropy", names=names, steps=steps, entropy=True)
    comparison = build_comparison(names, steps)
    # What the differ measures: how far the runs are apart per step, per module output and per gradient.
    comparison.distances = step_distances(CompareContext(trace_a, trace_b), comparison.divergences)
    same = Comparison(run_a=comparison.run_a, run_b=RunInfo("rerun", "rerun.trace", "torch", True, steps))
    return {"names": names, "trace_a": trace_a, "trace_b": trace_b, "comparison": comparison,
            "check": [comparison, same]}


def render_case(case: dict[str, Any], **overrides: Any) -> str:
    arguments = {"trace_a": case["trace_a"], "trace_b": case["trace_b"], "check": case["check"], **overrides}
    return render_html(case["comparison"], **arguments)


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Any]:
    return build_case(tmp_path)


class Elements(HTMLParser):
    """Every start tag of a document, as the browser's tokenizer sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}"[^>]*>(.*?)</section>', html, re.DOTALL)
    assert match, f"section {section_id} missing"
    return match.group(1)


def test_user_names_are_escaped_everywhere(case: dict[str, Any]) -> None:
    html = render_case(case)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert EVIL_PARAM not in html and EVIL_VALUE not in html
    assert "&lt;img src=x onerror=alert(3)&gt;" in html
    elements = Elements()
    elements.feed(html)
    assert not [attrs for _, attrs in elements.found if any(name.startswith("on") for name, _ in attrs)], \
        "a name never becomes an event handler attribute"
    assert [tag for tag, _ in elements.found if tag in ("script", "img")] == ["script", "script"]
    assert "decoder.q&#34; onmouseover=&#34;alert(2)" in html
    # Only our two script elements: the JSON data (with </ escaped) and the pinned inline script.
    assert len(re.findall(r"<script\b", html)) == 2
    data = re.search(r'<script type="application/json" id="gradient-data">(.*?)</script>', html, re.DOTALL)
    assert data and "\\u003cscript\\u003e" in data.group(1) and "</" not in data.group(1)
    assert EVIL_PARAM in json.loads(data.group(1))["names"]


def test_nothing_is_fetched(case: dict[str, Any]) -> None:
    html = render_case(case)
    assert not re.search(r"<(link|iframe|object|embed)\b", html)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and not re.search(r"url\(\s*['\"]?(https?:|//)", html)
    assert "default-src 'none'" in html and "script-src 'sha256-" in html


def test_output_is_deterministic(tmp_path: Path) -> None:
    first = render_case(build_case(tmp_path / "one"))
    second = render_case(build_case(tmp_path / "two"))
    assert first == second
    assert not re.search(r"20\d\d-\d\d-\d\d", first), "no dates in the report"


def test_verdict_and_first_divergence_come_first(case: dict[str, Any]) -> None:
    html = render_case(case)
    verdict = section(html, "verdict")
    assert "Diverged" in verdict and CONFIG_EXPLANATION in verdict
    headline = re.search(r'<h2 class="headline">(.*?)</h2>', verdict, re.DOTALL)
    assert headline
    chain = re.sub(r"<[^>]+>", "", headline.group(1))
    assert " ".join(chain.split()) == ("Diverged the config (1 key) → NaN through a zero-weighted loss term; "
                                       "seed-offset shift of shared parameters")
    assert "What you changed" in verdict and verdict.index('id="why"') < verdict.index("What you changed")
    assert ("<title>DIVERGED: baseline vs entropy: the config (1 key) -&gt; NaN through a zero-weighted loss term; "
            "seed-offset shift of shared parameters - repro-audit</title>") in html
    assert "loss_<wbr>weights.<wbr>att_<wbr>entropy_<wbr>l0" in verdict, "a name wraps after its dots, not mid-word"
    assert "A: —" in verdict and "B: 0.0" in verdict
    assert NAN_EXPLANATION in verdict and SHIFT_EXPLANATION in verdict, "explained causes shown above the fold"
    assert "1 of 2 runs differ" in verdict
    assert html.index('id="verdict"') < html.index('id="timeline"') < html.index('id="check"')


def test_timeline_marks_first_divergence_and_folds_consequences(case: dict[str, Any]) -> None:
    timeline = section(render_case(case), "timeline")
    config_row = re.search(r"<tr><th>config</th>(.*?)</tr>", timeline, re.DOTALL)
    assert config_row and 'class="hit first"' in config_row.group(1) and "★" in config_row.group(1)
    gradients_row = re.search(r"<tr><th>gradients</th>(.*?)</tr>", timeline, re.DOTALL)
    assert gradients_row
    cells = re.findall(r"<td[^>]*>.*?</td>", gradients_row.group(1), re.DOTALL)
    assert cells[0] == '<td class="na"></td>', "gradients are compared per step, not per run"
    assert "<b>1</b>" in cells[1] and f'<span class="conseq">{len(case["names"])}</span>' in cells[NAN_STEP]
    # The NaN cause's consequences are folded under it, counted.
    assert re.search(rf'id="d3".*?<details class="consequences"><summary>{len(case["names"])} consequences',
                     timeline, re.DOTALL)


def test_environment_and_config_show_only_differences(case: dict[str, Any]) -> None:
    html = render_case(case)
    assert "Environment and code are the same" in section(html, "environment")
    config = section(html, "config")
    assert config.count('<tr data-name="') == 2 and "params.note" in config


def test_graph_side_by_side_highlights_added_ops(case: dict[str, Any]) -> None:
    graph = section(render_case(case), "graph")
    added = re.findall(r'<td class="added"><span class="op">([^<]+)</span>', graph)
    assert added == ["aten::_log_softmax", "aten::mul", "aten::sum", "MulBackward0"]
    assert f"forward · {ENTROPY} · loss term att_entropy_l0" in graph
    summary_row = re.search(rf'<td class="name">{re.escape(ENTROPY)}</td><td>att_entropy_l0</td>(.*?)</tr>', graph)
    assert summary_row and re.findall(r">(\d+)<", summary_row.group(1)) == ["0", "4", "0", "4"]


def test_initialisation_order_with_seed_offsets(case: dict[str, Any]) -> None:
    init = section(render_case(case), "initialisation")
    shifted = re.search(r'<tr data-name="decoder.out.weight decoder.out.weight">(.*?)</tr>', init, re.DOTALL)
    assert shifted and 'class="name shifted"' in shifted.group(1)
    assert ">6144<" in shifted.group(1) and ">7168<" in shifted.group(1), "both seed offsets shown"
    assert re.search(r'<td class="name moved"[^>]*>decoder.out.bias</td>', init)


def test_gradients_section(case: dict[str, Any]) -> None:
    gradients = section(render_case(case), "gradients")
    assert "<b>att_entropy_l0</b>" in gradients and "NaN 40, Inf 0 of 960" in gradients
    assert "other: neginf 40" in gradients
    assert re.search(r'<tr class="r-nonfinite"><td class="name">att_entropy_l0</td><td class="num">0.0</td>',
                     gradients)
    assert "<svg" in gradients and "first non-finite step per parameter" in gradients
    embedded = re.search(r'id="gradient-data">(.*?)</script>', render_case(case), re.DOTALL)
    assert embedded
    data = json.loads(embedded.group(1))
    assert data["default_step"] == 1 and data["marks"][str(NAN_STEP)]["0"] == "nonfinite"
    assert data["b"][str(NAN_STEP)]["norm"][0] == "NaN" and data["a"]["1"]["present"][-1] == 2


def test_charts_are_inline_svg_from_matplotlib(case: dict[str, Any]) -> None:
    charts = section(render_case(case), "charts")
    assert charts.count("<svg") == 2 and "<?xml" not in charts
    assert ">att_entropy_l0<" in charts and "non-finite from step 2" in charts


def test_check_section_lists_runs(case: dict[str, Any]) -> None:
    check = section(render_case(case), "check")
    assert re.search(r'<tr data-name="entropy" class="r-changed">', check)
    assert re.search(r'<tr data-name="rerun" class="r-same">', check)
    assert "config, graph, initialisation, nan_provenance, gradients, parameters" in check
    assert "A comparison of two runs" in section(render_case(case, check=None), "check")


def test_sections_without_data_say_so() -> None:
    run = RunInfo("a", "a.trace", "torch", True, 3)
    html = render_html(Comparison(run_a=run, run_b=RunInfo("b", "b.trace", "torch", True, 3)))
    assert "Identical" in section(html, "verdict") and "<title>IDENTICAL: a vs b - repro-audit</title>" in html
    for section_id, text in [("timeline", "Nothing diverged"), ("environment", "same in both runs"),
                             ("config", "configs are the same"), ("graph", "No graph divergence"),
                             ("initialisation", "No traces given"), ("gradients", "No traces given"),
                             ("charts", "No loss terms"), ("check", "not a check")]:
        assert text in section(html, section_id), section_id
    assert "<svg" not in html and 'id="gradient-data"' not in html


def test_long_trees_are_cut_and_say_so() -> None:
    run = RunInfo("a", "a.trace", "torch", True, 1)
    children = [Divergence("gradients", f"p{i}", "changed", step=1) for i in range(500)]
    comparison = Comparison(run_a=run, run_b=run, divergences=[Divergence("gradients", "root", "changed", step=1,
                                                                           children=children)])
    tree = section(render_html(comparison), "timeline")
    assert tree.count('<div class="node ') == 51 and "450 more consequences not shown" in tree


def test_write_html_is_atomic(case: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    written = write_html(target, case["comparison"], trace_a=case["trace_a"], trace_b=case["trace_b"])
    assert written == target and target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [path.name for path in target.parent.iterdir()] == ["report.html"]


@pytest.mark.slow
def test_thousand_parameters_stay_small(tmp_path: Path) -> None:
    html = render_case(build_case(tmp_path, parameters=1000, steps=20))
    size = len(html.encode("utf-8"))
    assert size < 5_000_000, f"report is {size} bytes"


def test_partial_comparison_says_which_steps_were_compared() -> None:
    run_a = RunInfo("a", "a.trace", "torch", True, 4)
    run_b = RunInfo("b", "b.trace", "torch", False, 2, error="RuntimeError: CUDA out of memory " + "x" * 500)
    comparison = Comparison(run_a=run_a, run_b=run_b, partial=True, divergences=[
        Divergence("health", "run b", "incomplete", step=3)])
    html = render_html(comparison)
    assert "Partial comparison" in section(html, "verdict") and "incomplete" in html
    assert "RuntimeError: CUDA out of memory" in html and "x" * 300 not in html, "a long error is cut"
    timeline = section(html, "timeline")
    assert '<th class="uncompared">3</th>' in timeline and "Steps after 2 were recorded by one run only" in timeline


def test_graph_without_alignment_highlights_named_ops(tmp_path: Path) -> None:
    case = build_case(tmp_path)
    graph = Divergence("graph", "step 1 op sequence", "changed", step=1, children=[
        Divergence("graph", "aten::_log_softmax", "added", step=1, evidence={"index_b": 4})])
    comparison = Comparison(run_a=case["comparison"].run_a, run_b=case["comparison"].run_b, divergences=[graph])
    html = section(render_html(comparison, trace_a=case["trace_a"], trace_b=case["trace_b"]), "graph")
    assert "ops are shown by position" in html
    assert re.findall(r'<td class="added"><span class="op">([^<]+)</span>', html) == ["aten::_log_softmax"]


def test_proof_by_intervention_sits_right_under_the_mechanisms(case: dict[str, Any]) -> None:
    from repro_audit.audit.verify.effect import Effect
    from repro_audit.audit.verify.plan import Untested
    from repro_audit.audit.verify.result import Row, Verification

    remaining = Divergence("gradients", EVIL_PARAM, "changed", step=1, evidence={"max_ulp": 3, "max_abs_error": 1e-7})
    case["comparison"].verification = Verification(rows=[
        Row("run B as recorded", "none", [], Effect(False, remaining, 0.5, 0.25, 3)),
        Row("all of them together", "all", ["seed_offset_shift"], Effect(True, None, 0.0, 0.0, 3))],
        untested=[Untested("random_stream_shift", "no generator to fork")])
    verdict = section(render_case(case), "verdict")
    assert verdict.index('id="why"') < verdict.index('id="verification"') < verdict.index("What you changed")
    table = verdict.split('id="verification"', 1)[1]
    assert table.count("<tr class=") == 2 and '<tr class="differs recorded"><td class="causes">–</td>' in table
    # The row names the mechanisms it neutralises by their numbers in the list above (seed-offset shift: 2).
    assert ('<tr class="same"><td class="causes"><a href="#mechanism-2">2</a></td><td class="intervention">all of them '
            'together</td><td class="effect"><span class="mark">✓</span> run B matches run A') in table
    assert "What remains after every intervention together: nothing; every shared number matches run A." in table
    assert "Not tested: random stream shift: no generator to fork" in table
    case["comparison"].verification = None
    assert 'id="verification"' not in render_case(case), "no place taken without --verify"


def test_ignored_categories_say_ignored(case: dict[str, Any]) -> None:
    case["comparison"].ignored = ["data", "health"]
    html = render_case(case)
    timeline = section(html, "timeline")
    assert re.search(r'<tr class="ignored"><th>data</th><td class="ignored" colspan="\d+">ignored', timeline)
    assert "<b>health</b> ignored (not compared)" in timeline
    assert "not compared (ignored): data, health" in section(html, "verdict")


def test_divergence_over_steps_and_gradient_flow_have_hover_values(case: dict[str, Any]) -> None:
    html = render_case(case)
    chart = html.split('id="divergence-over-steps"', 1)[1].split('<p class="hint">', 1)[0]
    assert chart.count("<svg") == 1 and "max |A − B|" in chart and "relative" in chart
    titles = re.findall(r"<title>([^<]*)</title>", chart)
    assert any(title.startswith("gradients · step 1: max |A − B| ≥ ") for title in titles)
    assert any(title.startswith(f"gradients · step {NAN_STEP}: distance not known") for title in titles), "NaN steps"
    assert ">NaN<" in chart, "the NaN steps are labelled"
    flow = re.findall(r"<title>([^<]*)</title>", section(html, "charts"))
    assert any(title.startswith("&lt;script&gt;alert(1)&lt;/script&gt; · step 1: max |A − B| ≥") for title in flow)
    sizes = {float(size) for svg in re.findall(r"<svg.*?</svg>", html, re.DOTALL)
             for size in re.findall(r"font-size: ([\d.]+)px", svg)}
    assert sizes and min(sizes) >= 9.5, f"chart fonts of at least 9.5 pt (12.7 px unscaled): {sorted(sizes)}"


def test_module_outputs_in_forward_order_with_the_first_differing_one(case: dict[str, Any]) -> None:
    modules = section(render_case(case), "modules")
    names = re.findall(r'<tr data-name="([^"]*)"', modules)
    assert names == ["encoder.embed", "decoder.layers.0.cross_attn", ENTROPY, "decoder.out"]
    # Run B draws one more summary for the entropy output, so decoder.out is the first to differ at step 1.
    first = re.search(r'<tr data-name="decoder.out" class="first"[^>]*>(.*?)</tr>', modules, re.DOTALL)
    assert first and "★" in first.group(1) and "≥ " in first.group(1) and "rel ≥" in first.group(1)
    assert re.search(r'<tr data-name="encoder.embed" class="">.*?<td class="dist same ">=</td>', modules, re.DOTALL)
    assert re.search(rf'<tr data-name="{re.escape(ENTROPY)}"[^>]*>.*?badge k-added', modules, re.DOTALL)
    assert modules.count(">NaN<") == 2 * 3, "steps 2 and 3 of the three outputs both runs have"


def test_evidence_is_a_key_value_table_not_json(case: dict[str, Any]) -> None:
    html = render_case(case)
    timeline = section(html, "timeline")
    assert '<tr><th>seed_offset</th><td class="val a">A: 183040</td><td class="val b">B: 184064</td></tr>' in timeline
    shown = re.sub(r"<script.*?</script>", "", html, flags=re.DOTALL)  # the gradient table's data is JSON
    assert '{"a"' not in shown and "&#34;a&#34;" not in shown, "no JSON dump of evidence"
    assert "<th>run A</th>" in section(html, "config"), "value columns where the evidence has both runs' values"
    case["comparison"].divergences[1].evidence = {"seed_offset": {"a": 1, "b": 2}}
    assert "<th>run A</th>" not in section(render_case(case), "initialisation"), "no empty run A/run B columns"


def test_identical_runs_fold_their_module_table_and_draw_no_identical_points(case: dict[str, Any]) -> None:
    trace = case["trace_a"]
    comparison = Comparison(run_a=case["comparison"].run_a, run_b=case["comparison"].run_a)
    comparison.distances = step_distances(CompareContext(trace, trace), [])
    html = render_html(comparison, trace_a=trace, trace_b=trace)
    assert '<section id="modules"><details class="fold">' in html, "nothing differs: the table stays folded"
    charts = section(html, "charts")
    assert "Every gradient is identical in both runs" in charts and 'id="flow-' not in charts
    assert '<section id="modules"><details class="fold" open>' in render_case(case), "open when outputs differ"
