"""The step loop of tf.compat.v1 graph runs: one session.run per step, everything fetched with it."""

from __future__ import annotations

import math
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import RunFailed
from repro_audit.audit.recipe import Recipe
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.common.collector import CollectorPause
from repro_audit.probes.common.term_attribution import single_term_attribution
from repro_audit.probes.tf.capture import Capture
from repro_audit.probes.tf.environment import tf_environment
from repro_audit.probes.tf.graph_mode import GraphProgram
from repro_audit.probes.tf.health import step_health
from repro_audit.probes.tf.nan_provenance import origins_from
from repro_audit.probes.tf.random_draws import DrawLedger
from repro_audit.probes.tf.recorder import keep_values
from repro_audit.probes.tf.step_record import assemble, batch_record, kept_values, nonfinite_parameters

GRAPH_ACTIVATIONS_NOTE = "graph mode: activation statistics only for the float tensors extras['module_outputs'] names"


class GraphRecording:
    """A tf.compat.v1 graph run being recorded: one session.run per `step`, everything fetched with it."""

    def __init__(self, config: RunConfig, writer: TraceWriter, recipe: Recipe, capture: Capture) -> None:
        if config.interventions:
            raise RunFailed("--verify is not available for tf.compat.v1 graph mode: run the model eagerly or "
                            "in a tf.function to verify its mechanisms")
        self.config, self.writer, self.recipe = config, writer, recipe
        self.program = program = GraphProgram(recipe, capture, weight_of=config.weight_for, spec=config.recipe,
                                              health=bool(config.capture.get("health", True)))
        self._context = program.graph.as_default()
        self._context.__enter__()
        writer.write_json(fmt.ENVIRONMENT, tf_environment(recipe_dir=config.config_dir))
        writer.write_json(fmt.INITIALISATION, program.initialise())
        self.structure: dict[str, Any] = {"modules": program.tree.structure(), "graph_steps": [], "mode": "graph"}
        writer.write_json(fmt.STRUCTURE, self.structure)
        self.notes_once = []
        if program.graph.seed is None:
            self.notes_once.append("the graph has no graph-level seed: its random ops are seeded nondeterministically")
        if not recipe.extras.get("module_outputs"):
            self.notes_once.append("graph mode: layer outputs are recorded only for extras['module_outputs']")
        if config.capture.get("values", "none") != "none":
            writer.write_values(0, {f"initial/{key.split('/', 1)[1]}": value for key, value in program.initial.items()
                                    if key.startswith(("parameters/", "buffers/"))})
        self.before = dict(program.initial)
        self.params = [t.name for t in program.tree.parameters()]
        self.draws = DrawLedger()
        self.labels = program.labels()
        self.nonfinite_before = False
        self.collector = CollectorPause()

    def step(self, step: int, batch: Any) -> None:
        with self.collector.held():  # see probes/common/collector
            self._step(step, batch)

    def _step(self, step: int, batch: Any) -> None:
        config, program, writer = self.config, self.program, self.writer
        batch_summary, batch_values = batch_record(batch)
        result = program.run(batch)
        after = program.state_values(result.values)
        record = assemble(step, batch=batch_summary, summaries=result.summaries, values=result.values,
                          term_names=program.term_names, weights=program.weights, parameter_names=self.params,
                          optimizer=program.optimizer_view)
        record["notes"].extend(self.notes_once)
        record["random_draws"] = []
        if config.capture.get("random_draws", True):
            ops = [(op, self.labels.module.get(op._id), self.labels.phase.get(op._id, "forward"), count)
                   for op, count in zip(program.random_ops, result.random_counts)]
            record["random_draws"] = self.draws.stateful_entries(ops, start_index=0)
        record["graph"] = None
        if config.capture.get("graph", True):
            graph = program.graph_record(step)
            record["graph"] = {"digest": graph["digest"], "ops": len(graph["ops"]), "stored": step == 1}
            if step == 1:
                writer.write_graph(step, graph)
                self.structure["graph_steps"].append(step)
                writer.write_json(fmt.STRUCTURE, self.structure)
        nonfinite = nonfinite_parameters(result.summaries, "gradients/")
        outbreak = bool(nonfinite) and not self.nonfinite_before
        self.nonfinite_before = bool(nonfinite)
        replay = {"batch": batch, "random_values": result.random_values, "before": self.before, "after": after}
        record["nan_provenance"] = None
        if outbreak and config.capture.get("nan_provenance", True):
            keys, matrices = program.nonfinite_fetches()
            stats = {}
            for group, matrix in zip(keys, program.replay(matrices, **replay)):
                stats.update({key: tuple(int(n) for n in row) for key, row in zip(group, matrix.tolist())})
            record["nan_provenance"] = {
                "origins": origins_from(self.labels, stats, program.weights),
                "nonfinite_parameters": nonfinite_parameters(result.summaries, "parameters/"),
                "nonfinite_gradients": nonfinite}
        record["term_attribution"] = None
        if config.capture.get("term_attribution", True) and (step == 1 or outbreak):
            [term, *others] = program.term_names  # one term: its gradients are the step's (no replay)
            attribution = None if others else single_term_attribution(term, program.weights[term], self.params,
                                                                       result.summaries)
            if attribution is None:
                matrix = program.replay(program.attribution_fetch(), **replay)
                attribution = _attribution(matrix, program, self.params)
            record["term_attribution"] = attribution
        record["values"] = None
        if keep_values(config, step):
            record["values"] = writer.write_values(step, kept_values(step, result.values, batch_values))
        if config.capture.get("health", True):
            tree = program.tree
            record["health"] = step_health(
                step=step, parameters=tree.parameters(), module_types={e.path: e.type for e in tree.modules},
                summaries=result.summaries, outputs=program.activations, counts=result.activation_counts,
                num_classes=self.recipe.extras.get("num_classes"),
                loss_terms={name: term["value"] for name, term in record["loss_terms"].items()},
                notes=[] if program.activations else [GRAPH_ACTIVATIONS_NOTE])
        writer.append_step(record)
        self.before = after

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.program.close()


def _attribution(matrix: Any, program: GraphProgram, params: list[str]) -> dict[str, Any]:
    attribution = {}
    for term, rows in zip(program.term_names, matrix.tolist()):
        entry: dict[str, Any] = {"weight": program.weights[term], "nonfinite": {}, "nonzero": {}, "norm": {}}
        for name, (nonfinite, nonzero, norm) in zip(params, rows):
            if nonfinite < 0:  # no gradient from this term
                continue
            if nonfinite:
                entry["nonfinite"][name] = int(nonfinite)
            if nonzero:
                entry["nonzero"][name] = int(nonzero)
            entry["norm"][name] = norm if math.isfinite(norm) else None
        entry["params_nonfinite"] = len(entry["nonfinite"])
        entry["params_nonzero"] = len(entry["nonzero"])
        attribution[term] = entry
    return attribution
