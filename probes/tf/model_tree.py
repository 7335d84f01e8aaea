"""The layer tree of a Keras model or tf.Module, with stable names for every variable.

Paths come from attribute names (`decoder.layers.0.cross_attn.q.kernel`), as torch's `named_modules` gives
them, so they do not shift when Keras's auto-generated layer names do (`dense_1` -> `dense_2`). A layer
that no public attribute reaches (a Sequential's or Functional's layers) is named by its Keras name, so
there the shift is visible; `keras_path`, the creation order, shapes and types let a differ match renames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from repro_audit.probes.tf.tensors import dtype_name


@dataclass
class TrackedVariable:
    """One variable with its trace name; `variable` is what the user holds (Keras or TF variable)."""

    name: str
    kind: str  # "parameter" (trainable) or "buffer"
    module: str
    variable: Any
    keras_path: str | None = None

    @property
    def tf_variable(self) -> Any:
        """The tf.Variable underneath a Keras 3 variable (the object tapes, creators and sessions see)."""
        inner = getattr(self.variable, "_value", None)
        return inner if inner is not None and not isinstance(self.variable, _tf_variable_type()) else self.variable


@dataclass
class ModuleEntry:
    path: str
    obj: Any
    type: str
    name: str | None
    variables: list[TrackedVariable] = field(default_factory=list)


def _tf_variable_type() -> type:
    import tensorflow as tf

    return tf.Variable


def _is_layer(obj: Any) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(obj, keras.layers.Layer)


def _is_module(obj: Any) -> bool:
    import tensorflow as tf

    return isinstance(obj, tf.Module) or _is_layer(obj)


def _is_variable(obj: Any) -> bool:
    import tensorflow as tf

    if isinstance(obj, tf.Variable):
        return True
    try:
        import keras
    except ImportError:
        return False
    return isinstance(obj, keras.Variable)


def _is_seed_generator(obj: Any) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(obj, keras.random.SeedGenerator)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class ModelTree:
    """Modules in registration order and every variable reachable from the model, each once."""

    def __init__(self, model: Any) -> None:
        self.modules: list[ModuleEntry] = []
        self.variables: list[TrackedVariable] = []
        self.seed_generators: dict[int, str] = {}  # id(SeedGenerator) -> its path
        self._seen: set[int] = set()
        self._seen_variables: set[int] = set()
        self._visit(model, "")

    # -- lookups ---------------------------------------------------------------------------------------

    def path_of(self) -> dict[int, str]:
        return {id(entry.obj): entry.path for entry in self.modules}

    def by_id(self) -> dict[int, TrackedVariable]:
        found = {}
        for tracked in self.variables:
            found[id(tracked.variable)] = tracked
            found[id(tracked.tf_variable)] = tracked
        return found

    def parameters(self) -> list[TrackedVariable]:
        return [v for v in self.variables if v.kind == "parameter"]

    def structure(self) -> list[dict[str, Any]]:
        """structure.json's `modules`: path, type, Keras name, parameters and buffers of each module."""
        records = []
        for entry in self.modules:
            records.append({
                "path": entry.path,
                "type": entry.type,
                "name": entry.name,
                "parameters": [_describe(v) for v in entry.variables if v.kind == "parameter"],
                "buffers": [_describe(v) for v in entry.variables if v.kind == "buffer"],
            })
        return records

    # -- walking ---------------------------------------------------------------------------------------

    def _visit(self, obj: Any, path: str) -> None:
        if id(obj) in self._seen:
            return
        if _is_module(obj) or path == "":
            self._seen.add(id(obj))
            entry = ModuleEntry(path, obj, type(obj).__name__, getattr(obj, "name", None))
            self.modules.append(entry)
            if _is_variable(obj):  # a bare variable as the model
                self._add_variable(entry, obj, _short_name(obj))
                return
            for name, child in self._children(obj):
                self._visit_child(entry, child, _join(path, name), name)

    def _visit_child(self, entry: ModuleEntry, child: Any, path: str, name: str) -> None:
        if _is_variable(child):
            self._add_variable(entry, child, name)
        elif _is_seed_generator(child):
            self.seed_generators.setdefault(id(child), path)
            state = getattr(child, "state", None)
            if state is not None:
                self._add_variable(entry, state, f"{name}.state")
        elif _is_module(child):
            self._visit(child, path)
        elif isinstance(child, dict):
            for key, item in child.items():
                self._visit_child(entry, item, f"{path}.{key}", f"{name}.{key}")
        elif isinstance(child, (list, tuple)):
            for index, item in enumerate(child):
                self._visit_child(entry, item, f"{path}.{index}", f"{name}.{index}")

    def _children(self, obj: Any) -> Iterator[tuple[str, Any]]:
        """Own variables first (as torch lists a module's own parameters), then public attributes in
        assignment order, then what Keras tracks that no public attribute reached."""
        if isinstance(obj, dict):
            yield from ((str(k), v) for k, v in obj.items())
            return
        if isinstance(obj, (list, tuple)):
            yield from ((str(i), v) for i, v in enumerate(obj))
            return
        attributes = dict(getattr(obj, "__dict__", {}))
        public = {id(v): n for n, v in attributes.items() if not n.startswith("_")}
        if _is_layer(obj):
            # Keras's own order (Dense: kernel, bias), under the attribute name when one holds it.
            for variable in list(getattr(obj, "_trainable_variables", [])) + list(
                    getattr(obj, "_non_trainable_variables", [])):
                yield public.get(id(variable), _short_name(variable)), variable
        for name, value in attributes.items():
            if not name.startswith("_"):
                yield name, value
        if _is_layer(obj):
            yield from self._keras_leftovers(obj, attributes)

    def _keras_leftovers(self, layer: Any, attributes: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        for generator in getattr(layer, "_seed_generators", []):
            attribute = next((n for n, v in attributes.items() if v is generator), None)
            yield (attribute.lstrip("_") if attribute else "seed_generator"), generator
        # Sublayers no public attribute holds: named by their (auto-generated) Keras names.
        flatten = getattr(layer, "_flatten_layers", None)
        if flatten is not None:
            for child in flatten(include_self=False, recursive=False):
                if id(child) not in self._seen:
                    yield child.name, child

    def _add_variable(self, entry: ModuleEntry, variable: Any, name: str) -> None:
        if id(variable) in self._seen_variables:
            return
        self._seen_variables.add(id(variable))
        full = _join(entry.path, name)
        taken = {v.name for v in self.variables}
        suffix = 1
        while full in taken:
            full = _join(entry.path, f"{name}_{suffix}")
            suffix += 1
        trainable = bool(getattr(variable, "trainable", True))
        tracked = TrackedVariable(full, "parameter" if trainable else "buffer", entry.path, variable,
                                  keras_path=getattr(variable, "path", None) if not _is_tf_variable(variable)
                                  else None)
        entry.variables.append(tracked)
        self.variables.append(tracked)


def _is_tf_variable(obj: Any) -> bool:
    return isinstance(obj, _tf_variable_type())


def _short_name(variable: Any) -> str:
    name = str(getattr(variable, "name", "variable"))
    return name.split("/")[-1].split(":")[0]


def _describe(tracked: TrackedVariable) -> dict[str, Any]:
    variable = tracked.variable
    record: dict[str, Any] = {"name": tracked.name, "shape": [int(n) for n in variable.shape],
                              "dtype": dtype_name(variable.dtype)}
    if tracked.kind == "parameter":
        record["requires_grad"] = True
    if tracked.keras_path:
        record["keras_path"] = tracked.keras_path
    return record
