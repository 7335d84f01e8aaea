"""The review of bad input, repeatable: every row is a command that must fail the same way.

For each row: the exit code (2), exactly one non-empty line on stderr naming the problem, no traceback,
nothing deleted or changed among the files the command was given, and no worker process or `repro-audit-*`
temporary folder left behind. The CLI runs in-process (click's CliRunner); the runs themselves are real
worker subprocesses of the tiny recipes. Signals are tests/audit/test_signals.py; trace corruption beyond a
few rows (bit flips, digests) is the trace package's own tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "tests" / "recipes"
GOOD = "recipe: tiny_mlp:build\nseed: 0\nsteps: 2\n"
COMMANDS = (  # a bad config is refused the same way by every command that reads one
    ["record", "{d}/c.yaml", "-o", "{d}/out.trace", "-q"],
    ["diff", "{d}/c.yaml", "{ws}/good.yaml", "-q"],
    ["check", "{d}/c.yaml", "-q"],
    ["health", "{d}/c.yaml", "-q"],
)


@dataclass
class Row:
    """One bad input: the files written into the row's folder, the command, what its one line must say."""

    id: str
    argv: list[str]
    message: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    code: int = 2


def config_row(index: int, id: str, text: str, message: str, *, name: str = "c.yaml") -> Row:
    argv = [arg.replace("c.yaml", name) for arg in COMMANDS[index % len(COMMANDS)]]
    return Row(f"config-{id}", argv, message, {name: text})


# -- configs: syntax, then every key with values of the wrong type ----------------------------------------

CONFIG_CASES: list[tuple[str, str, str]] = [
    ("unclosed-flow", "recipe: tiny_mlp:build\nparams: {a: 1\n", "malformed config"),
    ("unclosed-list", "recipe: [tiny_mlp:build\n", "malformed config"),
    ("unclosed-quote", "recipe: 'tiny_mlp:build\n", "malformed config"),
    ("tab-indent", "params:\n\ta: 1\nrecipe: tiny_mlp:build\n", "malformed config"),
    ("bad-indent", "recipe: tiny_mlp:build\n  seed: 1\n steps: 2\n", "malformed config"),
    ("mapping-in-scalar", "recipe: tiny_mlp:build\nseed: a: b\n", "malformed config"),
    ("two-documents", "recipe: tiny_mlp:build\n---\nrecipe: tiny_mlp:build\n", "malformed config"),
    ("undefined-alias", "recipe: *nowhere\n", "malformed config"),
    ("python-tag", "recipe: !!python/object/apply:os.system ['true']\n", "malformed config"),
    ("unknown-tag", "recipe: !custom tiny_mlp:build\n", "malformed config"),
    ("duplicate-anchor-bomb", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")),
     "aliases expand to more than"),
    ("recursive-alias", "recipe: tiny_mlp:build\nparams: &p {self: *p}\n", "an alias refers to the node"),
    ("deep-nesting", "recipe: tiny_mlp:build\nparams: " + "[" * 3000 + "]" * 3000 + "\n", "malformed config"),
    ("top-level-list", "- recipe\n- tiny_mlp:build\n", "must be a mapping at the top level"),
    ("top-level-string", "just a string\n", "must be a mapping at the top level"),
    ("top-level-null", "null\n", "must be a mapping at the top level"),
    ("empty-file", "", "must be a mapping at the top level"),
    ("comments-only", "# nothing here\n", "must be a mapping at the top level"),
    ("top-level-number", "42\n", "must be a mapping at the top level"),
    ("control-char", "recipe: tiny_mlp:build\x07\n", "malformed config"),
    ("missing-recipe", "seed: 0\n", "missing required key 'recipe'"),
    ("unknown-key", "recipe: tiny_mlp:build\nstepz: 3\n", "unknown key 'stepz'"),
    ("unknown-key-case", "recipe: tiny_mlp:build\nSeed: 3\n", "unknown key 'Seed'"),
    ("unknown-key-space", "recipe: tiny_mlp:build\n'seed ': 3\n", "unknown key 'seed '"),
    ("unknown-key-empty", "recipe: tiny_mlp:build\n'': 3\n", "unknown key ''"),
    ("int-key", "recipe: tiny_mlp:build\n1: 3\n", "key 1 is of type int, not a string"),
    ("mixed-keys", "recipe: tiny_mlp:build\nparams: {1: a, '1': b}\n", "key 1 in params is of type int"),
    ("bool-key", "recipe: tiny_mlp:build\nparams: {yes: 1}\n", "key True in params is of type bool"),
    ("float-key", "recipe: tiny_mlp:build\nloss_weights: {0.5: 1}\n", "key 0.5 in loss_weights is of type float"),
    ("null-key", "recipe: tiny_mlp:build\ncapture: {null: true}\n", "key None in capture is of type NoneType"),
    ("nested-int-key", "recipe: tiny_mlp:build\nparams: {a: {b: {3: c}}}\n", "key 3 in params.a.b"),
    ("date-key", "recipe: tiny_mlp:build\nparams: {2024-01-01: x}\n", "key datetime.date(2024, 1, 1) in params"),
    ("unhashable-key", "recipe: tiny_mlp:build\nparams: {[1]: x}\n", "malformed config"),
    ("unknown-capture", "recipe: tiny_mlp:build\ncapture: {valuez: all}\n", "unknown capture option 'valuez'"),
    ("extra-loss-option", "recipe: tiny_mlp:build\ncapture: {loss: true}\n", "unknown capture option 'loss'"),
]
for key, values in {
    "recipe": ["1", "[tiny_mlp, build]", "{m: f}", "null", "true", "nocolon", "a:b:c", ":build", "'tiny_mlp:'",
               "1mod:build", "mod.:build", "../tiny_mlp:build", "/abs/mod:build", "tiny_mlp:build-2",
               "'tiny_mlp :build'", "tiny_mlp:build()", "''"],
    "framework": ["jax", "1", "[torch]", "null", "Torch", "''"],
    "seed": ["-1", "1.5", "'0'", "true", "4294967296", "99999999999999999999", "[0]", ".nan", "null", "{a: 1}"],
    "steps": ["0", "-3", "1.5", "'3'", "true", "[1]", "null", ".inf"],
    "timeout": ["0", "-1", "'10'", "true", ".nan", ".inf", "-.inf", "[1]", "null", "{s: 1}"],
    "label": ["[1]", "{a: 1}", "''", "'   '", "\"a\\nb\"", "5", "true", "null", "\"tab\\there\""],
}.items():
    CONFIG_CASES += [(f"{key}={value}", f"recipe: tiny_mlp:build\n{key}: {value}\n".replace(
        "recipe: tiny_mlp:build\nrecipe:", "recipe:"), {
        "recipe": "recipe must be 'module:function'", "framework": "framework must be one of",
        "seed": "seed must be an integer from 0 to 4294967295", "steps": "steps must be an integer >= 1",
        "timeout": "timeout must be a finite positive number", "label": "label must be a non-empty string",
    }[key]) for value in values]
