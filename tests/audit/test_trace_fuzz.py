"""Property-based fuzzing of what reads user files: a mutated trace and a random config either work or are
one UserError, never another exception.

The trace mutations start from one real trace of the tiny recipe. Most of them are signed again (the
manifest lists the new digests, as if the probes had written them), so that they reach the validator and
every reader behind it instead of stopping at the digest. Examples are derandomized: the suite gives the
same result at every run, and each test stays within a few seconds here.
"""

from __future__ import annotations

import copy
import datetime
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repro_audit.audit.config import ConfigError, RunConfig, load_config
from repro_audit.audit.diff.compare import compare_traces
from repro_audit.audit.errors import UserError
from repro_audit.audit.health import check_trace
from repro_audit.audit.trace import Trace
from repro_audit.audit.trace.integrity import member_files
from repro_audit.reports.text import render_text
from repro_audit.reports.trace_summary import render_trace_summary
from tests.helpers import paths_in

RECIPES = Path(__file__).parents[1] / "recipes"
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2 ** 63, -(10 ** 400), 10 ** 400]),
                    st.floats(), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=10)
# One of each JSON type, and the edge of each: what a value of the wrong type most often is.
WRONG = [None, True, 0, -1, 2 ** 63, 1.5, float("nan"), float("-inf"), "", "x", [], [None], {}, {"": None}]
DEEP = "__nested_deep__"  # stands for a list nested some thousands deep, which json.dumps cannot write
replacements = st.one_of(st.sampled_from(WRONG), json_values, st.just(DEEP))


