"""Real architectures: deterministic models compare identical over ten runs, a zero-weighted extra term is
diagnosed by the mechanism that really changes the numbers, and a real difference is found and named.

The recordings are shared through the session fixtures of conftest.py.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.diff import compare_traces
from repro_audit.audit.trace import Trace
from repro_audit.reports.text import render_text

from .verdicts import cause_named, causes

CHECK_RUNS = 10  # as tests/real_models/conftest.py records them


def no_odd_names(text: str) -> None:
    """Sentences name modules as people do: never `None`, never an empty name."""
    assert "module None" not in text and "in None" not in text and "module  " not in text
    assert "module ''" not in text and "in ''" not in text


@pytest.mark.parametrize("recipe", ["resnet", "encoder", "tied_lm", "bert"])
def test_ten_runs_of_a_deterministic_model_are_identical(checked: Callable[..., Any], recipe: str) -> None:
    completed, traces = checked(recipe)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    assert f"IDENTICAL: {CHECK_RUNS} runs" in completed.stdout
    assert len(traces) == CHECK_RUNS
    first = Trace(traces[0])
    assert len(first.steps) == 2
    assert first.steps[-1]["random_draws"] or recipe in ("resnet", "tied_lm"), "dropout draws are recorded"
    if recipe == "bert":  # buffers registered in a loop, filled by copying a temporary: one order every run
        orders = {tuple(t["creation_index"] for t in Trace(path).initialisation["tensors"]) for path in traces}
        assert len(orders) == 1


def test_attach_loop_with_accumulation_and_clipping_is_identical_over_ten_runs(attach_traces: Any) -> None:
    traces = [Trace(path) for path in attach_traces(times=CHECK_RUNS)]
    for other in traces[1:]:
        comparison = compare_traces(traces[0], other)
        assert comparison.identical, render_text(comparison)
    record = traces[0].steps[0]
    assert record["micro_batches"] == 2 and len(record["loss_terms"]["ce"]["micro_values"]) == 2
    phases = [phase for phase, _ in itertools.groupby(op["phase"] for op in traces[0].graph(1)["ops"])]
    # The second micro-batch's forward ops are forward ops, not optimizer ops.
    assert phases == ["forward", "backward", "forward", "backward", "optimizer"]


def test_attach_to_a_model_built_beforehand_compares_without_creation_order(attach_traces: Any) -> None:
    a, b = (Trace(path) for path in attach_traces("--given-model", times=2))
    assert all(t["creation_index"] is None for t in a.initialisation["tensors"])
    comparison = compare_traces(a, b)
    assert comparison.identical, render_text(comparison)


# -- a zero-weighted extra term, diagnosed by its mechanism --------------------------------------------

def test_resnet_auxiliary_head_shifts_the_seed_offsets_of_the_final_layer(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("resnet"), variant_traces["resnet_aux"])
    shift = cause_named(comparison, "seed_offset_shift")
    assert shift.name == "fc.weight"
    assert "aux_head (170 values, only in run B)" in shift.explanation
    text = render_text(comparison)
    no_odd_names(text)
    # The root module returns (logits, None) in A and (logits, aux) in B: the logits are still matched.
    outputs = [d for d in comparison.walk() if d.category == "module_outputs" and d.name.startswith("[")]
    assert not [d for d in outputs if d.name.startswith("[0]") and d.kind in ("added", "removed")]
    assert [d for d in outputs if d.name.startswith("[1]") and d.kind == "added"]
    # The head's optimizer state exists in B only: added, not "changed".
    state = [d for d in comparison.walk() if d.category == "optimizer" and "aux_head" in d.name]
    assert state and all(d.kind == "added" for d in state)


def test_resnet_modules_created_in_another_order_name_who_drew_first(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("resnet"), variant_traces["resnet_fc_first"])
    shift = cause_named(comparison, "seed_offset_shift")
    # fc is created first in B: in A, the convolutions created before it drew first.
    assert "modules created earlier" not in shift.explanation
    assert shift.name == "fc.weight" and "before it in run A" in shift.explanation
    assert re.search(r"by layer2\.conv2 \(2304 values, drawn after it in run B\)", shift.explanation), shift.explanation


def test_encoder_probe_branch_dropout_moves_the_shared_dropout_masks(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("encoder"), variant_traces["encoder_probe"])
    first = comparison.first_divergence
    assert first is not None and first.cause != "nondeterminism"
    # Two stream shifts: the probe's Linear drew at build (every training draw starts 33 values later), and its
    # Dropout draws in training (the shared draws after it move further).
    shifts = [d for d in comparison.causes if d.cause == "random_stream_shift"]
    assert len(shifts) == 2, [d.explanation for d in shifts]
    build = next(d for d in shifts if "build_draws" in d.evidence)
    assert build.explanation.startswith("Building the model drew 33 more random values") and "probe.1" in \
        build.explanation
    stream = next(d for d in shifts if d is not build)
    assert "probe" in stream.explanation and "in run B only" in stream.explanation
    assert "layers.1" in stream.explanation, "the first shared draw it moves is named"
    no_odd_names(render_text(comparison))


def test_masked_attention_entropy_sends_nan_through_its_zero_weight(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("tied_lm"), variant_traces["tied_lm_entropy"])
    nan = cause_named(comparison, "nan_zero_weight_term")
    assert "attention_entropy" in nan.explanation and "0 x -inf" in nan.explanation
    no_odd_names(render_text(comparison))


def test_gpt2_value_head_built_after_the_model_moves_every_dropout_mask(baseline: Any, variant_traces: Any) -> None:
    pytest.importorskip("transformers")
    comparison = compare_traces(baseline("gpt2"), variant_traces["gpt2_value_head"])
    stream = cause_named(comparison, "random_stream_shift")
    assert "Building the model drew 33 more random values" in stream.explanation
    assert "value_head" in stream.explanation
    assert not [d for d in causes(comparison) if d.cause == "seed_offset_shift"], "no shared parameter moved"


def test_attach_zero_weighted_term_is_a_graph_change_not_nondeterminism(attach_traces: Any) -> None:
    plain = Trace(attach_traces(times=CHECK_RUNS)[0])
    (extra,) = (Trace(path) for path in attach_traces("--aux"))
    comparison = compare_traces(plain, extra)
    assert not [d for d in causes(comparison) if d.cause == "nondeterminism"]
    assert cause_named(comparison, "graph_change")


# -- a real difference, found and named ---------------------------------------------------------------

def test_batch_norm_momentum_shows_in_the_buffers_alone(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("resnet"), variant_traces["resnet_momentum"], ignore=["config"])
    assert not comparison.identical
    value_categories = {d.category for d in comparison.walk() if d.category in ("gradients", "parameters")}
    assert not value_categories, "batch statistics are used in training mode: only the running ones differ"
    buffers = [d for d in comparison.walk() if d.category == "buffers"]
    assert {d.name for d in buffers if d.step == 1} >= {"stem.1.running_mean", "stem.1.running_var"}
    assert not [d for d in buffers if "num_batches_tracked" in d.name]


def test_gpt2_clip_norm_is_a_hyperparameter_change(baseline: Any, variant_traces: Any) -> None:
    pytest.importorskip("transformers")
    comparison = compare_traces(baseline("gpt2"), variant_traces["gpt2_clip"], ignore=["config"])
    change = cause_named(comparison, "hyperparameter_change")
    assert "clip_grad_norm" in change.explanation and change.step == 1
    assert not [d for d in causes(comparison) if d.cause == "nondeterminism"]


def test_attach_clip_norm_is_a_changed_update_not_nondeterminism(attach_traces: Any) -> None:
    plain = Trace(attach_traces(times=CHECK_RUNS)[0])
    (clipped,) = (Trace(path) for path in attach_traces("--clip", "0.5"))
    comparison = compare_traces(plain, clipped)
    change = cause_named(comparison, "hyperparameter_change")
    assert change.step == 1 and "gradient clipping or loss scaling" in change.explanation
    assert not [d for d in causes(comparison) if d.cause == "nondeterminism"]


def test_other_data_is_named_in_the_batch(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("encoder"), variant_traces["encoder_data"])
    names = {d.name for d in comparison.walk() if d.category == "data" and d.step == 1}
    assert {"batch.tokens", "batch.labels"} <= names


def test_untying_the_embeddings_is_named(baseline: Any, variant_traces: Any) -> None:
    comparison = compare_traces(baseline("tied_lm"), variant_traces["tied_lm_untied"], ignore=["config"])
    tied = [d for d in comparison.walk() if "tied" in d.evidence]
    assert tied and tied[0].name == "unembed.weight"
    assert "tied to embed.weight" in tied[0].explanation and "a tensor of its own in run B" in tied[0].explanation


def test_scheduler_settings_are_not_causes(variant_traces: Any) -> None:
    comparison = compare_traces(variant_traces["resnet_onecycle_a"], variant_traces["resnet_onecycle_b"],
                                ignore=["config"])
    change = cause_named(comparison, "hyperparameter_change")
    assert change.evidence["hyperparameter"] == "lr"
    settings = [d for d in comparison.walk() if "scheduler_setting" in d.evidence]
    assert {d.evidence["scheduler_setting"] for d in settings} >= {"max_lr"}
    assert all(d.cause is None for d in settings)


def test_no_traceback_from_any_real_trace(baseline: Any, variant_traces: Any, tmp_path: Path) -> None:
    """show, compare and the reports on every trace the probes wrote for these models."""
    import subprocess
    import sys

    traces = list(variant_traces.values())
    for trace in traces:
        shown = subprocess.run([sys.executable, "-m", "repro_audit.audit.cli_main", "show", str(trace.path)],
                               capture_output=True, text=True)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-2000:]
    pairs = [(traces[i], traces[j]) for i in range(len(traces)) for j in range(len(traces)) if i != j][:12]
    for a, b in pairs:
        render_text(compare_traces(a, b))
