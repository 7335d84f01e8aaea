"""A few JSON types to say what a field of a trace file must be: `Fields`, `ListOf`, `MapOf`, scalars.

Small on purpose, and fast on what `json` returns (exact dict, list, str, int, float, bool and None): a
step line of the fixture Transformer holds hundreds of tensor summaries and is checked each time it is
read. `check` raises `Invalid` with the path of the field that is wrong.
"""

from __future__ import annotations

from typing import Any

INT64 = 1 << 63  # integers a probe writes fit in 64 bits; larger ones overflow float arithmetic downstream
MAX_DEPTH = 32  # nesting below a field of any shape (config, environment): recursive readers stay safe
MISSING = "present"
_ABSENT = object()


class Invalid(Exception):
    """A value of the wrong type; `path` is filled in, innermost key first, as the error unwinds."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.path: list[str | int] = []

    def where(self) -> str:
        parts = [f"[{key}]" if isinstance(key, int) else (f".{key}" if key.isidentifier() else f"[{key!r}]")
                 for key in reversed(self.path)]
        return "".join(parts).lstrip(".") or "the document"

    def describe(self) -> str:
        if self.expected == MISSING:
            return f"{self.where()} is missing"
        shown = repr(self.value)
        shown = shown if len(shown) <= 60 else shown[:60] + "..."
        return f"{self.where()} must be {self.expected}, not {shown}"


class Schema:
    """A JSON type; `nullable` also admits null. `check` is one call per value: it runs for every field of
    every tensor summary a trace holds."""

    expected = "a value"

    def __init__(self, *, nullable: bool = False) -> None:
        self.nullable = nullable

    def check(self, value: Any) -> None:
        raise NotImplementedError

    def fail(self, value: Any) -> Invalid:
        return Invalid(self.expected + (" or null" if self.nullable else ""), value)


class Str(Schema):
    expected = "a string"

    def check(self, value: Any) -> None:
        if type(value) is not str and (value is not None or not self.nullable):
            raise self.fail(value)


class Bool(Schema):
    expected = "true or false"

    def check(self, value: Any) -> None:
        if type(value) is not bool and (value is not None or not self.nullable):
            raise self.fail(value)


class Int(Schema):
    def __init__(self, *, nullable: bool = False, minimum: int = -INT64) -> None:
        super().__init__(nullable=nullable)
        self.minimum = minimum
        self.expected = "an integer" if minimum == -INT64 else f"an integer >= {minimum}"

    def check(self, value: Any) -> None:
        if type(value) is int:
            if not self.minimum <= value < INT64:
                raise self.fail(value)
        elif value is not None or not self.nullable:
            raise self.fail(value)


class Num(Schema):
    """A float (NaN and Infinity included: a trace keeps them) or a 64-bit integer."""

    expected = "a number"

    def check(self, value: Any) -> None:
        kind = type(value)
        if kind is float:
            return
        if kind is int:
            if not -INT64 <= value < INT64:
                raise self.fail(value)
        elif value is not None or not self.nullable:
            raise self.fail(value)


class AnyJSON(Schema):
    """Any JSON value (a config, a determinism flag), nested at most MAX_DEPTH deep."""

    expected = f"a value nested at most {MAX_DEPTH} deep"

    def check(self, value: Any) -> None:
        if (type(value) is dict or type(value) is list) and not nested_within(value, MAX_DEPTH):
            raise Invalid(self.expected, "...")


class Opaque(Schema):
    """A value no reader recurses into or relies on the type of (it is only indexed, if at all)."""

    def check(self, value: Any) -> None:
        pass


def nested_within(value: Any, depth: int) -> bool:
    """Whether the lists and objects in `value` nest at most `depth` deep (recursing at most that deep)."""
    if type(value) is not dict and type(value) is not list:
        return True
    if depth == 0:
        return False
    for item in value.values() if type(value) is dict else value:
        if (type(item) is dict or type(item) is list) and not nested_within(item, depth - 1):
            return False
    return True


class ListOf(Schema):
    def __init__(self, item: Schema, *, nullable: bool = False) -> None:
        super().__init__(nullable=nullable)
        self.item = item
        self.expected = "a list"

    def check(self, value: Any) -> None:
        if type(value) is not list:
            if value is None and self.nullable:
                return
            raise self.fail(value)
        check = self.item.check
        for index, item in enumerate(value):
            try:
                check(item)
            except Invalid as invalid:
                invalid.path.append(index)
                raise


class MapOf(Schema):
    """An object used as a mapping: any keys, every value of one type."""

    expected = "an object"

    def __init__(self, item: Schema, *, nullable: bool = False) -> None:
        super().__init__(nullable=nullable)
        self.item = item

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            if value is None and self.nullable:
                return
            raise self.fail(value)
        check = self.item.check
        for key, item in value.items():
            try:
                check(item)
            except Invalid as invalid:
                invalid.path.append(key)
                raise


class Fields(Schema):
    """An object with known fields; `required` must be present, others may be absent. Unknown fields pass,
    or must be `rest` where a reader walks every field (the environment sections the differ compares)."""

    expected = "an object"

    def __init__(self, fields: dict[str, Schema], *, required: tuple[str, ...] = (), nullable: bool = False,
                 rest: Schema | None = None) -> None:
        super().__init__(nullable=nullable)
        self.fields = tuple(fields.items())
        self.required = required
        self.rest = MapOf(rest) if rest is not None else None
        self.names = frozenset(fields)

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            if value is None and self.nullable:
                return
            raise self.fail(value)
        for key in self.required:
            if key not in value:
                invalid = Invalid(MISSING, None)
                invalid.path.append(key)
                raise invalid
        get = value.get
        for key, schema in self.fields:
            item = get(key, _ABSENT)
            if item is not _ABSENT:
                try:
                    schema.check(item)
                except Invalid as invalid:
                    invalid.path.append(key)
                    raise
        if self.rest is not None:
            self.rest.check({key: item for key, item in value.items() if key not in self.names})
