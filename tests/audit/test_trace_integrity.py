"""A trace proves what it holds, one writer owns a path, and writing never destroys what is not a trace.

One real trace of the tiny recipe is recorded for the module; each test damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from repro_audit.audit.config import load_config
from repro_audit.audit.diff.compare import compare_traces
from repro_audit.audit.errors import OutputError, TraceError, UserError
from repro_audit.audit.runner import record
from repro_audit.audit.trace import Trace, TraceWriter, finalize_partial
from repro_audit.audit.trace import format as fmt

ROOT = Path(__file__).parents[2]
RECIPES = ROOT / "tests" / "recipes"


@pytest.fixture(scope="module")
def recorded(tiny_trace: Path) -> Path:
    return tiny_trace


@pytest.fixture
def copy(recorded: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.trace"
    shutil.copytree(recorded, target)
    return target


def manifest_of(trace: Path) -> dict:
    return json.loads((trace / "manifest.json").read_text())


def write_manifest(trace: Path, manifest: dict) -> None:
    (trace / "manifest.json").write_text(json.dumps(manifest))


def as_schema_3(trace: Path) -> None:
    """What the same trace would have been before schema 4: no file list, no line count."""
    manifest = manifest_of(trace)
    for key in ("files", "step_records"):
        manifest.pop(key)
    write_manifest(trace, manifest | {"schema_version": 3})


def lines_of(trace: Path) -> list[bytes]:
    return (trace / "steps.jsonl").read_bytes().splitlines(keepends=True)


# -- 1. a complete trace proves it holds every step ----------------------------------------------------


def test_a_finished_trace_lists_every_file_with_its_digest(recorded: Path) -> None:
    manifest = manifest_of(recorded)
    assert manifest["schema_version"] == 4 and manifest["complete"] is True
    assert manifest["step_records"] == manifest["steps_recorded"] == 3
    on_disk = sorted(str(path.relative_to(recorded)) for path in recorded.rglob("*") if path.is_file())
    assert sorted(manifest["files"]) == [name for name in on_disk if name not in ("manifest.json", "run.log")]
    assert {"steps.jsonl", "environment.json", "graphs/step_00001.json", "values/step_00001.safetensors"} <= set(
        manifest["files"])
    for name, entry in manifest["files"].items():
        data = (recorded / name).read_bytes()
        assert entry == {"bytes": len(data), "hash": "xxh3:" + xxhash.xxh3_128_hexdigest(data)}


@pytest.mark.parametrize("damage", ["missing", "empty", "cut after line 1", "cut after line 2"])
def test_a_complete_trace_that_lost_steps_is_refused(recorded: Path, copy: Path, damage: str) -> None:
    steps = copy / "steps.jsonl"
    if damage == "missing":
        steps.unlink()
    else:
        kept = 0 if damage == "empty" else int(damage[-1])
        steps.write_bytes(b"".join(lines_of(copy)[:kept]))
    with pytest.raises(TraceError, match=f"trace {copy} is corrupt: .*steps.jsonl"):
        compare_traces(Trace(recorded), Trace(copy))


def test_an_old_complete_trace_cut_at_a_line_end_is_refused_by_its_step_count(copy: Path) -> None:
    as_schema_3(copy)
    assert len(Trace(copy).steps) == 3, "schema 3 is still read"
    (copy / "steps.jsonl").write_bytes(b"".join(lines_of(copy)[:2]))
    with pytest.raises(TraceError, match="ends at step 2, its manifest says the run recorded 3 steps"):
        _ = Trace(copy).steps


def test_a_complete_schema_4_trace_without_its_file_list_is_refused(copy: Path) -> None:
    manifest = manifest_of(copy)
    del manifest["files"]
    write_manifest(copy, manifest)
    with pytest.raises(TraceError, match="says it is complete but its manifest lists no files"):
        Trace(copy)


def test_a_changed_values_file_is_refused_before_its_tensors_are_used(copy: Path) -> None:
    values = copy / "values" / "step_00001.safetensors"
    data = bytearray(values.read_bytes())
    data[-1] ^= 0x01
    values.write_bytes(bytes(data))
    step_values = Trace(copy).values(1)
    assert step_values is not None
    with pytest.raises(TraceError, match="values/step_00001.safetensors does not match the digest"):
        step_values.keys()
    values.write_bytes(bytes(data[:-1]))
    with pytest.raises(TraceError, match="values/step_00001.safetensors has .* bytes, its manifest says"):
        Trace(copy)


def crash_mid_line(path: Path) -> None:
    """A real process writes two steps and dies writing the third: its lock dies with it."""
    script = ("import os, sys\n"
              "from repro_audit.audit.trace import TraceWriter\n"
              "writer = TraceWriter(sys.argv[1], framework='torch', config={}, label='crashed')\n"
              "writer.write_json('environment.json', {'python': {'version': '3'}})\n"
              "for step in (1, 2):\n"
              "    writer.append_step({'step': step, 'loss_terms': {'ce': {'weight': 1.0, 'value': 0.5}}})\n"
              "with open(writer.staging / 'steps.jsonl', 'a') as handle:\n"
              "    handle.write('{\"step\": 3, \"grad')\n"
              "os._exit(1)\n")
    subprocess.run([sys.executable, "-c", script, str(path)], check=False, cwd=ROOT)


def test_finalize_partial_writes_an_honest_manifest(tmp_path: Path) -> None:
    path = tmp_path / "crashed.trace"
    crash_mid_line(path)
    assert finalize_partial(path, error={"kind": "crash", "message": "killed", "step": 3}) == path
    manifest = manifest_of(path)
    assert (manifest["complete"], manifest["step_records"], manifest["steps_recorded"]) == (False, 2, 3 - 1)
    assert sorted(manifest["files"]) == ["environment.json", "steps.jsonl"]
    assert manifest["files"]["steps.jsonl"]["bytes"] == (path / "steps.jsonl").stat().st_size, "the cut line too"
    trace = Trace(path)
    assert [record["step"] for record in trace.steps] == [1, 2] and not trace.complete
    (path / "steps.jsonl").write_bytes(b"".join(lines_of(path)[:1]))
    with pytest.raises(TraceError, match="steps.jsonl"):
        _ = Trace(path).steps


# -- 2. one writer per path ---------------------------------------------------------------------------


def test_a_second_writer_on_the_same_path_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.trace"
    first = TraceWriter(path, framework="torch", config={}, label="first")
    first.append_step({"step": 1})
    with pytest.raises(OutputError, match=f"trace path {path} is being written by another process "
                                          f"\\(pid {os.getpid()}\\)"):
        TraceWriter(path, framework="torch", config={}, label="second")
    with pytest.raises(OutputError, match="being written by another process"):
        finalize_partial(path, error={"kind": "crash", "message": "not dead"})
    assert first.finish(complete=True) == path
    trace = Trace(path)
    assert trace.label == "first" and [record["step"] for record in trace.steps] == [1]


def test_record_into_a_path_another_process_writes_leaves_that_writer_alone(recorded: Path, tmp_path: Path) -> None:
    path = tmp_path / "busy.trace"
    holder = TraceWriter(path, framework="torch", config={}, label="holder")
    config = load_config(recorded.parent / "run.yaml", steps=1)
    try:
        result = record(config, path)
        message = str((result.error or {}).get("message"))
        assert not result.ok
    except UserError as error:
        message = str(error)
    assert f"trace path {path} is being written by another process (pid {os.getpid()})" in message
    assert manifest_of(holder.staging)["label"] == "holder" and not path.exists()
    holder.finish(complete=True)
    assert Trace(path).label == "holder"


# -- 3. nothing is replaced that is not a trace -------------------------------------------------------


def new_writer(path: Path) -> TraceWriter:
    return TraceWriter(path, framework="torch", config={}, label="new")


def test_a_file_or_a_foreign_folder_at_the_path_is_never_replaced(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("recipe: mine:build\n")
    with pytest.raises(OutputError, match=f"refusing to write the trace to {config}: it is a file"):
        new_writer(config)
    assert config.read_text() == "recipe: mine:build\n"
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="it is a folder that is not a repro-audit trace"):
        new_writer(folder)
    link = tmp_path / "link.trace"
    link.symlink_to(folder)
    with pytest.raises(OutputError, match="it is a symbolic link"):
        new_writer(link)
    assert (folder / "notes.txt").read_text() == "mine" and not (tmp_path / "results.partial").exists()


def test_a_foreign_staging_folder_is_refused_and_a_stale_one_cleared(tmp_path: Path) -> None:
    path = tmp_path / "run.trace"
    staging = tmp_path / "run.trace.partial"
    staging.mkdir()
    (staging / "data.csv").write_text("1,2")
    with pytest.raises(OutputError, match=f"{staging} exists and was not left by repro-audit"):
        new_writer(path)
    assert (staging / "data.csv").read_text() == "1,2"
    shutil.rmtree(staging)
    crash_mid_line(path)  # a dead writer's staging folder: a manifest, and a lock nobody holds
    assert (staging / "manifest.json").exists()
    writer = new_writer(path)
    assert sorted(entry.name for entry in staging.iterdir()) == ["manifest.json", "steps.jsonl", fmt.LOCK]
    writer.finish(complete=True)
    assert Trace(path).label == "new" and Trace(path).steps == []


def test_a_trace_or_an_empty_folder_is_replaced_and_nothing_beside_it(recorded: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.trace"
    shutil.copytree(recorded, path)
    beside = tmp_path / "run.trace.old"  # the name the writer once used for the trace it replaced
    beside.mkdir()
    (beside / "keep.txt").write_text("mine")
    new_writer(path).finish(complete=True)
    assert Trace(path).label == "new" and (beside / "keep.txt").read_text() == "mine"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["run.trace", "run.trace.old"]
    empty = tmp_path / "empty.trace"
    empty.mkdir()
    new_writer(empty).finish(complete=True)
    assert Trace(empty).complete


def test_what_appears_at_the_path_during_the_run_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "run.trace"
    writer = new_writer(path)
    writer.append_step({"step": 1})
    path.write_text("written meanwhile")
    with pytest.raises(OutputError, match="it is a file, not a repro-audit trace"):
        writer.finish(complete=True)
    assert path.read_text() == "written meanwhile" and (writer.staging / "steps.jsonl").exists()


# -- 4. output errors are one line ----------------------------------------------------------------------


def test_an_empty_path_or_a_file_as_parent_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="names no folder"):
        new_writer(Path(""))
    parent = tmp_path / "a-file"
    parent.write_text("")
    with pytest.raises(OutputError, match=f"cannot write the trace {parent / 'run.trace'}: Not a directory"):
        new_writer(parent / "run.trace")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system, mounted for the test (root only)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, *, leave: int) -> Path:
    """Fill the file system of `folder` until about `leave` bytes are free."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave:
                handle.write(b"\0" * 4096)
                handle.flush()
        except OSError:
            pass
    return filler


