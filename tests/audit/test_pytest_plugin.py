"""The pytest plugin through `pytester`: real inner pytest sessions that record real fixture runs.

Every inner run spawns recording subprocesses, so the forms are grouped into few inner sessions: one under
pytest-xdist with the report option (every form, passing and failing; messages of at most 12 lines, printed
once, whose cause is in the short summary), one plain session rerun with `--lf -v` (cache plugin, no stray
files, a longer message still bounded), one TensorFlow session with every form. The message's wording is
in test_pytest_plugin_message.py, the settings in test_pytest_plugin_settings.py, golden traces in
test_pytest_plugin_golden.py.
"""

from __future__ import annotations

import functools
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from repro_audit.audit.assertions import Auditor, ignored_categories, recipe_spec
from repro_audit.audit.divergence import CATEGORIES
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.pytest_plugin import report_name

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
TORCH = ROOT / "fixtures" / "configs" / "torch"
TF = ROOT / "fixtures" / "configs" / "tf"
MAX_MESSAGE_LINES = 12

# A helper module inside the inner session's folder: the recipes the inner tests pass as callables.
RECIPES = '''
import torch

from repro_audit import Recipe


def _batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator))
            for _ in range(4)]


def _mlp(activation):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), activation, torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss(model, batch):
        x, y = batch
        return {"ce": torch.nn.functional.cross_entropy(model(x), y)}

    return Recipe(model=model, optimizer=optimizer, batches=_batches(), loss=loss)


def build(params):
    return _mlp(torch.nn.Tanh())


def build_refactored(params):
    return _mlp(torch.nn.Tanh())


def build_relu(params):
    return _mlp(torch.nn.ReLU())
'''

FORMS = '''
import pytest

import pp_recipes
from repro_audit.audit.config import load_config

TORCH = {torch!r}


def test_deterministic_passes(repro_audit):
    repro_audit.assert_deterministic(TORCH + "/baseline.yaml", steps=2)


def test_deterministic_fails(repro_audit):
    repro_audit.assert_deterministic(TORCH + "/cases/unseeded_shuffle.yaml", steps=2)


def test_identical_passes_when_only_timeout_differs(repro_audit):
    repro_audit.assert_identical(TORCH + "/baseline.yaml", overrides_b=["timeout=300"], steps=2,
                                 ignore=["config"])


def test_identical_fails_on_nan(repro_audit):
    repro_audit.assert_identical(TORCH + "/baseline.yaml", TORCH + "/zero_entropy_loss.yaml", steps=2)


def test_identical_fails_on_seed(repro_audit):
    repro_audit.assert_identical(TORCH + "/baseline.yaml", overrides_b=["seed=2"], steps=2)


def test_recipes_identical_passes(repro_audit):
    repro_audit.assert_recipes_identical(pp_recipes.build, pp_recipes.build_refactored, steps=2)


def test_recipes_identical_fails(repro_audit):
    repro_audit.assert_recipes_identical(pp_recipes.build, "pp_recipes:build_relu", steps=2)


def test_recipe_lambda_is_refused(repro_audit):
    repro_audit.assert_recipes_identical(lambda params: None, pp_recipes.build, steps=2)


def test_crashing_run_is_an_error(repro_audit):
    repro_audit.assert_deterministic(TORCH + "/cases/crash.yaml", steps=2)


@pytest.mark.repro_deterministic(config=TORCH + "/baseline.yaml", steps=2)
def test_marker_config_passes():
    pass


@pytest.mark.repro_deterministic(steps=2)
def test_marker_returned_config_fails():
    return load_config(TORCH + "/cases/unseeded_shuffle.yaml")


@pytest.mark.repro_deterministic(steps=2)
def test_marker_without_config():
    pass
'''

LAST_FAILED = '''
import pp_recipes


def test_plain():
    pass


def test_recipes_differ(repro_audit):
    repro_audit.assert_recipes_identical(pp_recipes.build, pp_recipes.build_relu, steps=2)
'''

# The TensorFlow session: each form passing and failing on the TF fixtures and on Keras recipe callables.
TF_RECIPES = '''
import itertools

import keras
import numpy as np
import tensorflow as tf

from repro_audit import Recipe

BATCH = (np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(8, 4), np.arange(8, dtype=np.int64) % 3)


def _mlp(activation):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation=activation), keras.layers.Dense(3)])

    def loss(model, batch):
        x, y = batch
        logits = model(x)
        return {"ce": tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))}

    return Recipe(model=model, optimizer=keras.optimizers.SGD(0.1), batches=itertools.repeat(BATCH), loss=loss,
                  extras={"mode": "function"})


def build(params):
    return _mlp("tanh")


def build_refactored(params):
    return _mlp("tanh")


def build_relu(params):
    return _mlp("relu")
'''

