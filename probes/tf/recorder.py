"""Record a config's run with TensorFlow: seed, build under capture, run the steps, write the trace.

Modes, chosen by the recipe in `Recipe.extras["mode"]` (default `eager`):
- `eager`: the step runs op by op under a GradientTape. The op graph for the record is traced (not run)
  at step 1 and whenever the trace key or the loss terms change.
- `function`: the whole step (forward, terms, gradients, update, statistics) is one tf.function. A loss
  without `step` is traced once (again only for new input shapes). A loss that takes `step` gets a Python
  int and is traced once per value of `extras["trace_key"](step)` (default: every step), seeing the first
  step of its key; with `extras["step_as_tensor"] = True` it gets a scalar int64 tensor and one trace.
- `graph`: tf.compat.v1. `extras["graph"]` is the tf.Graph the recipe built its model in (make it with
  `repro_audit.probes.tf.graph_mode.seeded_graph()` or set `graph.seed`: op seeds derive from it); `extras["inputs"]`
  maps input names to placeholders; `loss(model, inputs)` is called once inside the graph and returns term
  tensors; `batches` yields feed dicts keyed by input name (or tensor name); the optimizer is a
  tf.compat.v1.train optimizer; `extras["module_outputs"]` optionally names tensors to record as layer
  outputs; `extras["session_config"]` is passed to the Session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import as_recipe, call_recipe, resolve_recipe, step_batches
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.tf import require_tensorflow

MODES = ("eager", "function", "graph")


def record_run(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None]) -> None:
    """The runner's loop for TensorFlow: the recipe builds, repro-audit trains and records."""
    with open_recording(config, writer) as recording:
        batches = step_batches(recording.recipe.batches, steps=config.steps, spec=config.recipe)
        for step, batch in enumerate(batches, start=1):
            recording.step(step, batch)
            progress(step)


@contextmanager
def open_recording(config: RunConfig, writer: TraceWriter) -> Iterator[Any]:
    """Seed, build the recipe under capture and set up its mode; yields an object with `recipe` and
    `step(step, batch)`. The environment is written again on the way out, with what training imported."""
    require_tensorflow()
    from repro_audit.probes.tf.capture import Capture
    from repro_audit.probes.tf.environment import tf_environment
    from repro_audit.probes.tf.initialisation import CreationLedger

    _seed(config.seed)
    build = resolve_recipe(config.recipe, config_dir=Path(config.config_dir) if config.config_dir else None)
    capture = Capture()
    capture.install()
    recording: Any = None
    try:
        ledger = CreationLedger(capture)
        capture.phase = "build"
        capture.keep_outputs = False
        capture.active = True
        try:
            with ledger.scope():
                returned = call_recipe(build, config.params, spec=config.recipe,
                                       data_order_seed=config.data_order_seed)
        finally:
            capture.active = False
        recipe = as_recipe(returned, spec=config.recipe)
        mode = recipe.extras.get("mode", "eager")
        if mode not in MODES:
            raise RunFailed(f"recipe {config.recipe}: extras['mode'] must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "graph":
            from repro_audit.probes.tf.graph_loop import GraphRecording

            recording = GraphRecording(config, writer, recipe, capture)
        else:
            from repro_audit.probes.tf.tf2_loop import Tf2Recording

            recording = Tf2Recording(config, writer, recipe, capture, ledger, mode=mode)
        yield recording
    finally:
        if recording is not None:
            recording.close()
        capture.uninstall()
    writer.write_json(fmt.ENVIRONMENT, tf_environment(recipe_dir=config.config_dir))


def _seed(seed: int) -> None:
    import tensorflow as tf

    try:
        import keras
    except ImportError:
        tf.random.set_seed(seed)
        return
    # A fresh Keras state (auto-name counters, the global SeedGenerator), as a new process would have.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)


def keep_values(config: RunConfig, step: int) -> bool:
    mode = config.capture.get("values", "none")
    return mode == "all" or (mode == "first" and step == 1)
