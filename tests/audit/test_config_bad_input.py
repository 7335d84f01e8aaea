"""Configs that must be one ConfigError line, not a run without a timeout, a hang, or a traceback: NaN and
infinite numbers, seeds numpy and torch refuse, YAML types JSON cannot hold, keys that are not strings,
alias bombs, and paths that are not regular files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro_audit.audit.cli import cli
from repro_audit.audit.config import load_config
from repro_audit.audit.errors import ConfigError

BOMB = "".join(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
               for previous, name in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("recipe: m:f\ntimeout: .nan\n", "timeout must be a finite positive number"),
    ("framework: returnn\n", "framework: returnn needs returnn_config: the RETURNN config file to run"),
    ("framework: returnn\nreturnn_config: 3\n", "framework: returnn needs returnn_config"),
    ("recipe: m:f\nreturnn_config: a.config\n", "returnn_config is only for framework: returnn"),
    ("recipe: m:f\ntimeout: .inf\n", "timeout must be a finite positive number"),
    ("recipe: m:f\ntimeout: -1\n", "timeout must be a finite positive number"),
    ("recipe: m:f\nloss_weights: {a: .nan}\n", "loss weight of 'a' must be a number and finite"),
    ("recipe: m:f\nloss_weights: {a: -.inf}\n", "loss weight of 'a' must be a number and finite"),
    ("recipe: m:f\nseed: 4294967296\n", "seed must be an integer from 0 to 4294967295"),
    ("recipe: m:f\nseed: 18446744073709551616\n", "seed must be an integer from 0 to 4294967295"),
    ("recipe: m:f\nparams: {when: 2024-01-02}\n", "params.when is a date or time (2024-01-02)"),
    ("recipe: m:f\nparams: {blob: !!binary aGVsbG8=}\n", "params.blob is a byte string (!!binary)"),
    ("recipe: m:f\nparams: {s: !!set {a, b}}\n", "params.s is a set (!!set)"),
    ("recipe: m:f\nparams: !!omap [{a: 1}]\n", "params[0] is a pair"),
    ("recipe: m:f\nparams: {1: a, '1': b}\n", "key 1 in params is of type int, not a string"),
    ("recipe: m:f\nparams: {deep: {[1, 2]: x}}\n", "malformed config"),  # unhashable key: PyYAML refuses
    ("recipe: m:f\nparams: {deep: {null: x}}\n", "key None in params.deep is of type NoneType"),
    ("recipe: m:f\n1: 2\n", "key 1 is of type int, not a string"),
    ("recipe: m:f\ncapture: {true: 1}\n", "key True in capture is of type bool"),
    ("recipe: m:f\nloss_weights: {2: 0.0}\n", "key 2 in loss_weights is of type int"),
    ("recipe: m:f\nlabel: [a]\n", "label must be a non-empty string on one line"),
    ("recipe: m:f\nlabel: \"two\\nlines\"\n", "label must be a non-empty string on one line"),
    ("recipe: m:f\nparams: []\n", "'params' must be a mapping, got list"),
    ("recipe: m:f\nparams: 0\n", "'params' must be a mapping, got int"),
    ("recipe: m:f\ncapture: ''\n", "'capture' must be a mapping, got str"),
    ("recipe: ../evil:build\n", "recipe must be 'module:function'"),
    ("recipe: 'm:f g'\n", "recipe must be 'module:function'"),
    ("recipe: m:f\nframework: [torch]\n", "framework must be one of"),
    (BOMB, "aliases expand to more than 100000 nodes"),
    ("a: &a [*a]\n", "an alias refers to the node that contains it"),
    ("recipe: m:f\nparams: " + "[" * 2000 + "]" * 2000 + "\n", "malformed config"),
    ("recipe: m:f\nparams: {x: " + "[" * 40 + "1" + "]" * 40 + "}\n", "nested more than 32 levels deep"),
])
def test_bad_values_are_one_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("override, message", [
    ("timeout=.nan", "timeout must be a finite positive number"),
    ("seed=4294967296", "seed must be an integer from 0"),
    ("params.when=2024-01-02", "params.when is a date"),
    ("params.x=!!python/object/apply:os.system ['true']", "value is not valid YAML"),
    ("params.x=" + BOMB.replace("\n", ", ").join("{}"), "value is not valid YAML"),
])
def test_bad_overrides_are_one_config_error(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "recipe: m:f\n"), overrides=[override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_special_files_are_refused_without_reading_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes: opening it for reading the usual way would block forever
    big = write(tmp_path, "recipe: m:f\n# " + "x" * (1024 * 1024) + "\n", "big.yaml")
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    for path, message in ((fifo, "is not a regular file"), (link, "is not a regular file"),
                          (Path("/dev/zero"), "must end in .yaml, .yml or .toml"), (big, "is larger than 1024 KiB"),
                          (write(tmp_path, "recipe: m:f\n\xff", "latin.yaml"), "recipe: m:f")):
        if path.name == "latin.yaml":
            path.write_bytes(b"recipe: m:f\n\xff\n")
            message = "not UTF-8 text"
        result = CliRunner().invoke(cli, ["record", str(path), "-o", str(tmp_path / "t.trace")])
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr


def test_toml_dates_are_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params.when is a date"):
        load_config(write(tmp_path, 'recipe = "m:f"\n[params]\nwhen = 2024-01-02\n', "c.toml"))