TF_FORMS = '''
import pytest

import tf_recipes

TF = {tf!r}


@pytest.mark.repro_deterministic(config=TF + "/baseline.yaml", steps=2)
def test_marker_tf_baseline_passes():
    pass


def test_identical_fails_on_nan(repro_audit):
    repro_audit.assert_identical(TF + "/baseline.yaml", TF + "/zero_entropy_loss.yaml", steps=1)


def test_recipes_identical_passes(repro_audit):
    repro_audit.assert_recipes_identical(tf_recipes.build, tf_recipes.build_refactored, steps=2)


def test_recipes_identical_fails(repro_audit):
    repro_audit.assert_recipes_identical(tf_recipes.build, "tf_recipes:build_relu", steps=2)
'''


def plugin_args() -> list[str]:
    """Load the plugin by name until the `pytest11` entry point is installed (twice would be an error)."""
    installed = any(ep.value == "repro_audit.audit.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "repro_audit.audit.pytest_plugin"]


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
          tmp_path_factory: pytest.TempPathFactory) -> pytest.Pytester:
    """An inner session folder with the helper recipes; runs use one intra-op thread each."""
    # Two runs at a time per session, two sessions under xdist: more threads only spin on two cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "400")  # the short summary line shows its whole first line
    # pytester points HOME at the session folder; keep per-user caches out of it: matplotlib's (HTML
    # charts) and repro-audit's, which the session's REPRO_AUDIT_CACHE_DIR (tests/conftest.py) keeps.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mpl")))
    pytester.makepyfile(pp_recipes=RECIPES)
    return pytester


def failure_sections(output: str) -> dict[str, str]:
    """The failure text of each test, keyed by test name, from a session's output."""
    parts = re.split(r"^_{3,} (test_\w+) _{3,}$", output, flags=re.M)
    # The last failure runs on into the session's closing sections ("--- repro-audit HTML reports ---", "===
    # short test summary info ==="): they are not part of it.
    return {name: re.split(r"^[-=]{3,} ", text, maxsplit=1, flags=re.M)[0]
            for name, text in zip(parts[1::2], parts[2::2])}


def error_lines(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("E ")]


def message_lines(section: str) -> list[str]:
    """The failure message in a test's section: pytest's `E` lines for an assertion in the test body, the
    section's lines for the marker (no traceback there)."""
    lines = [line[1:] for line in error_lines(section)] or section.splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("[gw")]  # xdist's worker line


def assert_short_message(section: str) -> list[str]:
    """At most 12 lines, printed once: no chained exception, the verdict line not repeated."""
    lines = message_lines(section)
    assert len(lines) <= MAX_MESSAGE_LINES, section
    verdict = lines[0].split(": ", 1)[-1] if lines[0].startswith("audit.") else lines[0]
    assert "During handling" not in section and section.count(verdict) == 1, section
    return lines


def summary_line(output: str, nodeid: str) -> str:
    """The `FAILED nodeid - cause` line of the short test summary."""
    found = [line for line in output.splitlines() if line.startswith(f"FAILED {nodeid} - ")]
    assert len(found) == 1, output
    return found[0]