CONFIG_CASES += [
    ("params=list", "recipe: tiny_mlp:build\nparams: [1]\n", "'params' must be a mapping, got list"),
    ("params=string", "recipe: tiny_mlp:build\nparams: x\n", "'params' must be a mapping, got str"),
    ("params=zero", "recipe: tiny_mlp:build\nparams: 0\n", "'params' must be a mapping, got int"),
    ("params=false", "recipe: tiny_mlp:build\nparams: false\n", "'params' must be a mapping, got bool"),
    ("params-date", "recipe: tiny_mlp:build\nparams: {d: 2024-01-02}\n", "params.d is a date or time"),
    ("params-datetime", "recipe: tiny_mlp:build\nparams: {d: 2024-01-02 10:00:00}\n", "params.d is a date"),
    ("params-binary", "recipe: tiny_mlp:build\nparams: {b: !!binary aGk=}\n", "params.b is a byte string"),
    ("params-set", "recipe: tiny_mlp:build\nparams: {s: !!set {a}}\n", "params.s is a set (!!set)"),
    ("params-pairs", "recipe: tiny_mlp:build\nparams: {p: !!pairs [{a: 1}]}\n", "params.p[0] is a pair"),
    ("params-too-deep", "recipe: tiny_mlp:build\nparams: {x: " + "[" * 40 + "]" * 40 + "}\n",
     "nested more than 32 levels deep"),
    ("weights=list", "recipe: tiny_mlp:build\nloss_weights: [1]\n", "'loss_weights' must be a mapping"),
    ("weights=string", "recipe: tiny_mlp:build\nloss_weights: x\n", "'loss_weights' must be a mapping"),
    ("weight=string", "recipe: tiny_mlp:build\nloss_weights: {ce: x}\n", "loss weight of 'ce' must be a number"),
    ("weight=bool", "recipe: tiny_mlp:build\nloss_weights: {ce: true}\n", "loss weight of 'ce' must be a number"),
    ("weight=null", "recipe: tiny_mlp:build\nloss_weights: {ce: null}\n", "loss weight of 'ce' must be a number"),
    ("weight=list", "recipe: tiny_mlp:build\nloss_weights: {ce: [1]}\n", "loss weight of 'ce' must be a number"),
    ("weight=nan", "recipe: tiny_mlp:build\nloss_weights: {ce: .nan}\n", "must be a number and finite"),
    ("weight=inf", "recipe: tiny_mlp:build\nloss_weights: {'*': .inf}\n", "must be a number and finite"),
    ("weight=-inf", "recipe: tiny_mlp:build\nloss_weights: {ce: -.inf}\n", "must be a number and finite"),
    ("capture=list", "recipe: tiny_mlp:build\ncapture: [values]\n", "'capture' must be a mapping"),
    ("capture=string", "recipe: tiny_mlp:build\ncapture: all\n", "'capture' must be a mapping"),
    ("capture.values=some", "recipe: tiny_mlp:build\ncapture: {values: some}\n", "capture.values must be one of"),
    ("capture.values=1", "recipe: tiny_mlp:build\ncapture: {values: 1}\n", "capture.values must be one of"),
    ("capture.values=list", "recipe: tiny_mlp:build\ncapture: {values: [all]}\n", "capture.values must be one of"),
    ("capture.graph=yes-string", "recipe: tiny_mlp:build\ncapture: {graph: 'yes'}\n", "capture.graph must be true or false"),
    ("capture.graph=1", "recipe: tiny_mlp:build\ncapture: {graph: 1}\n", "capture.graph must be true or false"),
    ("capture.health=null", "recipe: tiny_mlp:build\ncapture: {health: null}\n", "capture.health must be true or"),
]
TOML_CASES = [
    ("toml-syntax", "recipe = \n", "malformed config"),
    ("toml-unclosed", "recipe = \"tiny_mlp:build\n", "malformed config"),
    ("toml-date", "recipe = \"tiny_mlp:build\"\n[params]\nwhen = 2024-01-02\n", "params.when is a date"),
    ("toml-time", "recipe = \"tiny_mlp:build\"\n[params]\nat = 10:00:00\n", "params.at is a date or time"),
    ("toml-nan-timeout", "recipe = \"tiny_mlp:build\"\ntimeout = nan\n", "timeout must be a finite positive"),
    ("toml-big-seed", "recipe = \"tiny_mlp:build\"\nseed = 4294967296\n", "seed must be an integer from 0"),
    ("toml-unknown", "recipe = \"tiny_mlp:build\"\nstepz = 2\n", "unknown key 'stepz'"),
]

