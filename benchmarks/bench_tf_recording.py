"""TensorFlow recording overhead on the fixture Transformer, as ratios against a plain step in the same process.

    python benchmarks/bench_tf_recording.py [--rounds 40] [--small]

The model is the fixture Transformer at the size bench_torch_recording.py uses (~5M parameters), or with
`--small` the test-sized fixture itself, whose 10 ms step makes the per-tensor work of recording (~490
summaries) weigh more than it does on any model worth training.

Variants, interleaved round by round on the same model so machine noise hits all of them alike (the
reported ratio is the median over rounds of variant / plain):
- plain: one tf.function step (forward, weighted total, GradientTape gradients, Adam update), traced
  without AutoGraph as Keras's own train step is;
- recorded graph step: the recorder's tf.function step, which also returns gradients, parameters after
  the update, optimizer state and every layer output as extra graph outputs, plus reading those outputs
  (statistics and hashes of ~490 tensors);
- full recorded step: the above plus the step record (random draws, graph digest) and its write to
  steps.jsonl with fsync;
- tf.debugging.enable_check_numerics on an eager step, against the same eager step without it. It cannot
  run on the real fixture at all (it stops at the -inf of the attention mask, a false alarm), so it is
  timed on the fixture with masks set to -1e9.
No timed assertion anywhere: this prints numbers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "configs" / "tf"
LARGE = {"vocab": 1000, "d_model": 256, "heads": 4, "enc_layers": 3, "dec_layers": 3, "d_ff": 1024,
         "batch_size": 16, "max_len": 32, "num_batches": 400}
SMALL = {"num_batches": 400}
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # check_numerics's false alarm would print whole tensors


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def plain_step(recipe: Any, weight_of: Callable[[str], float]) -> Callable[[Any], Any]:
    import tensorflow as tf

    variables = list(recipe.model.trainable_variables)

    def step(batch: Any) -> Any:
        with tf.GradientTape() as tape:
            terms = recipe.loss(recipe.model, batch, step=2)
            total = tf.add_n([tf.reshape(value, []) * weight_of(name) for name, value in terms.items()])
        grads = tape.gradient(total, variables)
        recipe.optimizer.apply_gradients(zip(grads, variables))
        return total

    return tf.function(step, autograph=False)


def eager_step(recipe: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    variables = list(recipe.model.trainable_variables)

    def step(batch: Any) -> Any:
        with tf.GradientTape() as tape:
            terms = recipe.loss(recipe.model, batch, step=2)
            total = tf.add_n([tf.reshape(value, []) for value in terms.values()])
        recipe.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
        return total

    return step


def recording_ratios(rounds: int, params: dict[str, Any]) -> dict[str, Any]:
    from repro_audit.audit.config import load_config
    from repro_audit.audit.trace import TraceWriter
    from repro_audit.probes.tf.recorder import open_recording

    config = load_config(FIXTURES / "baseline.yaml", steps=rounds + 2,
                         overrides=[f"params.{key}={value}" for key, value in params.items()])
    times: dict[str, list[float]] = {"plain": [], "recorded graph step": [], "full recorded step": []}
    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(Path(folder) / "bench.trace", framework="tensorflow", config=config.to_dict(),
                             label="bench")
        with open_recording(config, writer) as recording:
            batches = iter(recording.recipe.batches)
            recording.step(1, next(batches))  # traces the recorded step
            program = recording.program
            function, _ = program._function_for(2, whole_outputs=False)  # the step's graph as step 1 traced it
            plain = plain_step(recording.recipe, config.weight_for)
            batch = next(batches)
            plain(batch)

            def graph_step() -> None:
                program.run(2, batch, keep_values=False)  # the tf.function step and its summaries

            if program.mode != "function":
                raise SystemExit(f"the fixture runs in {program.mode} mode; this benchmark times tf.function steps")
            traced = function.experimental_get_tracing_count()
            for step in range(2, rounds + 2):
                times["plain"].append(timed(lambda: plain(batch)))
                times["recorded graph step"].append(timed(graph_step))
                times["full recorded step"].append(timed(lambda: recording.step(step, batch)))
            # The recorded step must have stayed one traced graph: no retrace, no eager fallback.
            retraces = function.experimental_get_tracing_count() - traced
            if retraces or len(program._functions) != 1:
                raise SystemExit(f"the recorded step was traced again {retraces} times while timed")
            meta = program.metas[int(function(batch)["trace_id"])]
            tensors = len(meta.layout.keys) + len(meta.in_graph[0] if meta.in_graph else [])
        writer.finish(complete=True)
    ratios = {name: statistics.median(t / p for t, p in zip(values, times["plain"]))
              for name, values in times.items() if name != "plain"}
    return {"plain_ms": 1000 * statistics.median(times["plain"]), "ratios": ratios, "tensors": tensors,
            "retraces": retraces,
            "medians_ms": {name: 1000 * statistics.median(values) for name, values in times.items()}}


def check_numerics(rounds: int, params: dict[str, Any]) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(FIXTURES))
    recipe_module = importlib.import_module("tf_nmt_recipe")
    keras.utils.set_random_seed(0)
    real = recipe_module.build({**params, "mode": "eager"})
    keras.utils.set_random_seed(0)
    finite = recipe_module.build({**params, "mode": "eager", "mask_value": -1e9})
    batch = next(iter(finite.batches))
    step = eager_step(finite)
    step(batch)
    without, with_checks = [], []
    tf.debugging.enable_check_numerics()
    try:
        false_alarm = "none"
        try:
            eager_step(real)(batch)
        except tf.errors.InvalidArgumentError as exc:
            false_alarm = next((line.strip(" !") for line in str(exc).splitlines() if "Detected" in line),
                               str(exc).splitlines()[0])
        step(batch)
        for _ in range(max(3, rounds // 4)):
            tf.debugging.disable_check_numerics()
            without.append(timed(lambda: step(batch)))
            tf.debugging.enable_check_numerics()
            with_checks.append(timed(lambda: step(batch)))
    finally:
        tf.debugging.disable_check_numerics()
    return {"ratio": statistics.median(w / p for w, p in zip(with_checks, without)),
            "eager_ms": 1000 * statistics.median(without), "false_alarm": false_alarm}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--small", action="store_true", help="the test-sized fixture instead of ~5M parameters")
    args = parser.parse_args(argv)
    params = SMALL if args.small else LARGE
    recorded = recording_ratios(args.rounds, params)
    print(f"plain tf.function step: {recorded['plain_ms']:.2f} ms (median of {args.rounds}); recorded step "
          f"retraced {recorded['retraces']} times while timed (stays one tf.function)")
    for name, ratio in recorded["ratios"].items():
        print(f"{name:>24}: {ratio:5.2f}x  ({recorded['medians_ms'][name]:.2f} ms, {recorded['tensors']} tensors "
              f"summarised per step)")
    numerics = check_numerics(args.rounds, params)
    print(f"{'enable_check_numerics':>24}: {numerics['ratio']:5.2f}x  on an eager step of {numerics['eager_ms']:.1f} ms "
          f"(masks -1e9)")
    print(f"{'':>24}  on the real fixture it stops at the -inf mask: {numerics['false_alarm']}")


if __name__ == "__main__":
    main()
