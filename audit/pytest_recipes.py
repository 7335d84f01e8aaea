"""Recipes given to the assertions as callables: the 'module:function' name a fresh process imports.

Each run is a fresh process, so a recipe must be importable there by name; what cannot be (a lambda, a
nested function, a method, a partial, a function of __main__) is refused before any run starts, with the
fix in the message. Kept apart from audit/assertions.py, which only uses the two public functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

from repro_audit.audit.errors import ConfigError

RecipeSource = Union[str, Callable[..., Any]]  # noqa: UP007


def recipe_spec(recipe: RecipeSource) -> tuple[str, str | None]:
    """'module:function' for a recipe, and the folder a fresh process imports its module from.

    Each run is a fresh process, so a callable must be importable there by name: a module-level function
    of an importable module. Lambdas, nested functions and methods are refused with the fix in the message.
    """
    if isinstance(recipe, str):
        if recipe.count(":") != 1 or not all(recipe.split(":")):
            raise ConfigError(f"recipe must be 'module:function', got {recipe!r}")
        return recipe, None
    if not callable(recipe):
        raise TypeError(f"recipe must be a callable or a 'module:function' string, got {type(recipe).__name__}")
    module_name = getattr(recipe, "__module__", None)
    qualname = getattr(recipe, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        raise ConfigError(f"recipe {recipe!r} has no module-level name (a functools.partial or a callable "
                          "object?): each run is a fresh process, so pass a module-level function or "
                          "'module:function'")
    where = f"{module_name}:{qualname}"
    if "<lambda>" in qualname or "<locals>" in qualname:
        kind = "a lambda" if "<lambda>" in qualname else "a function defined inside another function"
        raise ConfigError(f"recipe {where} is {kind}: each run is a fresh process that imports the recipe "
                          "by name, so define it at the top level of a module")
    if "." in qualname:
        raise ConfigError(f"recipe {where} is a method: define the recipe as a module-level function")
    module = sys.modules.get(module_name)
    if module_name == "__main__" or module is None or getattr(module, qualname, None) is not recipe:
        raise ConfigError(f"recipe {where} cannot be imported by that name in a fresh process: define it "
                          "at the top level of an importable module (not __main__, not redefined or wrapped)")
    return f"{module_name}:{qualname}", _import_root(module_name, getattr(module, "__file__", None))


def recipe_framework(recipes: Sequence[RecipeSource]) -> str:
    """'tensorflow' when the first recipe module we can see imports TensorFlow or Keras and not torch, else
    'torch': what the module imports says which framework builds its model, without building it here."""
    for recipe in recipes:
        module_name = recipe.split(":")[0] if isinstance(recipe, str) else getattr(recipe, "__module__", None)
        module = sys.modules.get(str(module_name))
        if module is None:
            continue
        roots = {_root_package(value) for value in vars(module).values()}
        if "torch" in roots:
            return "torch"
        if roots & {"tensorflow", "keras", "tf_keras"}:
            return "tensorflow"
    return "torch"


def _root_package(value: Any) -> str:
    """The top-level package a module, class or function of a module's namespace comes from."""
    name = value.__name__ if isinstance(value, type(sys)) else getattr(value, "__module__", None)
    return name.split(".")[0] if isinstance(name, str) else ""


def _import_root(module_name: str, module_file: str | None) -> str | None:
    """The sys.path entry that makes `module_name` importable from `module_file`."""
    if not module_file:
        return None
    path = Path(module_file).resolve()
    levels = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    root = path.parent
    for _ in range(levels):
        root = root.parent
    return str(root)