ROWS: list[Row] = [config_row(index, id, text, message) for index, (id, text, message) in enumerate(CONFIG_CASES)]
ROWS += [config_row(index, id, text, message, name="c.toml") for index, (id, text, message) in enumerate(TOML_CASES)]

# -- config files that are not config files ----------------------------------------------------------------

ROWS += [
    Row("file-missing", ["record", "{d}/nope.yaml", "-o", "{d}/t.trace"], "config file not found"),
    Row("file-missing-b", ["diff", "{ws}/good.yaml", "{d}/nope.yaml"], "config file not found"),
    Row("file-folder", ["health", "{d}/folder.yaml"], "config path is a folder", {"folder.yaml/x": "x"}),
    Row("file-json-suffix", ["record", "{d}/c.json", "-o", "{d}/t.trace"], "must end in .yaml, .yml or .toml",
        {"c.json": "{}"}),
    Row("file-no-suffix", ["check", "{d}/config"], "must end in .yaml, .yml or .toml", {"config": GOOD}),
    Row("file-fifo", ["record", "{d}/fifo.yaml", "-o", "{d}/t.trace"], "is not a regular file", {"fifo.yaml": "FIFO"}),
    Row("file-dev-zero", ["record", "{d}/zero.yaml", "-o", "{d}/t.trace"], "is not a regular file",
        {"zero.yaml": "->/dev/zero"}),
    Row("file-too-big", ["record", "{d}/big.yaml", "-o", "{d}/t.trace"], "is larger than 1024 KiB",
        {"big.yaml": GOOD + "#" + "x" * (1 << 20)}),
    Row("file-latin1", ["record", "{d}/c.yaml", "-o", "{d}/t.trace"], "not UTF-8 text",
        {"c.yaml": b"recipe: tiny_mlp:build\nlabel: caf\xe9\n"}),
    Row("file-binary", ["record", "{d}/c.yaml", "-o", "{d}/t.trace"], "not UTF-8 text",
        {"c.yaml": bytes(range(256))}),
    Row("file-empty-path", ["record", "", "-o", "{d}/t.trace"], "config path is empty"),
]

