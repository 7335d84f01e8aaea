"""The step loop of eager and tf.function runs: run, assemble the record, diagnose where needed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import Recipe
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.common.collector import CollectorPause
from repro_audit.probes.common.term_attribution import single_term_attribution
from repro_audit.probes.tf.capture import Capture
from repro_audit.probes.tf.environment import tf_environment
from repro_audit.probes.tf.health import step_health
from repro_audit.probes.tf.initialisation import CreationLedger, initialisation_record
from repro_audit.probes.tf.model_tree import ModelTree
from repro_audit.probes.tf.nan_provenance import attribute_terms, find_origins
from repro_audit.probes.tf.optimizer_state import is_keras_optimizer
from repro_audit.probes.tf.random_draws import DrawLedger
from repro_audit.probes.tf.recorder import keep_values
from repro_audit.probes.tf.interventions import TfInterventions, generator_states
from repro_audit.probes.tf.step_program import StepProgram, TraceMeta
from repro_audit.probes.tf.step_record import assemble, batch_record, kept_values, nonfinite_parameters


class Tf2Recording:
    """An eager or tf.function run being recorded: set up from the built recipe, then one `step` per batch."""

    def __init__(self, config: RunConfig, writer: TraceWriter, recipe: Recipe, capture: Capture,
                 ledger: CreationLedger, *, mode: str) -> None:
        spec = config.recipe
        tree = ModelTree(recipe.model)
        if not tree.parameters():
            raise RunFailed(f"recipe {spec}: the model has no trainable variables after build; build it in the "
                            f"recipe (call it once on a batch) so its initialisation can be recorded")
        if not is_keras_optimizer(recipe.optimizer):
            raise RunFailed(f"recipe {spec}: {mode} mode needs a Keras optimizer, got "
                            f"{type(recipe.optimizer).__name__}")
        capture.layer_paths = tree.path_of()
        capture.generator_names = dict(tree.seed_generators)
        if not recipe.optimizer.built:
            with ledger.scope():
                recipe.optimizer.build([p.variable for p in tree.parameters()])
        writer.write_json(fmt.ENVIRONMENT, tf_environment(recipe_dir=config.config_dir))
        writer.write_json(fmt.INITIALISATION, initialisation_record(tree, ledger, capture, seed=config.seed))
        self.structure: dict[str, Any] = {"modules": tree.structure(), "graph_steps": [], "mode": mode}
        writer.write_json(fmt.STRUCTURE, self.structure)
        self.config, self.writer, self.recipe, self.capture = config, writer, recipe, capture
        self.interventions = TfInterventions(config.interventions)
        self.interventions.load_initial_values(tree.variables)
        replays = bool(config.capture.get("nan_provenance", True) or config.capture.get("term_attribution", True))
        self.program = StepProgram(recipe, tree, capture, mode=mode, weight_of=config.weight_for,
                                   keep_module_outputs=bool(config.capture.get("module_outputs", True)), spec=spec,
                                   keep_pre_step_state=replays, health=bool(config.capture.get("health", True)),
                                   dropped_terms=self.interventions.dropped_terms)
        self.module_types = {entry.path: entry.type for entry in tree.modules}
        initial = self.program.snapshot()
        if config.capture.get("values", "none") != "none":
            # The generators' state after build too: `--verify` starts run B's training from run A's.
            writer.write_values(0, {**{f"initial/{t.name}": initial[_state_key(t)] for t in tree.variables},
                                    **generator_states()})
        self.interventions.set_generators()
        # The small state the next step starts from; the large state is in the program's shadows.
        self.before = {key: value for key, value in initial.items() if key not in self.program.shadowed()}
        self.draws = DrawLedger()
        self.previous_digest: str | None = None
        self.record_key: Any = None
        self.record_meta: TraceMeta | None = None
        self.nonfinite_before = False
        self.param_names = [p.name for p in self.program.params]
        self.collector = CollectorPause()

    def step(self, step: int, batch: Any) -> None:
        self.interventions.apply_hyperparameters(self.recipe.optimizer, step)
        batch = self.interventions.batch(step, batch)
        with self.collector.held():  # see probes/common/collector
            self.before = self._step(step, batch, self.before)
        if callable(self.recipe.lr_scheduler):
            self.recipe.lr_scheduler(step)

    def close(self) -> None:
        """Nothing to release: the variables belong to the recipe."""

    def _step(self, step: int, batch: Any, before: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        program, capture = self.program, self.config.capture
        batch_summary, batch_values = batch_record(batch)
        result = program.run(step, batch, keep_values=keep_values(self.config, step))
        meta = result.meta
        before = self._with_created_generators(before, result.values)
        record = assemble(step, batch=batch_summary, summaries=result.summaries, values=result.values,
                          term_names=meta.term_names, weights=meta.weights, parameter_names=self.param_names,
                          optimizer=program.optimizer_view)
        # Copies: the large state's outputs alias the variables and must be let go before the next update.
        shadowed = program.shadowed()
        after = {key: np.array(result.values[key]) for key, _ in program.state_variables()
                 if key in result.values and key not in shadowed}
        record["random_draws"] = self._draws(meta, result.values, before, record["notes"])
        self._graph(step, batch, meta, record)
        nonfinite = nonfinite_parameters(result.summaries, "gradients/")
        outbreak = bool(nonfinite) and not self.nonfinite_before
        self.nonfinite_before = bool(nonfinite)
        record["nan_provenance"] = None
        record["term_attribution"] = None
        replay_blocker = self._replay_blocker(meta)
        if outbreak and capture.get("nan_provenance", True):
            if replay_blocker:
                record["notes"].append(f"gradients turned non-finite; NaN provenance not captured: {replay_blocker}")
            else:
                origins = self._replay(before, record, "NaN provenance",
                                       lambda: find_origins(program, batch, step))
                if origins is not None:
                    record["nan_provenance"] = {"origins": origins, "nonfinite_parameters": nonfinite_parameters(
                        result.summaries, "parameters/"), "nonfinite_gradients": nonfinite}
        if capture.get("term_attribution", True) and (step == 1 or outbreak):
            attribution = self._read_off_attribution(meta, result.summaries)
            if attribution is None and replay_blocker:
                record["notes"].append(f"term attribution not captured: {replay_blocker}")
            elif attribution is None:
                attribution = self._replay(before, record, "term attribution",
                                           lambda: attribute_terms(program, batch, step))
            record["term_attribution"] = attribution
        if keep_values(self.config, step):
            record["values"] = self.writer.write_values(step, kept_values(step, result.values, batch_values))
        else:
            record["values"] = None
        if meta.missing_gradients:
            record["notes"].append(f"{len(meta.missing_gradients)} parameters got no gradient")
        if capture.get("health", True):
            record["health"] = step_health(
                step=step, parameters=program.params, module_types=self.module_types, summaries=result.summaries,
                outputs=meta.activations if program.keep_module_outputs else None,
                counts=result.activation_counts, num_classes=self.recipe.extras.get("num_classes"),
                loss_terms={name: term["value"] for name, term in record["loss_terms"].items()})
        self.writer.append_step(record)
        return after

    def _read_off_attribution(self, meta: TraceMeta, summaries: dict[str, dict[str, Any]]
                              ) -> dict[str, Any] | None:
        """A loss of one term (left in the total): its attribution from the step's own gradients, no replay."""
        [term, *others] = meta.term_names
        if others or term in self.program.dropped_terms:
            return None
        return single_term_attribution(term, meta.weights[term], self.param_names, summaries)

    def _with_created_generators(self, before: dict[str, np.ndarray], values: dict[str, np.ndarray]
                                 ) -> dict[str, np.ndarray]:
        """`before` with the state a generator created during the step started from (Keras's global one)."""
        keys = self.program.generator_keys()
        created = {keys[name]: state for name, state in self.capture.created_generator_states.items()
                   if name in keys and keys[name] not in before and keys[name] in values}
        if not created:
            return before
        return {**before, **{key: state.astype(values[key].dtype) for key, state in created.items()}}

    def _draws(self, meta: TraceMeta, values: dict[str, np.ndarray], before: dict[str, np.ndarray],
               notes: list[str]) -> list[dict[str, Any]]:
        if not self.config.capture.get("random_draws", True):
            return []
        keys = self.program.generator_keys()
        start_states = {name: before[key] for name, key in keys.items() if key in before}
        counts = {index: int(values[key]) for index, key in meta.dynamic_counts.items() if key in values}
        drawn = {index: values[key] for index, key in meta.drawn_states.items() if key in values}
        entries, problems = self.draws.entries(meta.random_calls, start_states=start_states, counts=counts,
                                               generator_keys=self.program.tree.seed_generators,
                                               drawn_states=drawn, trace=meta.trace_id)
        notes.extend(problems)
        unrecorded = meta.unrecorded_random_ops()
        if unrecorded:
            notes.append(f"stateful TF random ops not recorded as draws ({', '.join(unrecorded[:3])}): listed "
                         f"in the graph with their seeds")
        return entries

    def _graph(self, step: int, batch: Any, meta: TraceMeta, record: dict[str, Any]) -> None:
        if not self.config.capture.get("graph", True):
            record["graph"] = None
            return
        source = meta
        if self.program.mode == "eager":
            key = (self._trace_key(step), tuple(meta.term_names))
            if self.record_meta is None or key != self.record_key:
                try:
                    self.record_meta = self.program.trace_for_record(step, batch)
                except Exception as exc:  # an eager-only loss: record why, keep training
                    record["notes"].append(f"op graph not captured: tracing the step failed: "
                                           f"{type(exc).__name__}: {exc}".splitlines()[0])
                    self.record_meta, self.record_key = None, key
                    record["graph"] = None
                    return
                self.record_key = key
            source = self.record_meta
        graph = source.graph(step) if source is not None else None
        if graph is None:
            record["graph"] = None
            return
        stored = step == 1 or graph["digest"] != self.previous_digest
        if stored:
            self.writer.write_graph(step, graph)
            self.structure["graph_steps"].append(step)
            self.writer.write_json(fmt.STRUCTURE, self.structure)
        self.previous_digest = graph["digest"]
        record["graph"] = {"digest": graph["digest"], "ops": len(graph["ops"]), "stored": stored}

    def _trace_key(self, step: int) -> Any:
        extras = self.program.recipe.extras
        if not self.program.pass_step:
            return None
        return extras["trace_key"](step) if callable(extras.get("trace_key")) else step

    def _replay_blocker(self, meta: TraceMeta) -> str | None:
        if not self.program.keeps_pre_step_state:
            return "the state before the step was not kept"
        stateful = meta.stateful_random_ops() or (self.record_meta.stateful_random_ops() if self.record_meta else [])
        if stateful:
            return f"the step has stateful random ops ({stateful[0]}) that a replay would advance"
        return None

    def _replay(self, before: dict[str, np.ndarray], record: dict[str, Any], what: str, run: Callable[[], Any]
                ) -> Any:
        """`run` on the state the step started from (`before`: its small part), then back to the step's end."""
        try:
            with self.program.rewound(self.program.pre_step_state(before), self.program.snapshot()):
                return run()
        except Exception as exc:  # a probe that cannot capture records why instead of failing the run
            record["notes"].append(f"{what} not captured: {type(exc).__name__}: {exc}".splitlines()[0])
            return None


def _state_key(tracked: Any) -> str:
    return f"{'parameters' if tracked.kind == 'parameter' else 'buffers'}/{tracked.name}"
