"""The TensorFlow side of every probe. Imported only inside a run's subprocess, never by the CLI or differ.

Three ways a TF recipe can run (the recipe chooses with `Recipe.extras["mode"]`): `eager`, `function`
(one `tf.function` per step, the default for Keras models) and `graph` (a `tf.compat.v1` graph and
session). What each mode records, and its limits: docs/tensorflow.md.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.errors import FrameworkMissing

INSTALL_HINT = "TensorFlow is not installed: pip install 'repro-audit[tensorflow]'"


def require_tensorflow() -> Any:
    """Import TensorFlow where it is first needed; a missing install is the user's error, with the fix."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise FrameworkMissing(INSTALL_HINT) from exc
    return tf


def require_keras() -> Any:
    try:
        import keras
    except ImportError as exc:
        raise FrameworkMissing("Keras is not installed: pip install 'repro-audit[tensorflow]'") from exc
    return keras