# -- command-line options ----------------------------------------------------------------------------------

ROWS += [
    Row(f"option-{'-'.join(argv[:2])}-{index}", argv, message) for index, (argv, message) in enumerate([
        (["--bogus"], "No such option '--bogus'"),
        (["nope"], "No such command 'nope'"),
        (["record"], "Missing argument 'CONFIG'"),
        (["record", "{ws}/good.yaml"], "Missing option '-o'"),
        (["record", "{ws}/good.yaml", "-o"], "Option '-o' requires an argument"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--steps", "0"], "0 is not in the range x>=1"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--steps", "-1"], "-1 is not in the range x>=1"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--steps", "x"], "'x' is not a valid integer"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--steps", "1.5"], "'1.5' is not a valid integer"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--values", "some"], "'some' is not one of"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "seed"], "override must be key.path=value"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "=3"], "override has an empty key"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "a..b=1"], "override has an empty key"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "seed=[1"], "value is not valid YAML"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "recipe.x=1"], "'recipe' is not a mapping"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "seed=x"], "seed must be an integer"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "steps=0"], "steps must be an integer >= 1"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "nokey=1"], "unknown key 'nokey'"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "timeout=.nan"], "timeout must be a finite"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "seed=4294967296"], "seed must be an integer"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "capture.values=some"], "capture.values must be"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "params.d=2024-01-01"], "params.d is a date"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "params.x=!!python/name:os.system"],
         "value is not valid YAML"),
        (["record", "{ws}/good.yaml", "-o", "{d}/t", "--set", "params.x=&a [*a]"], "value is not valid YAML"),
        (["diff", "{ws}/good.yaml"], "give CONFIG_B, or --set-b"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--rtol", "x"], "'x' is not a valid float"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--rtol", "-1"], "tolerances must be >= 0"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--atol", "nan"], "tolerances must be >= 0"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--ignore", "bogus"], "'bogus' is not one of"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--set-a", "seed"], "override must be key.path=value"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--set-b", "steps=-2"], "steps must be an integer"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--steps", "0"], "0 is not in the range"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--dead-units", "2"], "2.0 is not in the range"),
        (["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--max-grad-norm", "big"], "'big' is not a valid float"),
        (["check", "{ws}/good.yaml", "--runs", "1"], "1 is not in the range x>=2"),
        (["check", "{ws}/good.yaml", "--runs", "0"], "0 is not in the range x>=2"),
        (["check", "{ws}/good.yaml", "--runs", "two"], "'two' is not a valid integer"),
        (["check", "{ws}/good.yaml", "--set", "x"], "override must be key.path=value"),
        (["check", "{ws}/good.yaml", "--keep", "{ws}/good.yaml"], "is a file"),
        (["compare", "{ws}/good.trace"], "Missing argument 'TRACE_B'"),
        (["compare", "{ws}/good.trace", "{ws}/good.trace", "--rtol", "-0.5"], "tolerances must be >= 0"),
        # `health` is a category to leave out (as in the pytest plugin); a near miss is not.
        (["compare", "{ws}/good.trace", "{ws}/good.trace", "--ignore", "healthy"], "'healthy' is not one of"),
        (["health", "{ws}/good.trace", "--steps", "2"], "--steps and --set apply to a config only"),
        (["health", "{ws}/good.yaml", "--saturation", "-1"], "-1.0 is not in the range"),
        (["health", "{ws}/good.yaml", "--memory-min-steps", "0"], "0 is not in the range x>=1"),
        (["show"], "Missing argument 'TRACE'"),
        (["show", "{ws}/good.trace", "extra"], "Got unexpected extra argument (extra)"),
    ])
]