def step_record(step: int) -> dict:
    return {"step": step, "loss_terms": {"ce": {"weight": 1.0, "value": 0.5}}, "notes": ["x" * 3000]}


def test_a_full_disk_is_an_output_error_and_never_a_complete_trace(small_tmpfs: Path) -> None:
    path = small_tmpfs / "run.trace"
    writer = new_writer(path)
    filler = fill(small_tmpfs, leave=32 << 10)
    written = 0
    with pytest.raises(OutputError, match=f"cannot write the trace {path}: No space left on device"):
        for step in range(1, 100):
            writer.append_step(step_record(step))
            written = step
    assert written > 0
    with pytest.raises(OutputError, match="a write failed"):
        writer.finish(complete=True)
    assert not path.exists()
    filler.unlink()  # space again: the writer closes the trace as incomplete, with what it holds
    writer.finish(complete=False, error={"kind": "user_error", "message": "disk full"})
    trace = Trace(path)
    assert not trace.complete and [record["step"] for record in trace.steps] == list(range(1, written + 1))


def test_a_disk_that_fills_while_finishing_leaves_no_trace(small_tmpfs: Path) -> None:
    path = small_tmpfs / "run.trace"
    writer = new_writer(path)
    writer.append_step(step_record(1))
    fill(small_tmpfs, leave=0)
    with pytest.raises(OutputError, match="No space left on device"):
        writer.finish(complete=True)
    assert not path.exists() and manifest_of(writer.staging)["complete"] is False


