"""Read a config file without trusting it: a regular file of at most 1 MiB, YAML through a safe loader
that refuses alias bombs and self-references, or TOML.

A FIFO or /dev/zero given as a config would block or be read forever, and a "billion laughs" document of a
few hundred bytes expands to more nodes than memory holds: each is one ConfigError line instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from repro_audit.audit.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_NODES = 100_000  # nodes after expanding every alias; real configs have a few hundred


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that checks each document's size with its aliases expanded before constructing it."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a .yaml, .yml or .toml config file holds; every problem is one ConfigError line."""
    suffix = path.suffix.lower()
    if suffix == ".config":
        # A RETURNN config file itself: RETURNN's engine runs it as it stands (docs/returnn.md).
        _read_text(path)
        return {"framework": "returnn", "returnn_config": path.name}
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"config {path} must end in .yaml, .yml or .toml (or be a RETURNN .config file)")
    text = _read_text(path)
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = load_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"malformed config {path}: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"malformed config {path}: nested too deeply") from exc
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, ValueError of a huge int
        raise ConfigError(f"malformed config {path}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def load_yaml(text: str) -> Any:
    """Safe YAML, bounded: raises ConfigError for an alias bomb or a recursive alias, yaml.YAMLError else."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_text(path: Path) -> str:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; only then do we know what the path is.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"config {path} is not a regular file")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from exc


def _check_expansion(root: Any) -> None:
    """Count the nodes of the document as if every alias were copied out, without copying anything: each
    distinct node's expanded size is computed once (iteratively: deep nesting must not hit the recursion
    limit), and a node met again on its own path is a recursive alias."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_YAML_NODES:
                raise ConfigError(f"its aliases expand to more than {MAX_YAML_NODES} nodes")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError("an alias refers to the node that contains it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
