"""One training step, recorded: the lifecycle shared by the runner's loop and attach mode.

begin_step -> combine_loss -> backward -> after_backward -> (optimizer.step) -> end_step. The runner owns
the loop and calls these in order; attach mode calls them around the user's own loop.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Any, Callable, Mapping

import torch
from torch.utils._python_dispatch import _disable_current_modes

from probes.common.collector import CollectorPause
from probes.common.hashing import hash_array, hash_text
from probes.torch.autograd_graph import (
    graph_digest,
    modules_of_nodes,
    ordered_nodes,
    term_label,
    term_membership,
)
from probes.torch.dispatch_capture import DispatchCapture
from probes.torch.health import step_health
from probes.torch.initialisation import named_tensors
from probes.torch.modules import ModuleTracker
from probes.torch.nan_provenance import attribute_terms, find_origins
from probes.torch.optimizer_state import StateHashes, param_groups
from probes.torch.output_probe import OutputProbe
from probes.torch.random_ledger import RandomLedger, python_random_wrappers
from probes.torch.repeated_summaries import RepeatedSummaries
from probes.torch.step_replay import RandomState, replay_forward
from probes.torch.tensors import as_numpy, flatten_tensors, summarize, values_for_file

WeightOf = Callable[[str], float]


class TorchStepRecorder:
    """Records steps of one model and optimizer into step records (docs/trace-format.md)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, capture: Mapping[str, Any],
                 weight_of: WeightOf, ledger: RandomLedger, num_classes: Any = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.capture = dict(capture)
        self.weight_of = weight_of
        self.num_classes = num_classes
        self.ledger = ledger
        probe = (OutputProbe(health=bool(capture.get("health", True)), probe_only=self._probe_only)
                 if capture.get("module_outputs", True) else None)
        self.tracker = ModuleTracker(model, probe=probe)
        ledger.module_of = lambda: self.tracker.current
        self.parameters = [(name, t) for name, kind, t in named_tensors(model) if kind == "parameter"]
        self.names = {id(t): name for name, t in self.parameters}
        self._gradient_summaries = RepeatedSummaries()
        self._parameter_summaries = RepeatedSummaries()
        self._state_hashes = StateHashes()
        self.graphs: dict[int, dict[str, Any]] = {}
        self._previous_digest: str | None = None
        self._nonfinite_before = False
        self._collector = CollectorPause()
        self._reset()

    # -- lifecycle -------------------------------------------------------------------------------------

    def begin_step(self, step: int, batch: Any, *, replay: Callable[[], Any] | None = None) -> None:
        """`replay`, where the caller owns the loss call (the runner's loop), runs the step's loss function
        again: NaN provenance then replays an outbreak step instead of keeping every step's graph.

        From here to the end of `end_step` the garbage collector waits (see probes/common/collector)."""
        self._contexts.close()  # a step abandoned without `abort_step`
        self._reset()
        self._collector.pause()
        self.step = step
        if replay is not None and step > 1 and self.capture.get("nan_provenance", True):
            self._replay = replay
            self._step_start = RandomState(self.ledger.custom_generators)
        self.record = {"step": step, "batch": self._batch_record(batch), "notes": []}
        self.values: dict[str, Any] = {}
        if self._keep_values():
            for name, tensor in flatten_tensors(batch):
                self.values[f"batch/{name}"] = values_for_file(tensor)
        self.ledger.phase = "forward"
        self.tracker.keep_outputs = self._keep_values() and bool(self.capture.get("module_outputs", True))
        self.tracker.start_step()
        if step == 1 and (self.capture.get("graph", True) or self.capture.get("random_draws", True)):
            self.dispatch = DispatchCapture(self.ledger, lambda: self.tracker.current,
                                            record_ops=bool(self.capture.get("graph", True)), track_storage=False)
            self._contexts.enter_context(self.dispatch)
        elif self.capture.get("random_draws", True):
            self._contexts.enter_context(python_random_wrappers(self.ledger))

    def combine_loss(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Total = sum(weight x term); records every term, and which ops each term's graph holds."""
        if not isinstance(terms, Mapping) or not terms:
            raise TypeError(f"the loss function must return a non-empty mapping of named terms, got "
                            f"{type(terms).__name__}")
        weighted, total = self._weighted_total(terms)
        records: dict[str, Any] = {}
        for name, value in terms.items():
            with self._probe_only():
                records[str(name)] = {"weight": self.weight_of(str(name)), "value": float(value.detach()),
                                      "hash": hash_array(as_numpy(value.reshape(()).detach()))}
                if self._keep_values():
                    self.values[f"loss_terms/{name}"] = values_for_file(value.reshape(1))
        self.record["loss_terms"] = records
        with self._probe_only():
            self.record["total_loss"] = float(total.detach())
        self.weighted = weighted
        self.weights = {name: record["weight"] for name, record in records.items()}
        self.total = total
        self._finish_forward()
        return total

    def backward(self, total: torch.Tensor) -> None:
        retain = self._keeps_graph()
        total.backward(retain_graph=retain)
        self._retained = retain

    def _keeps_graph(self) -> bool:
        """Whether this step's graph is kept through backward for a second look.

        Step 1 keeps it for term attribution and for provenance with exact op names (its op graph is
        captured). Later steps keep it only where provenance is armed and the step cannot be replayed
        (attach mode, where the user owns the loss call).
        """
        provenance = bool(self.capture.get("nan_provenance", True))
        if self.step == 1:
            return provenance or bool(self.capture.get("term_attribution", True))
        return provenance and self._replay is None

    def after_backward(self) -> None:
        """Gradients, and where they turned non-finite; call before optimizer.step()."""
        if self.dispatch is not None:
            self.dispatch.phase = "optimizer"
        self.ledger.phase = "optimizer"
        with self._probe_only():
            self._record_gradients()

    def _record_gradients(self) -> None:
        grads = [(name, p.grad) for name, p in self.parameters]
        present = [(name, g) for name, g in grads if g is not None]
        found = self._gradient_summaries.summaries([g for _, g in present])
        summaries = dict(zip([n for n, _ in present], found))
        self.record["gradients"] = {name: summaries.get(name) for name, _ in grads}
        nonfinite = [name for name, s in summaries.items() if s["nan"] or s["inf"]]
        outbreak = bool(nonfinite) and not self._nonfinite_before
        self._nonfinite_before = bool(nonfinite)
        retained = self._retained and self.total is not None and self.total.grad_fn is not None
        provenance = outbreak and bool(self.capture.get("nan_provenance", True))
        attribute = bool(self.capture.get("term_attribution", True)) and (self.step == 1 or outbreak)
        self.record["nan_provenance"] = None
        self.record["term_attribution"] = None
        if (provenance or attribute) and retained:
            self._look_again(self.total, self.weighted, self.tracker.calls, nonfinite, provenance=provenance,
                             attribute=attribute, exact_ops=True)
        elif (provenance or attribute) and self._replay is not None:
            self._replay_step(nonfinite, provenance=provenance, attribute=attribute)
        elif outbreak:
            self.record["notes"].append("gradients turned non-finite; NaN provenance was not captured "
                                        "(capture.nan_provenance is off or the graph was not kept)")
        self.record["optimizer"] = {"type": type(self.optimizer).__name__,
                                    "param_groups": param_groups(self.optimizer, self.names)}
        if self._keep_values():
            for name, g in present:
                self.values[f"gradients/{name}"] = values_for_file(g)

    def _look_again(self, total: torch.Tensor, weighted: Mapping[str, torch.Tensor], calls: list[Any],
                    nonfinite: list[str], *, provenance: bool, attribute: bool, exact_ops: bool) -> None:
        """Provenance and attribution from a graph that is still there: the step's own or a replay's."""
        if provenance:
            dispatch = self.dispatch if exact_ops else None
            origins = find_origins(total, [t for _, t in self.parameters], weighted=weighted,
                                   weights=self.weights, calls=calls,
                                   node_to_op=dispatch.node_to_op if dispatch else None,
                                   ops=dispatch.ops if dispatch else None)
            self.record["nan_provenance"] = {"origins": origins, "nonfinite_parameters": nonfinite,
                                             "replayed": not exact_ops, "replay_matches": None}
        if attribute:
            self.record["term_attribution"] = attribute_terms(weighted, self.weights, self.parameters)

    def _replay_step(self, nonfinite: list[str], *, provenance: bool, attribute: bool) -> None:
        """The outbreak step's forward pass once more, for a graph to look into (see step_replay)."""
        assert self._replay is not None and self._step_start is not None
        replay = self._replay
        with self.tracker.separate_calls() as calls, self.ledger.paused():
            terms = replay_forward(replay, step_start=self._step_start, model=self.model)
            weighted, total = self._weighted_total(terms)
            if total.grad_fn is None:
                self.record["notes"].append("gradients turned non-finite; the replayed loss has no graph, so "
                                            "NaN provenance was not captured")
                return
            self._look_again(total, weighted, calls, nonfinite, provenance=provenance, attribute=attribute,
                             exact_ops=False)
            # The replay is only evidence if it computed what the step computed: same loss, bit for bit.
            replayed = {str(name): value for name, value in terms.items()}
            recorded = self.record["loss_terms"]
            matches = set(replayed) == set(recorded) and all(
                hash_array(as_numpy(replayed[name].reshape(()).detach())) == record["hash"]
                for name, record in recorded.items())
        found = self.record["nan_provenance"]
        if found is not None:
            found["replay_matches"] = matches
        if not matches:
            self.record["notes"].append("the replayed step computed other loss values than the step itself "
                                        "(nondeterministic ops, or a random generator the recorder does not "
                                        "know): NaN provenance and attribution describe the replay")

    def _weighted_total(self, terms: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """{term: weight x term} and their sum, the total the runner trains on."""
        weighted: dict[str, torch.Tensor] = {}
        for name, value in terms.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TypeError(f"loss term {name!r} must be a scalar tensor, got "
                                f"{getattr(value, 'shape', type(value).__name__)}")
            weighted[str(name)] = value * self.weight_of(str(name))
        return weighted, torch.stack([w.reshape(()) for w in weighted.values()]).sum()

    def end_step(self) -> dict[str, Any]:
        """Parameters and optimizer state after the update; returns the finished step record."""
        try:
            return self._end_step()
        finally:
            self._collector.resume()

    def abort_step(self) -> None:
        """The step stops without a record (the user's code raised): hooks and wrappers off, collector on."""
        self._contexts.close()
        self.tracker.stop()
        self._reset()
        self._collector.resume()

    def _end_step(self) -> dict[str, Any]:
        self._contexts.close()
        self.tracker.stop()
        found = self._parameter_summaries.summaries([t for _, t in self.parameters])
        self.record["parameters"] = dict(zip([n for n, _ in self.parameters], found))
        self.record.setdefault("optimizer", {"type": type(self.optimizer).__name__,
                                             "param_groups": param_groups(self.optimizer, self.names)})
        self.record["optimizer"]["state"] = self._state_hashes(self.optimizer, self.names)
        self.record["random_draws"] = [{k: v for k, v in entry.items() if k != "target_storage"}
                                       for entry in self.ledger.take_entries()]
        if self.capture.get("module_outputs", True):
            self.record["module_outputs"] = self.tracker.summaries()
            if self._keep_values():
                for key, tensor in self.tracker.output_tensors().items():
                    self.values[f"module_outputs/{key}"] = values_for_file(tensor)
        if self._keep_values():
            for name, tensor in self.parameters:
                self.values[f"parameters/{name}"] = values_for_file(tensor)
        if self.capture.get("health", True):
            self.record["health"] = step_health(
                self.tracker.calls, step=self.step,
                loss_terms={name: term["value"] for name, term in self.record.get("loss_terms", {}).items()},
                num_classes=self.num_classes)
        record = self.record
        self._reset()
        return record

    def close(self) -> None:
        self._contexts.close()
        self._collector.resume()
        self.tracker.remove()

    # -- parts -----------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._contexts = ExitStack()
        self.dispatch: DispatchCapture | None = None
        self.total: torch.Tensor | None = None
        self.weighted: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}
        self._retained = False
        self._replay: Callable[[], Any] | None = None
        self._step_start: RandomState | None = None
        self.step = 0

    def _probe_only(self) -> Any:
        """Our own tensor work must not show up in the op graph or the random ledger."""
        return _disable_current_modes() if self.dispatch is not None else nullcontext()

    def _keep_values(self) -> bool:
        mode = self.capture.get("values", "none")
        return mode == "all" or (mode == "first" and self.step == 1)

    def _batch_record(self, batch: Any) -> dict[str, Any]:
        tensors = flatten_tensors(batch)
        if not tensors:
            return {"hash": hash_text(repr(batch)), "tensors": {}}
        summaries = summarize([t for _, t in tensors])
        combined = hash_text("|".join(f"{name}={s['hash']}" for (name, _), s in zip(tensors, summaries)))
        return {"hash": combined, "tensors": {name: s for (name, _), s in zip(tensors, summaries)}}

    def _finish_forward(self) -> None:
        """End of the forward pass: label ops with loss terms, fingerprint the graph, store it if new."""
        nodes = ordered_nodes(self.total.grad_fn) if self.total is not None else []
        digest = graph_digest(nodes)
        graph: dict[str, Any] = {"digest": digest, "nodes": len(nodes), "stored": False}
        store = self.capture.get("graph", True) and (self.step == 1 or digest != self._previous_digest)
        # Which terms reach which node matters only where ops are labelled: step 1 and stored graphs.
        membership = term_membership(self.weighted) if store or self.dispatch is not None else {}
        if self.dispatch is not None:
            self.dispatch.finish_forward()
            for node, index in self.dispatch.node_to_op.items():
                terms = membership.get(node)
                self.dispatch.ops[index]["loss_term"] = term_label(terms, len(self.weighted))
                if terms and len(terms) > 1:
                    self.dispatch.ops[index]["loss_terms"] = terms
            self.dispatch.phase = "backward"
        if store:
            modules = modules_of_nodes(nodes, self.tracker.calls) if self.step > 1 else {}
            self.graphs[self.step] = {
                "step": self.step,
                "autograd_digest": digest,
                "autograd_nodes": [{"index": i, "op": node.name(), "module": modules.get(node),
                                    "loss_term": term_label(membership.get(node), len(self.weighted))}
                                   for i, node in enumerate(nodes)],
            }
            graph["stored"] = True
        self._previous_digest = digest
        self.record["graph"] = graph
        self.ledger.phase = "backward"

    def finish_graph(self) -> dict[str, Any] | None:
        """The full graph of this step for graphs/, completed with the backward and optimizer ops."""
        graph = self.graphs.pop(self.step, None)
        if graph is None:
            return None
        if self.dispatch is not None:
            ops = self.dispatch.ops
            for op in ops:
                forward = op.get("forward_op")
                if op["phase"] == "backward" and forward is not None:
                    op["module"] = ops[forward]["module"]
                    op["loss_term"] = ops[forward]["loss_term"]
            graph["level"] = "aten"
            graph["ops"] = ops
            graph["digest"] = hash_text("\n".join(f"{op['phase']}:{op['op']}" for op in ops))
            self.record["graph"]["ops"] = len(ops)
        else:
            graph["level"] = "autograd"
            graph["ops"] = []
            graph["digest"] = graph["autograd_digest"]
        return graph