def test_a_read_only_folder_is_an_output_error(small_tmpfs: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {done.stderr.decode().strip()}")
    path = small_tmpfs / "run.trace"
    with pytest.raises(OutputError, match=f"cannot write the trace {path}: Read-only file system"):
        new_writer(path)


# -- 5. files get the mode of any new file ----------------------------------------------------------------


def test_every_file_has_the_mode_a_new_file_gets(recorded: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {str(path.relative_to(recorded)): path.stat().st_mode & 0o777 for path in recorded.rglob("*")
             if path.is_file()}
    assert modes["values/step_00001.safetensors"] == 0o666 & ~umask, "safetensors alone makes its files 0600"
    assert set(modes.values()) == {0o666 & ~umask}


# -- 6. a trace holds no links ------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [4, 3])
@pytest.mark.parametrize("member", ["environment.json", "steps.jsonl", "graphs", "values/step_00001.safetensors"])
def test_a_link_in_a_trace_is_refused(copy: Path, tmp_path: Path, member: str, schema: int) -> None:
    if schema == 3:
        as_schema_3(copy)
    outside = tmp_path / "outside"
    shutil.move(copy / member, outside)
    (copy / member).symlink_to(outside)
    with pytest.raises(TraceError, match="is a symbolic link; a trace holds only its own files"):
        trace = Trace(copy)
        _ = trace.environment, trace.steps, trace.graph_steps()
        values = trace.values(1)
        assert values is not None
        values.keys()