# -- traces --------------------------------------------------------------------------------------------------

TRACES = {
    "missing": ("{ws}/missing.trace", "trace not found"),
    "file": ("{ws}/good.yaml", "not a repro-audit trace"),
    "no-manifest": ("{ws}/empty.trace", "not a repro-audit trace (no manifest.json)"),
    "newer": ("{ws}/newer.trace", "schema version 99"),
    "garbage-manifest": ("{ws}/garbage.trace", "is corrupt"),
    "list-manifest": ("{ws}/list.trace", "is corrupt"),
    "foreign-manifest": ("{ws}/foreign.trace", "not a repro-audit trace (format 'something-else')"),
}
ROWS += [Row(f"trace-{name}-compare", ["compare", "{ws}/good.trace", path], message)
         for name, (path, message) in TRACES.items()]
ROWS += [Row(f"trace-{name}-show", ["show", path], message) for name, (path, message) in TRACES.items()
         if name in ("missing", "file", "newer", "garbage-manifest")]

# -- outputs: nothing that is not ours is replaced, nothing is written into an input ------------------------

ROWS += [
    Row("output-record-over-folder", ["record", "{ws}/good.yaml", "-o", "{d}/mine"], "exists and is not a "
        "repro-audit trace", {"mine/notes.txt": "keep me"}),
    Row("output-record-over-file", ["record", "{ws}/good.yaml", "-o", "{d}/notes.txt"], "exists and is not a "
        "repro-audit trace", {"notes.txt": "keep me"}),
    Row("output-record-over-config", ["record", "{d}/c.yaml", "-o", "{d}/c.yaml"], "it is the input",
        {"c.yaml": GOOD}),
    Row("output-record-empty", ["record", "{ws}/good.yaml", "-o", ""], "-o: the path is empty"),
    Row("output-record-in-trace", ["record", "{ws}/good.yaml", "-o", "{ws}/good.trace/x.trace"],
        "is inside the trace"),
    Row("output-json-in-trace", ["compare", "{ws}/good.trace", "{ws}/good.trace", "--json",
                                 "{ws}/good.trace/steps.jsonl"], "it is inside the input"),
    Row("output-html-in-trace", ["compare", "{ws}/good.trace", "{ws}/good.trace", "--html",
                                 "{ws}/good.trace/report.html"], "it is inside the input"),
    Row("output-json-over-config", ["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--json", "{ws}/good.yaml"],
        "it is the input"),
    Row("output-json-missing-folder", ["compare", "{ws}/good.trace", "{ws}/good.trace", "--json",
                                       "{d}/no/such/r.json"], "does not exist"),
    Row("output-json-empty", ["compare", "{ws}/good.trace", "{ws}/good.trace", "--json", ""], "the path is empty"),
    Row("output-html-folder", ["compare", "{ws}/good.trace", "{ws}/good.trace", "--html", "{d}"], "is a directory"),
    Row("output-keep-trace", ["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--keep", "{ws}/good.trace"],
        "is a repro-audit trace"),
    Row("output-keep-over-folder", ["diff", "{ws}/good.yaml", "{ws}/good.yaml", "--keep", "{d}"],
        "exists and is not a repro-audit trace", {"1-good--A-.trace/mine.txt": "keep me"}),
    Row("output-health-json-over-config", ["health", "{ws}/good.yaml", "--json", "{ws}/good.yaml"],
        "it is the input"),
    Row("output-two-stdout", ["compare", "{ws}/good.trace", "{ws}/good.trace", "--json", "-", "--html", "-"],
        "only one of --json and --html can go to stdout"),
]

# -- recipes that crash, hang, return the wrong thing or leave early (real worker processes) ----------------