def test_every_form_under_xdist_writes_reports_of_failures(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_forms=FORMS.format(torch=str(TORCH)))
    result = inner.runpytest_subprocess(*plugin_args(), "-n", "2", "-rf", "--repro-audit-report", "reports")
    output = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed")) == (4, 8), output
    sections = failure_sections(output)
    assert set(sections) == {
        "test_deterministic_fails", "test_identical_fails_on_nan", "test_identical_fails_on_seed",
        "test_recipes_identical_fails", "test_recipe_lambda_is_refused", "test_crashing_run_is_an_error",
        "test_marker_returned_config_fails", "test_marker_without_config",
    }, output

    nan = sections["test_identical_fails_on_nan"]
    assert "RunsDiverged" in nan and "att_entropy" in nan and "NaN" in nan, nan
    diverging = ["test_deterministic_fails", "test_identical_fails_on_nan", "test_identical_fails_on_seed",
                 "test_recipes_identical_fails", "test_marker_returned_config_fails"]
    for name in diverging:
        lines = assert_short_message(sections[name])
        assert lines[1].startswith("runs: ") and "bitwise" in lines[1], lines
    # The verdict first: the chain "what you changed -> mechanisms", or where the runs first differ and why;
    # the short summary line names it, for an assertion in the body and for the marker alike.
    assert message_lines(nan)[0].startswith("repro_audit.audit.assertions.RunsDiverged: not identical: the config (3 keys) -> "
                                            "NaN through a zero-weighted loss term"), nan
    assert " - not identical: the config (3 keys) -> NaN through a zero-weighted loss term" in \
        summary_line(output, "test_forms.py::test_identical_fails_on_nan")
    marker = message_lines(sections["test_marker_returned_config_fails"])
    assert marker[0].startswith("not deterministic: run-to-run nondeterminism at step 1 in data "), marker
    assert summary_line(output, "test_forms.py::test_marker_returned_config_fails").endswith(" - " + marker[0])
    assert summary_line(output, "test_forms.py::test_deterministic_fails").split(" - ", 1)[1] == \
        message_lines(sections["test_deterministic_fails"])[0].split(": ", 1)[1]
    # The evidence that tells: how far apart the batches are, not NaN counts of zero.
    evidence = next(line for line in marker if line.startswith("evidence: "))
    assert evidence.startswith("evidence: norm ") and "NaN" not in evidence, marker
    seed = "\n".join(error_lines(sections["test_identical_fails_on_seed"]))
    assert "config" in seed and "seed" in seed, seed
    assert "not deterministic" in sections["test_deterministic_fails"]
    assert "not deterministic" in sections["test_marker_returned_config_fails"]
    assert "build_relu" in sections["test_recipes_identical_fails"]

    lam = sections["test_recipe_lambda_is_refused"]
    assert "ConfigError" in lam and "is a lambda" in lam and "RunsDiverged" not in lam, lam
    crash = sections["test_crashing_run_is_an_error"]
    assert "RunFailed" in crash and "synthetic failure at step 2" in crash and "RunsDiverged" not in crash, crash
    # A user error is the test's line and the error, not the frames of repro-audit that found it.
    assert not {"assertions.py", "runner.py", "pytest_recipes.py"} & set(re.findall(r"\w+\.py", lam + crash)), lam
    assert "give config= or return the config" in sections["test_marker_without_config"]

    reports = inner.path / "reports"
    assert sorted(path.name for path in reports.iterdir()) == sorted(
        f"test_forms.py_{name}.html" for name in diverging)
    for name in diverging:
        path = reports / f"test_forms.py_{name}.html"
        assert f"HTML report: {path}" in sections[name]
        assert path.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
    assert "repro-audit HTML reports" in output
    assert f"test_forms.py::test_identical_fails_on_nan: {reports / 'test_forms.py_test_identical_fails_on_nan.html'}" \
        in output


def test_last_failed_reruns_the_divergence_and_leaves_no_stray_files(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_last_failed=LAST_FAILED)
    before = _files(inner.path)
    first = inner.runpytest_subprocess(*plugin_args())
    first.assert_outcomes(passed=1, failed=1)
    section = failure_sections(first.stdout.str())["test_recipes_differ"]
    short = assert_short_message(section)
    assert "build_relu" in section and "traces kept in" in section, section
    assert "HTML report: rerun with --repro-audit-report DIR" in short, "no report written: say how to get one"
    assert _files(inner.path) == before, "runs write only under pytest's temporary folder"

    again = inner.runpytest_subprocess(*plugin_args(), "--lf", "-v")
    again.assert_outcomes(passed=0, failed=1)
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*",
                                "*FAILED test_last_failed.py::test_recipes_differ*"])
    detailed = assert_short_message(failure_sections(again.stdout.str())["test_recipes_differ"])
    assert len("\n".join(detailed)) > len("\n".join(short)) and any(line.startswith("then: ") for line in detailed), \
        "-v says more, in no more lines"


