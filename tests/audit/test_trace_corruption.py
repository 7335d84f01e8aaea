"""A malformed or damaged trace is one TraceError, never a traceback, and never a false IDENTICAL.

One real trace of the tiny recipe is recorded for the module. The first tests edit a copy of it by hand
and sign it again (a manifest listing the new digests), so that what they test is the validator, not the
digest; the sweep at the end damages it byte by byte and bit by bit, as a disk or a copy would.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repro_audit.audit.diff.compare import compare_traces
from repro_audit.audit.diff.compare_run import CONFIG_IGNORED
from repro_audit.audit.divergence import Comparison
from repro_audit.audit.errors import TraceError
from repro_audit.audit.trace import Trace
from repro_audit.reports.text import render_text
from repro_audit.reports.trace_summary import render_trace_summary

RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.fixture(scope="module")
def recorded(tiny_trace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    trace = tmp_path_factory.mktemp("recorded") / "run.trace"
    shutil.copytree(tiny_trace, trace)
    (trace / "run.log").write_text("what the recipe printed\n" * 20)  # no member: not listed
    return trace


@pytest.fixture
def copy(recorded: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.trace"
    shutil.copytree(recorded, target)
    return target


def edit_json(trace: Path, name: str, change: Callable[[Any], Any]) -> None:
    path = trace / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_step(trace: Path, number: int, change: Callable[[dict[str, Any]], Any]) -> None:
    path = trace / "steps.jsonl"
    lines = path.read_text().splitlines()
    record_ = json.loads(lines[number - 1])
    change(record_)
    lines[number - 1] = json.dumps(record_)
    path.write_text("\n".join(lines) + "\n")


def use(clean: Path, other: Path) -> Comparison:
    """Everything `compare` and `show` do with a trace."""
    trace = Trace(other)
    render_trace_summary(trace)
    comparison = compare_traces(Trace(clean), trace)
    render_text(comparison)
    return comparison


# -- the validator: every field the readers use has the type they expect -------------------------------

WRONG_TYPES: list[tuple[str, str, Callable[[Any], Any], str]] = [
    ("manifest.json", "complete", lambda m: m.update(complete="yes"), "manifest.json: complete must be true or false"),
    ("manifest.json", "config", lambda m: m.update(config=["seed"]), "manifest.json: config must be an object"),
    ("environment.json", "packages", lambda e: e.update(packages=["torch"]),
     "environment.json: packages must be an object"),
    ("environment.json", "module entry", lambda e: e["modules"].update(tiny_mlp="tiny_mlp.py"),
     "environment.json: modules.tiny_mlp must be an object"),
    ("structure.json", "parameters", lambda s: s["modules"][1].update(parameters={"w": 1}),
     "structure.json: modules[1].parameters must be a list"),
    ("initialisation.json", "creation_index", lambda i: i["tensors"][0].update(creation_index="first"),
     "initialisation.json: tensors[0].creation_index must be an integer"),
    ("initialisation.json", "draw module", lambda i: i["draws"][0].update(module=["0"]),
     "initialisation.json: draws[0].module must be a string"),
    ("graphs/step_00001.json", "op", lambda g: g["ops"].insert(0, 7), "graphs/step_00001.json: ops[0] must be an object"),
    ("graphs/step_00001.json", "loss term", lambda g: g["ops"][0].update(loss_term={"ce": 1}),
     "graphs/step_00001.json: ops[0].loss_term must be a string"),
]

WRONG_STEPS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("loss value", lambda r: r["loss_terms"]["ce"].update(value="low"), "line 2: loss_terms.ce.value must be a number"),
    ("loss weight", lambda r: r["loss_terms"]["ce"].pop("weight"), "line 2: loss_terms.ce.weight is missing"),
    ("total", lambda r: r.update(total_loss=None), "line 2: total_loss must be a number"),
    ("gradient", lambda r: r["gradients"].update({"0.weight": "nan"}), "line 2: gradients['0.weight'] must be an object"),
    ("norm", lambda r: r["parameters"]["0.bias"].update(norm=[1.0]), "line 2: parameters['0.bias'].norm must be a number"),
    ("huge count", lambda r: r["gradients"]["0.bias"].update(nan=10 ** 30), "gradients['0.bias'].nan must be an integer"),
    ("draw", lambda r: r["random_draws"][0].update(module={"m": 1}), "line 2: random_draws[0].module must be a string"),
    ("output", lambda r: r["module_outputs"][0].update(call="first"), "line 2: module_outputs[0].call must be an integer"),
    ("optimizer", lambda r: r["optimizer"].update(param_groups=[0.01]), "line 2: optimizer.param_groups[0] must be an object"),
    ("provenance", lambda r: r.update(nan_provenance={"origins": [{"node": "MulBackward0", "forward_op": None,
                                                                   "inputs_from": [None]}], "nonfinite_parameters": []}),
     "line 2: nan_provenance.origins[0].inputs_from[0] must be a string"),
    ("health", lambda r: r["health"].update(described_outputs="all"), "line 2: health.described_outputs must be a list"),
    ("classes", lambda r: r["health"].update(initial_loss={"ce": {"value": 1.0, "num_classes": 1}}),
     "line 2: health: initial_loss.ce.num_classes must be an integer >= 2"),
    ("step", lambda r: r.update(step="2"), "line 2: step must be an integer"),
]


@pytest.mark.parametrize(("name", "what", "change", "message"), WRONG_TYPES, ids=[f"{n}:{w}" for n, w, _, _ in WRONG_TYPES])
def test_a_field_of_the_wrong_type_is_one_error_naming_file_and_field(recorded: Path, copy: Path, resign: Callable[[Path], None], name: str,
                                                                       what: str, change: Callable[[Any], Any],
                                                                       message: str) -> None:
    edit_json(copy, name, change)
    resign(copy)
    with pytest.raises(TraceError, match=f"^trace {copy} is corrupt: " + message.replace("[", r"\[").replace("]", r"\]")):
        use(recorded, copy)


@pytest.mark.parametrize(("what", "change", "message"), WRONG_STEPS, ids=[w for w, _, _ in WRONG_STEPS])
def test_a_step_field_of_the_wrong_type_names_its_line(recorded: Path, copy: Path, resign: Callable[[Path], None], what: str,
                                                        change: Callable[[dict[str, Any]], Any], message: str) -> None:
    edit_step(copy, 2, change)
    resign(copy)
    with pytest.raises(TraceError) as raised:
        use(recorded, copy)
    assert str(raised.value).startswith(f"trace {copy} is corrupt: steps.jsonl ") and message in str(raised.value)


def test_fields_of_newer_probes_are_read(recorded: Path, copy: Path, resign: Callable[[Path], None]) -> None:
    def newer(record_: dict[str, Any]) -> None:
        record_["buffers"] = {"norm.running_mean": record_["parameters"]["0.bias"]}
        record_["random_draws"][0].update(rng_after="xxh3:00", count=None)
        record_["a_field_from_the_future"] = {"anything": [1, "two"]}
    for number in (1, 2, 3):
        edit_step(copy, number, newer)
    resign(copy)
    assert use(copy, copy).identical


def test_text_that_is_not_utf8_is_corrupt(recorded: Path, copy: Path, resign: Callable[[Path], None]) -> None:
    steps = copy / "steps.jsonl"
    lines = steps.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"ce"', b'"c\xff"', 1)
    steps.write_bytes(b"\n".join(lines))
    resign(copy)
    with pytest.raises(TraceError, match="steps.jsonl line 2: not UTF-8 text"):
        use(recorded, copy)


@pytest.mark.parametrize(("depth", "message"), [(100_000, "nested too deep"), (500, "nested at most 32 deep")])
def test_deep_nesting_is_corrupt(recorded: Path, copy: Path, resign: Callable[[Path], None], depth: int, message: str) -> None:
    environment = copy / "environment.json"
    text = environment.read_text()
    environment.write_text(text.replace('"python":', '"python":' + "[" * depth + "]" * depth + ',"old_python":', 1))
    resign(copy)
    with pytest.raises(TraceError, match=f"environment.json: .*{message}"):
        use(recorded, copy)


@pytest.mark.parametrize("schema", [4, 3])
def test_stray_files_beside_the_graphs_and_values_are_not_read(recorded: Path, copy: Path, schema: int) -> None:
    if schema == 3:
        edit_json(copy, "manifest.json", lambda m: (m.pop("files"), m.pop("step_records"), m.update(schema_version=3)))
    for stray in ("graphs/step_x.json", "graphs/notes.txt", "graphs/step_1.json", "values/README"):
        (copy / stray).write_text("not a trace file")
    assert Trace(copy).graph_steps() == [1]
    assert use(recorded, copy).identical


# -- the sweep: damage as a disk or a copy would do it -------------------------------------------------

ESSENTIAL = ("format", "schema_version", "complete", "steps_recorded", "step_records", "files")


def verdict(clean: Path, corrupt: Path, case: str) -> Comparison | None:
    """The comparison, or None for a TraceError; any other exception fails the test, naming the case."""
    try:
        return use(clean, corrupt)
    except TraceError:
        return None
    except Exception as error:
        pytest.fail(f"{case}: {type(error).__name__}: {error}")


def passes(comparison: Comparison | None) -> bool:
    return comparison is not None and comparison.identical and not comparison.partial


def manifest_says_the_same(original: bytes, damaged: bytes) -> bool | None:
    """Whether a damaged manifest still says what matters (None: it is no JSON object any more)."""
    try:
        before, after = json.loads(original), json.loads(damaged)
    except ValueError:
        return None
    if not isinstance(after, dict) or not isinstance(after.get("config"), dict):
        return None
    relevant = [{key: value for key, value in manifest["config"].items() if key not in CONFIG_IGNORED}
                for manifest in (before, after)]
    # A values file is checked against its digest only when a comparison reads it (where hashes differ).
    for manifest in (before, after):
        for name, entry in (manifest.get("files") or {}).items():
            if name.startswith("values/") and isinstance(entry, dict):
                entry.pop("hash", None)
    return relevant[0] == relevant[1] and all(before.get(key) == after.get(key) for key in ESSENTIAL)


def truncations(data: bytes, rng: random.Random, sample: int) -> list[int]:
    """Every line end (and a byte either side of it), plus a seeded sample of other lengths."""
    ends = [index + 1 for index, byte in enumerate(data) if byte == ord("\n")]
    lengths = {0, *ends, *(end - 1 for end in ends), *(end + 1 for end in ends)}
    lengths |= {rng.randrange(len(data)) for _ in range(sample)}
    return sorted(length for length in lengths if 0 <= length < len(data))


def test_every_truncation_of_a_complete_trace_is_refused(recorded: Path, copy: Path) -> None:
    rng = random.Random(10)
    for name, sample in (("steps.jsonl", 150), ("manifest.json", 10_000), ("graphs/step_00001.json", 60)):
        path = copy / name
        original = path.read_bytes()
        for length in truncations(original, rng, sample):
            path.write_bytes(original[:length])
            assert verdict(recorded, copy, f"{name} cut to {length} bytes") is None, f"{name} cut to {length} bytes"
        path.write_bytes(original)
    assert passes(verdict(recorded, copy, "restored"))


def test_bit_flips_are_refused_or_give_the_right_verdict(recorded: Path, copy: Path) -> None:
    rng = random.Random(18)
    flips = {"manifest.json": 300, "steps.jsonl": 120, "run.log": 20, "environment.json": 30, "structure.json": 20,
             "initialisation.json": 30, "graphs/step_00001.json": 30, "values/step_00001.safetensors": 30}
    for name, count in flips.items():
        path = copy / name
        original = path.read_bytes()
        for _ in range(count):
            position, bit = rng.randrange(len(original)), rng.randrange(8)
            damaged = bytearray(original)
            damaged[position] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            case = f"{name}: bit {bit} of byte {position} flipped"
            found = verdict(recorded, copy, case)
            if name == "run.log":
                assert passes(found), f"{case}: the log is no part of the comparison"
            elif name == "manifest.json":
                same = manifest_says_the_same(original, bytes(damaged))
                assert passes(found) == bool(same), f"{case}: {'not ' if same else ''}the same manifest"
            elif name.startswith("values/"):
                assert found is None or passes(found), case  # values are read (and checked) only where hashes differ
            else:
                assert found is None, f"{case}: damaged step data must be refused"
        path.write_bytes(original)