@pytest.fixture(scope="module")
def traces(tiny_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The recorded trace, and a working copy that each example damages and puts back."""
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(tiny_trace, folder / "clean.trace")
    shutil.copytree(tiny_trace, folder / "work.trace")
    return folder / "clean.trace", folder / "work.trace"


def mutate(document: Any, data: st.DataObject) -> Any:
    """Replace, delete or add one value somewhere in the document."""
    path = data.draw(st.sampled_from(paths_in(document)), label="path")
    value = copy.deepcopy(data.draw(replacements, label="value"))  # WRONG's lists must stay as they are
    if not path:
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8), label="key")] = value
    else:
        parent[path[-1]] = value
    return document


def damage(trace: Path, data: st.DataObject) -> None:
    """One mutation of one file of the trace: of its JSON, of one step line, of its bytes, or a stray file."""
    kind = data.draw(st.sampled_from(["json", "step", "bytes", "stray"]), label="kind")
    if kind == "stray":
        name = data.draw(st.sampled_from(["graphs/step_x.json", "graphs/notes.txt", "graphs/step_00002.json",
                                          "values/step_00009.safetensors", "steps.jsonl.tmp"]), label="stray")
        (trace / name).write_bytes(data.draw(st.binary(max_size=64), label="content"))
        return
    if kind == "step":
        lines = (trace / "steps.jsonl").read_text().splitlines()
        index = data.draw(st.integers(0, len(lines) - 1), label="line")
        lines[index] = dumps(mutate(json.loads(lines[index]), data), data)
        (trace / "steps.jsonl").write_text("\n".join(lines) + "\n")
        return
    names = ["manifest.json", "structure.json", "initialisation.json", "graphs/step_00001.json"]
    name = data.draw(st.sampled_from(names + (["steps.jsonl", "environment.json"] if kind == "bytes" else [])),
                     label="file")
    path = trace / name
    if kind == "json":
        path.write_text(dumps(mutate(json.loads(path.read_text()), data), data))
        return
    raw = bytearray(path.read_bytes())
    position = data.draw(st.integers(0, len(raw)), label="position")
    raw[position:position + data.draw(st.integers(0, 8), label="cut")] = data.draw(st.binary(max_size=8), label="bytes")
    path.write_bytes(bytes(raw))


def dumps(document: Any, data: st.DataObject) -> str:
    depth = data.draw(st.sampled_from([40, 500, 5000]), label="depth")
    return json.dumps(document).replace(json.dumps(DEEP), "[" * depth + "]" * depth)


def restore(clean: Path, work: Path) -> None:
    for path in list(work.rglob("*")):
        if path.is_file() and not (clean / path.relative_to(work)).exists():
            path.unlink()
    for name in [*member_files(clean), "manifest.json"]:
        shutil.copyfile(clean / name, work / name)


@FUZZ
@given(data=st.data())
def test_a_damaged_trace_reads_or_is_one_user_error(traces: tuple[Path, Path], resign: Any,
                                                     data: st.DataObject) -> None:
    clean, work = traces
    try:
        damage(work, data)
        signed = data.draw(st.integers(0, 4), label="sign") > 0
        if signed:
            try:
                resign(work)
            except (ValueError, RecursionError):
                pass  # the manifest itself is no longer JSON: it stays as damaged
        try:
            trace = Trace(work)
            _ = trace.environment, trace.structure, trace.initialisation, trace.steps
            for step in trace.graph_steps():
                trace.graph(step)
            render_trace_summary(trace)
            render_text(compare_traces(Trace(clean), Trace(work)))
            if any(isinstance(record_.get("health"), dict) for record_ in trace.steps):
                check_trace(trace)
        except UserError:
            pass
    finally:
        restore(clean, work)


# -- the config loader ------------------------------------------------------------------------------------

KEYS = ["recipe", "framework", "seed", "steps", "params", "loss_weights", "capture", "timeout", "label", "values"]
CAPTURE = ["values", "graph", "module_outputs", "random_draws", "nan_provenance", "term_attribution", "health"]
# YAML has more than JSON: keys of any type, dates, sets, bytes.
yaml_keys = st.one_of(st.sampled_from(KEYS + CAPTURE + ["ce", "aux_*"]), st.text(max_size=6), st.integers(),
                      st.booleans(), st.none(), st.floats(), st.dates())
yaml_scalars = st.one_of(scalars, st.dates(), st.datetimes(), st.binary(max_size=4), st.sets(st.integers(), max_size=2),
                         st.sampled_from(["tiny_mlp:build", "torch", "tensorflow", "all", "first"]))
config_values = st.recursive(yaml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                   st.dictionaries(yaml_keys, inner, max_size=3)),
                             max_leaves=8)


def toml_value(value: Any) -> str:
    """TOML text of a value (None has no TOML spelling: an empty string stands for it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, set)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return json.dumps("" if value is None else str(value))


def loads_or_config_error(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        assert isinstance(load_config(path), RunConfig)
    except ConfigError:
        pass


@FUZZ
@given(fields=st.dictionaries(yaml_keys, config_values, max_size=6), as_toml=st.booleans())
def test_a_random_config_loads_or_is_one_config_error(tmp_path: Path, fields: dict[Any, Any], as_toml: bool) -> None:
    if as_toml:
        text = "".join(f"{json.dumps(str(key))} = {toml_value(value)}\n" for key, value in fields.items())
        loads_or_config_error(tmp_path / "run.toml", text)
    else:
        loads_or_config_error(tmp_path / "run.yaml", yaml.safe_dump(fields))


@FUZZ
@given(text=st.text(max_size=200), suffix=st.sampled_from([".yaml", ".toml"]))
def test_random_text_as_a_config_loads_or_is_one_config_error(tmp_path: Path, text: str, suffix: str) -> None:
    loads_or_config_error(tmp_path / f"run{suffix}", text)


def test_a_tensor_created_outside_the_build_compares(traces: tuple[Path, Path], resign: Any) -> None:
    clean, work = traces
    try:
        path = work / "initialisation.json"
        initialisation = json.loads(path.read_text())
        initialisation["tensors"][1]["creation_index"] = None
        path.write_text(json.dumps(initialisation))
        resign(work)
        compare_traces(Trace(clean), Trace(work))
    finally:
        restore(clean, work)