@pytest.mark.tensorflow
def test_every_form_on_tensorflow_runs(inner: pytest.Pytester) -> None:
    pytest.importorskip("tensorflow")
    inner.makepyfile(tf_recipes=TF_RECIPES, test_tf=TF_FORMS.format(tf=str(TF)))
    result = inner.runpytest_subprocess(*plugin_args(), "--repro-audit-report", "reports")
    output = result.stdout.str()
    assert (result.parseoutcomes().get("passed"), result.parseoutcomes().get("failed")) == (2, 2), output
    sections = failure_sections(output)
    assert set(sections) == {"test_identical_fails_on_nan", "test_recipes_identical_fails"}, output
    nan = sections["test_identical_fails_on_nan"]
    assert "RunsDiverged" in nan and "att_entropy_l0 with weight 0.0" in nan and "NaN" in nan, nan
    assert_short_message(nan)
    assert "build_relu" in sections["test_recipes_identical_fails"]
    reports = sorted(path.name for path in (inner.path / "reports").iterdir())
    assert reports == ["test_tf.py_test_identical_fails_on_nan.html", "test_tf.py_test_recipes_identical_fails.html"]


# The parts that need no run: refusals that must come before any subprocess starts.

BAD_INPUT = '''
def test_missing_config(repro_audit):
    repro_audit.assert_identical("nope.yaml", overrides_b=["seed=1"])


def test_unknown_category(repro_audit):
    repro_audit.assert_deterministic("nope.yaml", ignore=["graphs"])


def test_golden_is_not_a_path(repro_audit):
    repro_audit.assert_matches_golden({"recipe": "my_model:build"}, golden=None)
'''


def test_bad_input_fails_at_the_test_line_with_one_error_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad=BAD_INPUT)
    result = pytester.runpytest_inprocess(*plugin_args())
    result.assert_outcomes(failed=3)
    sections = failure_sections(result.stdout.str())
    expected = {"test_missing_config": "E       repro_audit.audit.errors.ConfigError: config file not found: ",
                "test_unknown_category": "E       ValueError: unknown category 'graphs' in ignore (did you mean 'graph'?",
                "test_golden_is_not_a_path": "E       repro_audit.audit.errors.ConfigError: golden must be a path such as "}
    for name, words in expected.items():
        lines = [line for line in sections[name].splitlines() if line.strip()]
        assert lines[-3].startswith(">       repro_audit.") and lines[-2].startswith(words), sections[name]
        assert lines[-1].startswith("test_bad.py:") and "/audit/" not in sections[name], sections[name]

def module_level_recipe(params: dict) -> None:
    return None


def test_recipe_spec_names_a_module_level_function() -> None:
    spec, root = recipe_spec(module_level_recipe)
    assert spec.endswith(":module_level_recipe")
    module = spec.split(":")[0]
    assert root is not None and (Path(root) / (module.replace(".", "/") + ".py")).exists()


@pytest.mark.parametrize("recipe, words", [
    (lambda params: None, "is a lambda"),
    (Auditor.assert_identical, "is a method"),
    (functools.partial(module_level_recipe), "has no module-level name"),
    ("no_colon", "recipe must be 'module:function'"),
])
def test_recipe_spec_refuses_what_a_fresh_process_cannot_import(recipe: object, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        recipe_spec(recipe)  # type: ignore[arg-type]


def test_recipe_spec_refuses_a_nested_function() -> None:
    def nested(params: dict) -> None:
        return None

    with pytest.raises(ConfigError, match="defined inside another function"):
        recipe_spec(nested)


def test_ignore_names_must_be_categories() -> None:
    with pytest.raises(ValueError, match="unknown category 'graphs' in ignore \\(did you mean 'graph'\\?"):
        Auditor().assert_deterministic(TORCH / "baseline.yaml", ignore=["graphs"])


def test_ignore_takes_every_category_the_differ_knows_health_included() -> None:
    assert ignored_categories(["health", "buffers", "health"]) == ("health", "buffers")
    assert set(ignored_categories(CATEGORIES)) == set(CATEGORIES)


def test_report_name_is_a_safe_file_name() -> None:
    assert report_name("tests/test_a.py::test_b[x-1/2]") == "tests_test_a.py_test_b_x-1_2"
    long = report_name("t.py::test_" + "x" * 300)
    assert len(long) <= 120 and long.startswith("t.py_test_xxx")


def _files(folder: Path) -> set[str]:
    """Files outside caches and what pytester itself writes (its `runpytest-N` basetemp, stdout, stderr)."""
    ignored = {"__pycache__", ".pytest_cache", "stdout", "stderr"}
    return {str(path.relative_to(folder)) for path in folder.rglob("*")
            if not ignored.intersection(path.relative_to(folder).parts)
            and not path.relative_to(folder).parts[0].startswith("runpytest-")}