RECIPE_CASES = [
    ("missing-module", "recipe: no_such_module:build\n", "cannot import recipe module 'no_such_module'"),
    ("missing-function", "recipe: tiny_mlp:missing\n", "has no function 'missing'"),
    ("import-error", "recipe: broken_module:build\n", "recipe module 'broken_module' failed to import"),
    ("wrong-return", "recipe: tiny_mlp:build_wrong_return\n", "returned list; expected repro_audit.Recipe"),
    ("non-scalar-loss", "recipe: tiny_mlp:build_non_scalar_loss\n", "loss term 'ce' must be a scalar tensor"),
    ("batches-run-out", "recipe: tiny_mlp:build\nsteps: 50\n", "batches ran out after 10 steps"),
    ("crash", "recipe: tiny_mlp:build_crashing\nsteps: 3\n", "failed at step 2: RuntimeError: synthetic failure"),
    ("multi-line-error", "recipe: misbehaving:build_multiline_error\n", "first line of the problem second line"),
    ("hang", "recipe: tiny_mlp:build_hanging\nsteps: 3\ntimeout: 5\n", "timed out"),
    ("exit-0", "recipe: misbehaving:build_exiting\nsteps: 3\n", "exited with code 0 before finishing step 2"),
    ("exit-3", "recipe: misbehaving:build_exiting\nsteps: 3\nparams: {code: 3}\n", "exited with code 3"),
]
ROWS += [Row(f"recipe-{id}", ["record", "{d}/c.yaml", "-o", "{d}/out.trace", "-q"], message, {"c.yaml": text})
         for id, text, message in RECIPE_CASES]
ROWS.append(Row("recipe-diff-one-crashes", ["diff", "{ws}/good.yaml", "{d}/c.yaml", "-q"],
                "failed at step 2: RuntimeError: synthetic failure at step 2 (--keep DIR keeps what they recorded)",
                {"c.yaml": "recipe: tiny_mlp:build_crashing\nsteps: 3\n"}))

assert len(ROWS) >= 150 and len({row.id for row in ROWS}) == len(ROWS)


# -- the harness ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary folder of our own for the CLI and its workers, so leftovers are ours to count."""
    folder = tmp_path_factory.mktemp("tmpdir")
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield folder
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, private_tmp: Path) -> Path:
    """Shared inputs: a good config, a recorded trace of it, and broken traces."""
    ws = tmp_path_factory.mktemp("workspace")
    _copy_recipes(ws)
    (ws / "good.yaml").write_text(GOOD)
    result = CliRunner().invoke(cli, ["record", str(ws / "good.yaml"), "-o", str(ws / "good.trace"), "-q"])
    assert result.exit_code == 0, result.output
    (ws / "empty.trace").mkdir()
    manifest = json.loads((ws / "good.trace" / "manifest.json").read_text())
    for name, text in (("newer", json.dumps({**manifest, "schema_version": 99})), ("garbage", "{not json"),
                       ("list", "[1, 2]"), ("foreign", json.dumps({**manifest, "format": "something-else"}))):
        shutil.copytree(ws / "good.trace", ws / f"{name}.trace")
        (ws / f"{name}.trace" / "manifest.json").write_text(text)
    return ws


def _copy_recipes(folder: Path) -> None:
    for recipe in RECIPES.glob("*.py"):
        shutil.copy(recipe, folder / recipe.name)
    (folder / "broken_module.py").write_text("raise ImportError('broken\\non import')\n")


def _write(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "FIFO":
            os.mkfifo(path)
        elif isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _snapshot(folder: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _live_workers() -> list[int]:
    """Worker processes this test process started (their --parent-pid names it) that are not dead."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"repro_audit.audit.worker" in words and str(os.getpid()).encode() in words and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("repro-audit"))


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, workspace: Path, private_tmp: Path, tmp_path: Path) -> None:
    _copy_recipes(tmp_path)
    _write(tmp_path, row.files)
    argv = [arg.replace("{ws}", str(workspace)).replace("{d}", str(tmp_path)) for arg in row.argv]
    inputs_before = {**_snapshot(workspace), **{f"row/{k}": v for k, v in _snapshot(tmp_path).items()}}
    leftovers_before = _leftovers(private_tmp)

    result = CliRunner().invoke(cli, argv)

    assert result.exit_code == row.code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("repro-audit: ") and lines[0].strip(), result.stderr
    assert row.message in lines[0], lines[0]
    assert "Traceback" not in result.output
    after = {**_snapshot(workspace), **{f"row/{k}": v for k, v in _snapshot(tmp_path).items()}}
    changed = {name for name, digest in inputs_before.items() if after.get(name) != digest}
    assert not changed, f"inputs deleted or changed: {sorted(changed)}"
    for _ in range(100):  # workers are reaped before the command returns; this only absorbs a busy machine
        if not _live_workers():
            break
        time.sleep(0.1)
    assert _live_workers() == []
    assert _leftovers(private_tmp) == leftovers_before
