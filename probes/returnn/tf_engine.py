"""RETURNN's TF net-dict engine (graph mode), recorded: its network, loss layers, updater and session.

RETURNN builds the network, the losses and the update op and runs its own session loop; the recorder
attaches where it meets them, in this worker process only:
- RETURNN's `wrap_tf_session` option wraps its session, so the step's own `session.run` also fetches what
  the trace needs (every loss layer's value, the gradients as RETURNN's updater computed them, the learning
  rate), and variables and optimizer slots are read right after the update;
- the updater's `_compute_gradients` hands back the gradients it computed (before RETURNN clips them);
- the Runner's fetches get the recorder's, and its data stops after the config's `steps` per epoch.
The step's random draws are its stateful random ops (RETURNN's dropout), each with its op seed pair and
how often its kernel ran in this session before: the ledger of graph-mode runs.
Every loss layer is a named loss term, its weight RETURNN's `loss_scale` (zero-scaled ones too).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from repro_audit.audit.config import RunConfig
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.common.hashing import summarize_array
from repro_audit.probes.returnn.environment import returnn_environment
from repro_audit.probes.returnn.lr_control import lr_control_state
from repro_audit.probes.tf.graph_record import STATEFUL_RANDOM_OPS
from repro_audit.probes.tf.random_draws import DrawLedger

FETCH_KEY = "repro_audit"
LAYER_SEED = "returnn-layer-seed"  # audit/explain/returnn_seeds.py


def record_tf_engine(config: RunConfig, writer: TraceWriter, *, config_file: Path,
                     progress: Callable[[int], None]) -> None:
    from returnn import __main__ as rnn
    from returnn.tf.engine import Runner
    from returnn.tf.updater import Updater

    steps = NetDictSteps(config, writer, progress)
    compute_gradients, fetches_dict = Updater._compute_gradients, Runner._get_fetches_dict

    def gradients_seen(updater: Any, loss: Any, var_list: Any) -> Any:
        steps.forward_end = _last_op_id(loss.graph)
        found = compute_gradients(updater, loss, var_list)
        steps.gradients_computed(found, loss.graph)
        return found

    def with_recorder_fetches(runner: Any) -> dict[str, Any]:
        found = fetches_dict(runner)
        if runner._should_train:
            steps.attach_runner(runner, found)
        return found

    Updater._compute_gradients = gradients_seen  # type: ignore[method-assign]
    Runner._get_fetches_dict = with_recorder_fetches  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="repro-audit-returnn-") as scratch:
        updates = {"model": str(Path(scratch) / "model"), "learning_rate_file": str(Path(scratch) / "lr.txt"),
                   "log": None, "wrap_tf_session": steps.wrap_session, **config.params}
        rnn.init(config_filename=str(config_file), config_updates=updates, extra_greeting="repro-audit")
        steps.engine = rnn.engine
        steps.accum = max(1, rnn.config.int("accum_grad_multiple_step", 1))
        try:
            rnn.engine.init_train_from_config(rnn.config, rnn.train_data, rnn.dev_data, rnn.eval_data)
            writer.write_json(fmt.ENVIRONMENT, returnn_environment(config, config_file=config_file,
                                                                  framework="tensorflow"))
            rnn.engine.train()
        finally:
            Updater._compute_gradients, Runner._get_fetches_dict = compute_gradients, fetches_dict
            rnn.finalize()
        writer.write_json(fmt.ENVIRONMENT, returnn_environment(config, config_file=config_file,
                                                              framework="tensorflow"))


class RecordingRun:
    """RETURNN's `session.run`, passed through; a run that carries the recorder's fetches reports them.
    Set on the session instance (RETURNN's saver needs the session itself, not a wrapper)."""

    def __init__(self, run: Callable[..., Any], steps: NetDictSteps) -> None:
        self.original, self._steps = run, steps

    def __call__(self, fetches: Any, feed_dict: Any = None, **kwargs: Any) -> Any:
        if not (isinstance(fetches, dict) and FETCH_KEY in fetches):
            return self.original(fetches, feed_dict=feed_dict, **kwargs)
        results = self.original(fetches, feed_dict=feed_dict, **kwargs)
        self._steps.step_done(results.pop(FETCH_KEY), feed_dict or {})
        return results


class NetDictSteps:
    """What the recorder knows of the network RETURNN built (rebuilt by pretrain: known per network)."""

    def __init__(self, config: RunConfig, writer: TraceWriter, progress: Callable[[int], None]) -> None:
        self.config, self.writer, self.progress = config, writer, progress
        self.engine: Any = None
        self.run: RecordingRun | None = None
        self.network: Any = None
        self.steps = 0
        self.epoch_steps = 0
        self.forward_end = 0
        self.grads_and_vars: list[tuple[Any, Any]] = []
        self.backward_end = 0
        self.structure: dict[str, Any] = {"modules": [], "graph_steps": [], "mode": "graph"}
        self.graph_pending = False
        self.seq_tags: Any = None
        self.draws = DrawLedger()
        self.random_ops: list[Any] = []
        self.accum = 1  # accum_grad_multiple_step: session runs per optimizer update

    def wrap_session(self, session: Any) -> Any:
        """RETURNN makes a session per network; random op kernels (their streams) start anew with it."""
        self.run = RecordingRun(session.run, self)
        session.run = self.run
        self.draws.executions.clear()
        return session

    def _read(self, fetches: Any) -> Any:
        """Values from RETURNN's session, outside its step (the recorder's own reads)."""
        assert self.run is not None, "RETURNN made its session without wrap_tf_session"
        return self.run.original(fetches)

    def gradients_computed(self, grads_and_vars: list[tuple[Any, Any]], graph: Any) -> None:
        self.grads_and_vars = list(grads_and_vars)
        self.backward_end = _last_op_id(graph)

    def attach_runner(self, runner: Any, fetches: dict[str, Any]) -> None:
        """A training Runner starts an epoch: our fetches into its own, its data cut to `steps`."""
        if self.network is not self.engine.network:
            self._new_network(fetches)
        fetches[FETCH_KEY] = self.fetches
        self.epoch_steps = 0
        provider = runner.data_provider
        more, feed_dict = provider.have_more_data, provider.get_feed_dict
        runs = self.config.steps * self.accum  # an epoch ends on an update
        provider.have_more_data = lambda session: self.epoch_steps < runs and more(session=session)

        def feed_with_tags(*args: Any, **kwargs: Any) -> Any:
            feed, meta = feed_dict(*args, **kwargs)
            self.seq_tags = meta.get("seq_tag") if isinstance(meta, dict) else None
            return feed, meta

        provider.get_feed_dict = feed_with_tags

    def _new_network(self, fetches: dict[str, Any]) -> None:
        import tensorflow as tf

        from repro_audit.probes.tf.graph_init import GraphTree
        from repro_audit.probes.tf.optimizer_state import V1OptimizerView

        engine = self.engine
        self.network = network = engine.network
        graph = network.get_graph() if hasattr(network, "get_graph") else tf.compat.v1.get_default_graph()
        self.graph = graph
        params = network.get_params_list()
        trainable = network.get_trainable_params()
        self.tree = GraphTree(params, {id(v) for v in trainable})
        self.parameters = [t.name for t in self.tree.parameters()]
        names = {id(t.variable): t.name for t in self.tree.variables}
        updater = engine.updater
        optimizer = next(iter(updater.optimizers.values())) if getattr(updater, "optimizers", None) else None
        self.optimizer_view = V1OptimizerView(optimizer, names, [t.variable for t in self.tree.parameters()])
        self.terms, self.weights = {}, {}
        with graph.as_default(), tf.name_scope("repro_audit"):
            for name, holder in sorted(network.losses_dict.items()):
                value = holder.get_loss_value()
                if value is None:
                    continue
                self.terms[name] = tf.reshape(tf.cast(value, tf.float32), [])
                self.weights[name] = float(holder.loss.scale) if holder.loss is not None else 1.0
            total = tf.add_n([self.terms[n] * self.weights[n] for n in self.terms]) if self.terms else \
                tf.constant(0.0)
        self.fetches = {"loss_terms": self.terms, "total": total,
                        "gradients": {names[id(v)]: g for g, v in self.grads_and_vars
                                      if g is not None and id(v) in names},
                        "optimizer_lr": updater.learning_rate}
        self.state = {f"parameters/{t.name}": t.variable for t in self.tree.variables if t.kind == "parameter"}
        self.state.update({f"buffers/{t.name}": t.variable for t in self.tree.variables if t.kind == "buffer"})
        if optimizer is not None:
            self.state.update({f"optimizer/{param}/{key}": slot for param, key, slot in self.optimizer_view.slots()})
            self.state.update({f"optimizer/{key}": v for key, v in self.optimizer_view.scalars()})
        self.optim_op = fetches.get("optim_op")
        self.labels = self._labels()
        self.random_ops = sorted((op for op in self.labels.ops if op.type in STATEFUL_RANDOM_OPS),
                                 key=lambda op: op._id)
        with graph.as_default(), tf.name_scope("repro_audit"):
            self.fetches["random_counts"] = [tf.size(op.outputs[0]) for op in self.random_ops]
        self.fetches["module_outputs"] = self._layer_outputs(network)
        self._write_build(graph)

    def _layer_outputs(self, network: Any) -> dict[str, Any]:
        """Each layer's output that the step computes anyway: fetching one it does not compute would run
        its ops (and their random kernels) and change the run."""
        if not self.config.capture.get("module_outputs", True):
            return {}
        executed = {op._id for op in self.labels.ops}
        outputs = {}
        for name, layer in sorted(network.layers.items()):
            tensor = getattr(getattr(layer, "output", None), "placeholder", None)
            if tensor is not None and not name.startswith("data") and tensor.op._id in executed \
                    and tensor.dtype.is_floating:
                outputs[name] = tensor
        return outputs

    def _labels(self) -> Any:
        """The ops one step executes, labelled forward/backward/optimizer, by module and by loss term."""
        from repro_audit.probes.tf.graph_record import TracedStep, ancestors, label_ops

        heads = [*([self.optim_op] if self.optim_op is not None else []), *[t.op for t in self.terms.values()]]
        executed = ancestors(heads, control=True)
        sources = {t.variable.op._id for t in self.tree.parameters()}
        traced = TracedStep(self.graph, 0, self.forward_end, self.backward_end, _last_op_id(self.graph),
                            self.terms, self.weights, sources, only=executed, module_of_name=self.tree.module_of_name)
        return label_ops(traced)

    def _write_build(self, graph: Any) -> None:
        from repro_audit.probes.tf.graph_init import graph_initialisation

        build_end = min((op._id for op in graph.get_operations() if op.name.startswith("repro_audit/")),
                        default=_last_op_id(graph)) - 1
        build_end = min(build_end, self.forward_end) if self.forward_end else build_end
        initial = self._read({t.name: t.variable for t in self.tree.variables})
        if self.steps == 0:
            self.writer.write_json(fmt.INITIALISATION, returnn_layer_seeds(graph_initialisation(
                graph, self.tree, initial, build_end=build_end, seed=graph.seed)))
        self.structure["modules"] = self.tree.structure()
        self.writer.write_json(fmt.STRUCTURE, self.structure)
        self.graph_pending = True

    def step_done(self, found: dict[str, Any], feed_dict: dict[Any, Any]) -> None:
        from repro_audit.probes.tf.step_record import assemble

        self.steps += 1
        self.epoch_steps += 1
        state = self._read(self.state)
        values: dict[str, np.ndarray] = {f"loss_terms/{n}": np.asarray(v) for n, v in found["loss_terms"].items()}
        values["total"] = np.asarray(found["total"])
        values.update({f"gradients/{n}": np.asarray(g) for n, g in found["gradients"].items()})
        values.update({key: np.asarray(v) for key, v in state.items()})
        values["optimizer_lr"] = np.asarray(found["optimizer_lr"])
        values.update({f"module_outputs/{n}#0": np.asarray(v) for n, v in found["module_outputs"].items()})
        summaries = {key: summarize_array(v) for key, v in values.items()}
        record = assemble(self.steps, batch=_batch_record(feed_dict, self.seq_tags), summaries=summaries, values=values,
                          term_names=list(self.terms), weights=self.weights, parameter_names=self.parameters,
                          optimizer=self.optimizer_view)
        record["update"] = {"epoch": int(self.engine.epoch), "learning_rate": float(values["optimizer_lr"]),
                            **lr_control_state(self.engine), **self._accumulation()}
        record["random_draws"] = self._random_draws(found["random_counts"])
        record["nan_provenance"], record["term_attribution"] = None, None
        record["graph"] = self._graph_record()
        record["values"] = None
        if self.config.capture.get("values", "none") == "all" or (
                self.config.capture.get("values") == "first" and self.steps == 1):
            from repro_audit.probes.tf.step_record import kept_values

            record["values"] = self.writer.write_values(self.steps, kept_values(self.steps, values, {}))
        self.writer.append_step(record)
        self.progress(self.steps)

    def _accumulation(self) -> dict[str, Any]:
        """With accum_grad_multiple_step N, RETURNN's updater adds each run's gradients up and applies them
        in every N-th run only (counted by its global train step, from 0 in a fresh run like ours)."""
        if self.accum == 1:
            return {}
        position = (self.steps - 1) % self.accum
        return {"accum_grad_multiple_step": self.accum, "micro_batch": position + 1,
                "update_applied": position == self.accum - 1}

    def _random_draws(self, counts: list[Any]) -> list[dict[str, Any]]:
        if not self.config.capture.get("random_draws", True):
            return []
        labels = self.labels
        ops = [(op, labels.module.get(op._id), labels.phase.get(op._id, "forward"), int(count))
               for op, count in zip(self.random_ops, counts)]
        return self.draws.stateful_entries(ops, start_index=0)

    def _graph_record(self) -> dict[str, Any] | None:
        """The executed ops of the step, labelled forward/backward/optimizer and by loss term (stored when
        the network is new: step 1, and after pretrain rebuilds it)."""
        if not self.config.capture.get("graph", True) or self.optim_op is None:
            return None
        from repro_audit.probes.tf.graph_record import graph_record

        if self.graph_pending:
            self.graph_data = graph_record(self.steps, self.labels)
            self.writer.write_graph(self.steps, self.graph_data)
            self.structure["graph_steps"].append(self.steps)
            self.writer.write_json(fmt.STRUCTURE, self.structure)
            self.graph_pending = False
            return {"digest": self.graph_data["digest"], "ops": len(self.graph_data["ops"]), "stored": True}
        return {"digest": self.graph_data["digest"], "ops": len(self.graph_data["ops"]), "stored": False}


def returnn_layer_seeds(initialisation: dict[str, Any]) -> dict[str, Any]:
    """RETURNN gives each layer's random ops their op seeds from the network's own random state, in creation
    order (not TF's per-graph counter): the tensors' op seeds are marked as RETURNN's layer seeds."""
    for entry in (initialisation.get("tensors") or []) + (initialisation.get("draws") or []):
        if entry.get("generator") == "tf-op-seed":
            entry["generator"] = LAYER_SEED
    initialisation.setdefault("generators", {}).pop("tf-op-seed", None)
    initialisation["generators"][LAYER_SEED] = {
        "rule": "RETURNN seeds each layer's random ops from its network's random state, in creation order: a "
                "layer created earlier moves the op seeds of every layer after it"}
    return initialisation


def _batch_record(feed_dict: dict[Any, Any], seq_tags: Any) -> dict[str, Any]:
    """The feed dict RETURNN built: data, targets, sequence lengths, and the sequence tags (as bytes)."""
    from repro_audit.probes.returnn.batches import seq_tag_bytes
    from repro_audit.probes.tf.step_record import batch_record

    named = {}
    for key, value in feed_dict.items():
        if not isinstance(value, np.ndarray):
            continue
        name = getattr(key, "name", str(key))
        if value.dtype.kind in "biuf":
            named[name] = value
    if seq_tags is not None:
        named["seq_tags"] = seq_tag_bytes(seq_tags)
    return batch_record(dict(sorted(named.items())))[0]


def _last_op_id(graph: Any) -> int:
    from repro_audit.probes.tf.capture import last_op_id

    return int(last_op_id(graph))
