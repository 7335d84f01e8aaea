"""Seed-noise bands on the fixture Transformer: a band from K seeds of `baseline`, another baseline seed
inside it, a learning rate x10 outside it; the per-step test on numbers made up to the case; the reports.

The three configs' nine runs are recorded once, through the local process pool, and shared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.executors import LocalPool
from repro_audit.audit.noise import noise_result, record_noise, seeded_configs
from repro_audit.audit.noise.series import DISTANCE_FROM_INIT, GRADIENT_NORM, PARAMETER_DISTANCE, TOTAL_LOSS
from repro_audit.audit.noise.stats import curve_test

BASELINE = Path(__file__).parent.parent.parent / "fixtures" / "configs" / "torch" / "baseline.yaml"
SEEDS, STEPS = 3, 3


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    configs = {"a": load_config(BASELINE),
               "other_seed": load_config(BASELINE, overrides=["seed=100", "label=baseline seed 100"]),
               "lr_x10": load_config(BASELINE, overrides=["params.lr=0.01", "label=lr x10"])}
    traces, results = record_noise(list(configs.values()), seeds=SEEDS, vary="all", steps=STEPS,
                                   folder=tmp_path_factory.mktemp("noise"), executor=LocalPool())
    return {"configs": configs, "traces": dict(zip(configs, traces)), "results": results}


def compared(recorded: dict, side: str):
    configs, traces = recorded["configs"], recorded["traces"]
    return noise_result([configs["a"], configs[side]], [traces["a"], traces[side]], vary="all")


def test_baseline_gives_a_band_of_every_metric(recorded: dict) -> None:
    result = noise_result([recorded["configs"]["a"]], [recorded["traces"]["a"]], vary="all")
    metrics = [band.metric for band in result.a.bands]
    assert metrics == [TOTAL_LOSS, "loss_terms.ce", GRADIENT_NORM, DISTANCE_FROM_INIT, PARAMETER_DISTANCE]
    loss = result.a.band(TOTAL_LOSS)
    assert loss.steps == [1, 2, 3] and loss.runs == [SEEDS] * STEPS
    assert all(low <= median <= high for low, median, high in zip(loss.low, loss.median, loss.high))
    assert loss.high[0] - loss.low[0] > 1e-3  # other seeds, other initial weights: a real spread
    # The distance from A's seed-0 run leaves that run out: K - 1 runs.
    assert result.a.band(PARAMETER_DISTANCE).runs == [SEEDS - 1] * STEPS
    assert [run["seed"] for run in result.a.runs] == [0, 1, 2]
    assert [run["data_order_seed"] for run in result.a.runs] == [0, 1, 2]
    assert result.verdict().startswith(f"loss of baseline over {SEEDS} seeds (vary all) at step {STEPS}: median")


def test_another_baseline_seed_lies_within_the_band(recorded: dict) -> None:
    result = compared(recorded, "other_seed")
    assert not result.outside, result.headline()
    assert result.verdict(TOTAL_LOSS).startswith("B's loss is within A's seed-to-seed spread at every step")
    loss = result.curve(TOTAL_LOSS)
    assert all(test.p_adjusted is not None and test.p_adjusted >= 0.05 for test in loss.steps)


def test_learning_rate_x10_lies_outside_the_band(recorded: dict) -> None:
    result = compared(recorded, "lr_x10")
    assert result.outside
    assert DISTANCE_FROM_INIT in result.outside_metrics
    moved = result.curve(DISTANCE_FROM_INIT)
    assert moved.first_outside == 1 and moved.outside_steps == [1, 2, 3]
    first = moved.steps[0]
    assert first.p_adjusted < 0.05 and first.effect_size > 10  # Adam moves every weight about 10x farther
    assert result.verdict(DISTANCE_FROM_INIT).startswith(
        "B's parameter distance from its initial values is outside A's seed-to-seed spread from step 1: adjusted p")
    # The words name the quantity that is outside, and say that the loss is not (yet) among them.
    headline = result.headline()
    assert headline.startswith("B's parameter distance from its initial values (from step 1)")
    assert "lie outside A's seed-to-seed spread" in headline or "lies outside A's seed-to-seed spread" in headline
    if TOTAL_LOSS not in result.outside_metrics:
        assert "; not the loss: B's loss is within A's seed-to-seed spread at every step" in headline


def test_json_text_and_html_present_the_same_result(recorded: dict) -> None:
    from repro_audit.reports.html.noise_page import render_noise_html
    from repro_audit.reports.text_noise import render_noise_text

    result = compared(recorded, "lr_x10")
    from repro_audit.reports.json_report import render_document

    document = json.loads(render_document(result.to_dict()))
    assert document["kind"] == "noise" and document["outside"] is True
    assert document["headline"] == result.headline()
    assert document["b"]["label"] == "lr x10" and document["a"]["seeds"] == SEEDS
    text = render_noise_text(result)
    assert text.startswith("OUTSIDE: B's parameter distance from its initial values") and "adj. p" in text
    from markupsafe import escape

    html = render_noise_html(result)
    assert html.count("<svg") == 1 and "lr x10" in html and str(escape(result.headline())) in html
    assert "outside A" in html[html.index("<svg"):html.index("</svg>")]  # B's outside steps marked in the chart
    assert render_noise_html(result) == html  # deterministic


def test_per_step_test_on_made_up_curves() -> None:
    a = {1: [1.0, 1.1, 0.9, 1.05], 2: [1.0, 1.1, 0.9, 1.05], 3: [1.0, 1.1, 0.9, 1.05]}
    same = curve_test("m", a, {step: list(values) for step, values in a.items()})
    assert same.first_outside is None and all(test.p_value == 1.0 for test in same.steps)
    apart = curve_test("m", a, {1: [1.0, 1.05, 0.95, 1.02], 2: [3.0, 3.1, 2.9, 3.05], 3: [5.0, 5.1, 4.9, 5.0]})
    assert apart.first_outside == 2 and apart.outside_steps == [2, 3]
    assert apart.steps[1].effect_size > 10 and apart.steps[0].effect_size < 1
    flat = curve_test("m", {1: [2.0, 2.0]}, {1: [2.5, 2.5]})  # no spread on either side, yet different
    assert flat.outside_steps == [1] and math.isinf(flat.steps[0].effect_size)


def test_seeded_configs_vary_what_is_asked() -> None:
    base = load_config(BASELINE)
    init = seeded_configs(base, seeds=3, vary="init")
    assert [c.seed for c in init] == [0, 1, 2] and {c.data_order_seed for c in init} == {None}
    data = seeded_configs(base, seeds=3, vary="data")
    assert {c.seed for c in data} == {0} and [c.data_order_seed for c in data] == [0, 1, 2]
    assert all(c.capture["values"] == "all" and not c.capture["graph"] for c in data)
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        seeded_configs(base, seeds=1, vary="all")


def test_the_fixture_recipe_orders_its_data_by_data_order_seed() -> None:
    import sys

    import torch

    sys.path.insert(0, str(BASELINE.parent))
    try:
        import nmt_recipe
    finally:
        sys.path.remove(str(BASELINE.parent))

    def first_batch(**kwargs):
        torch.manual_seed(0)
        return next(iter(nmt_recipe.build({}, **kwargs).batches))["src"]

    default, one, again, two = first_batch(), first_batch(data_order_seed=1), first_batch(data_order_seed=1), \
        first_batch(data_order_seed=2)
    assert torch.equal(one, again) and not torch.equal(one, two) and not torch.equal(default, one)
