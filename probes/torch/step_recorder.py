"""One training step, recorded: the lifecycle shared by the runner's loop and attach mode.

begin_step -> [combine_loss -> backward -> after_backward] per micro-batch -> (gradient clipping, scaling:
note_update) -> (optimizer.step) -> end_step. The runner owns the loop and calls these in order; attach
mode calls them around the user's own loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from repro_audit.probes.common.collector import CollectorPause
from repro_audit.probes.common.hashing import hash_array, hash_text
from repro_audit.probes.torch.autograd_graph import (
    graph_digest,
    modules_of_nodes,
    ordered_nodes,
    term_membership,
)
from repro_audit.probes.torch.dispatch_capture import DispatchCapture
from repro_audit.probes.torch.distributed import example_hashes
from repro_audit.probes.torch.health import step_health
from repro_audit.probes.torch.initialisation import named_tensors
from repro_audit.probes.torch.loss_record import LossTermRecord
from repro_audit.probes.torch.modules import ModuleTracker
from repro_audit.probes.torch.nan_provenance import attribute_terms, find_origins
from repro_audit.probes.torch.optimizer_state import StateHashes, param_groups
from repro_audit.probes.torch.output_probe import OutputProbe
from repro_audit.probes.torch.random_ledger import RandomLedger
from repro_audit.probes.torch.random_watch import RandomWatch
from repro_audit.probes.torch.repeated_summaries import RepeatedSummaries
from repro_audit.probes.torch.step_graph import autograd_graph, completed_graph, label_ops
from repro_audit.probes.torch.step_replay import RandomState, replay_forward
from repro_audit.probes.torch.tensors import as_numpy, flatten_tensors, summarize, values_for_file
from repro_audit.probes.torch.update_record import GradientChanges

WeightOf = Callable[[str], float]


class TorchStepRecorder:
    """Records steps of one model and optimizer into step records (docs/trace-format.md)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, capture: Mapping[str, Any],
                 weight_of: WeightOf, ledger: RandomLedger, num_classes: Any = None,
                 watch_gradient_changes: bool = False, dropped_terms: frozenset[str] = frozenset()) -> None:
        """`watch_gradient_changes`: see whether the user's code changed the gradients between backward and
        optimizer.step() (clipping, scaling) where the recorder does not own that code (attach mode).
        `dropped_terms`: recorded, but left out of the total (`--verify`'s intervention on NaN terms)."""
        self.dropped_terms = dropped_terms
        self.model = model
        self.optimizer = optimizer
        self.capture = dict(capture)
        self.weight_of = weight_of
        self.num_classes = num_classes
        self.ledger = ledger
        self.watch = RandomWatch(ledger) if capture.get("random_draws", True) else None
        probe = (OutputProbe(health=bool(capture.get("health", True)), probe_only=self._probe_only)
                 if capture.get("module_outputs", True) else None)
        self.tracker = ModuleTracker(model, probe=probe, watch=self.watch, on_forward=self._forward_starts)
        ledger.module_of = lambda: self.tracker.current
        named = named_tensors(model)
        self.parameters = [(name, t) for name, kind, t in named if kind == "parameter"]
        # Frozen parameters get no gradient: attribution and provenance ask only for the others.
        self.trainable = [(name, t) for name, t in self.parameters if t.requires_grad]
        self.buffers = [(name, t) for name, kind, t in named if kind == "buffer"]
        self.names = {id(t): name for name, t in self.parameters}
        self._gradient_summaries = RepeatedSummaries()
        self._parameter_summaries = RepeatedSummaries()
        self._buffer_summaries = RepeatedSummaries()
        self._changes = GradientChanges(optimizer, self) if watch_gradient_changes else None
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
        self.record = {"step": step, "batch": self._batch_record(batch), "notes": []}
        self.values: dict[str, Any] = {}
        if self._keep_values():
            for name, tensor in flatten_tensors(batch):
                self.values[f"batch/{name}"] = values_for_file(tensor)
        full_capture = step == 1 and (self.capture.get("graph", True) or self.capture.get("random_draws", True))
        if self.watch is not None:
            self.watch.ops_enabled = not full_capture  # the full capture names random ops itself
            self.watch.begin_step()
        self.ledger.phase = "forward"
        self.tracker.keep_outputs = self._keep_values() and bool(self.capture.get("module_outputs", True))
        self.tracker.start_step()
        if full_capture:
            self.dispatch = DispatchCapture(self.ledger, lambda: self.tracker.current,
                                            record_ops=bool(self.capture.get("graph", True)), track_storage=False,
                                            watch=self.watch)
            self._contexts.enter_context(self.dispatch)
        self.next_micro_batch(replay=replay)

    def next_micro_batch(self, *, replay: Callable[[], Any] | None = None) -> None:
        """A forward pass starts (the first of the step, or the next micro-batch); `replay` runs it again."""
        self._replay, self._step_start = None, None
        if replay is not None and self.step > 1 and self.capture.get("nan_provenance", True):
            self._replay = replay
            self._step_start = RandomState(self.ledger.custom_generators)
        self._forward_starts()

    def _forward_starts(self) -> None:
        """Ops from here on belong to a forward pass (after a micro-batch's backward, the next one's)."""
        if self.ledger.phase == "forward":
            return
        self._set_phase("forward")

    def _set_phase(self, phase: str) -> None:
        if self.dispatch is not None:
            self.dispatch.phase = phase
        if self.watch is not None:
            self.watch.set_phase(phase)
        self.ledger.phase = phase

    def combine_loss(self, terms: Mapping[str, torch.Tensor], *, scale: float = 1.0) -> torch.Tensor:
        """Total = scale x sum(weight x term); records every term, and which ops each term's graph holds.

        Called once per forward pass: a step that accumulates over micro-batches calls it for each, with
        `scale` 1/micro-batches where the total is averaged."""
        if not isinstance(terms, Mapping) or not terms:
            raise TypeError(f"the loss function must return a non-empty mapping of named terms, got "
                            f"{type(terms).__name__}")
        weighted, total = self._weighted_total(terms, scale)
        with self._probe_only():
            self.loss.add(terms, total)
        self.record["loss_terms"] = self.loss.record()
        self.record["total_loss"] = self.loss.total()
        if self.loss.micro_batches > 1:
            self.record["micro_batches"] = self.loss.micro_batches
        self.weighted = weighted
        self.weights = {str(name): self.weight_of(str(name)) for name in terms}
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
        """Gradients, and where they turned non-finite; call after each backward, before optimizer.step()."""
        self._set_phase("optimizer")
        with self._probe_only():
            self._record_gradients()
        if self._changes is not None:
            self._changes.after_backward(self.record["gradients"])

    def note_update(self, facts: Mapping[str, Any]) -> None:
        """What happened between backward and optimizer.step() (micro-batches, clipping, gradient scaling):
        the step record's `update`, compared like hyper-parameters."""
        self.record.setdefault("update", {}).update(facts)

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
        # With micro-batches: attribution of the first forward pass, provenance of the one where NaN entered.
        self.record.setdefault("nan_provenance", None)
        self.record.setdefault("term_attribution", None)
        attribute = (bool(self.capture.get("term_attribution", True)) and (self.step == 1 or outbreak)
                     and self.record["term_attribution"] is None)
        if (provenance or attribute) and retained:
            self._look_again(self.total, self.weighted, self.tracker.calls, nonfinite, provenance=provenance,
                             attribute=attribute, exact_ops=True)
        elif (provenance or attribute) and self._replay is not None:
            self._replay_step(nonfinite, provenance=provenance, attribute=attribute)
        elif outbreak:
            self.record["notes"].append("gradients turned non-finite; NaN provenance was not captured "
                                        "(capture.nan_provenance is off or the graph was not kept)")
        self.record["optimizer"] = self._optimizer_record()
        if self._keep_values():
            for name, g in present:
                self.values[f"gradients/{name}"] = values_for_file(g)

    def _look_again(self, total: torch.Tensor, weighted: Mapping[str, torch.Tensor], calls: list[Any],
                    nonfinite: list[str], *, provenance: bool, attribute: bool, exact_ops: bool) -> None:
        """Provenance and attribution from a graph that is still there: the step's own or a replay's."""
        if provenance:
            dispatch = self.dispatch if exact_ops else None
            origins = find_origins(total, [t for _, t in self.trainable], weighted=weighted,
                                   weights=self.weights, calls=calls,
                                   node_to_op=dispatch.node_to_op if dispatch else None,
                                   ops=dispatch.ops if dispatch else None)
            self.record["nan_provenance"] = {"origins": origins, "nonfinite_parameters": nonfinite,
                                             "replayed": not exact_ops, "replay_matches": None}
        if attribute:
            self.record["term_attribution"] = attribute_terms(weighted, self.weights, self.trainable)

    def _replay_step(self, nonfinite: list[str], *, provenance: bool, attribute: bool) -> None:
        """The outbreak step's forward pass once more, for a graph to look into (see step_replay)."""
        assert self._replay is not None and self._step_start is not None
        replay = self._replay
        with self.tracker.separate_calls() as calls, self.ledger.paused(), self._watch_paused():
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
                hash_array(as_numpy(replayed[name].reshape(()).detach())) == self.loss.last_hash(name)
                for name in recorded)
        found = self.record["nan_provenance"]
        if found is not None:
            found["replay_matches"] = matches
        if not matches:
            self.record["notes"].append("the replayed step computed other loss values than the step itself "
                                        "(nondeterministic ops, or a random generator the recorder does not "
                                        "know): NaN provenance and attribution describe the replay")

    def _weighted_total(self, terms: Mapping[str, torch.Tensor], scale: float = 1.0
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """{term: weight x term} and their sum (times `scale`), the total the runner trains on."""
        weighted: dict[str, torch.Tensor] = {}
        for name, value in terms.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TypeError(f"loss term {name!r} must be a scalar tensor, got "
                                f"{getattr(value, 'shape', type(value).__name__)}")
            weighted[str(name)] = value * self.weight_of(str(name))
        kept = [w.reshape(()) for name, w in weighted.items() if name not in self.dropped_terms]
        if not kept:
            raise TypeError("every loss term is dropped from the total")
        total = torch.stack(kept).sum()
        return weighted, total * scale if scale != 1.0 else total

    def end_step(self) -> dict[str, Any]:
        """Parameters and optimizer state after the update; returns the finished step record."""
        try:
            return self._end_step()
        finally:
            self._collector.resume()

    def abort_step(self) -> None:
        """The step stops without a record (the user's code raised): hooks and modes off, collector on."""
        self._contexts.close()
        if self.watch is not None:
            self.watch.close()
        self.ledger.take_entries()
        self.tracker.stop()
        self._reset()
        self._collector.resume()

    def _end_step(self) -> dict[str, Any]:
        self._contexts.close()
        if self.watch is not None:
            self.watch.end_step()
        self.tracker.stop()
        found = self._parameter_summaries.summaries([t for _, t in self.parameters])
        self.record["parameters"] = dict(zip([n for n, _ in self.parameters], found))
        # Buffers change in training too (batch-norm statistics, counters): a model saved after the step
        # holds them, so they are compared like parameters.
        found = self._buffer_summaries.summaries([t for _, t in self.buffers])
        self.record["buffers"] = dict(zip([n for n, _ in self.buffers], found))
        self.record.setdefault("optimizer", self._optimizer_record())
        self.record["optimizer"]["state"] = self._state_hashes(self.optimizer, self.names)
        self.record["random_draws"] = self.ledger.take_entries()
        if self.capture.get("module_outputs", True):
            self.record["module_outputs"] = self.tracker.summaries()
            if self._keep_values():
                for key, tensor in self.tracker.output_tensors().items():
                    self.values[f"module_outputs/{key}"] = values_for_file(tensor)
        if self._keep_values():
            for name, tensor in self.parameters:
                self.values[f"parameters/{name}"] = values_for_file(tensor)
            for name, tensor in self.buffers:
                self.values[f"buffers/{name}"] = values_for_file(tensor)
            for name, array in self.loss.values().items():
                self.values[f"loss_terms/{name}"] = array
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
        if self.watch is not None:
            self.watch.close()
        if self._changes is not None:
            self._changes.remove()
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
        self._labelled: set[Any] = set()
        self.loss = LossTermRecord(self.weight_of)
        self.step = 0

    def _optimizer_record(self) -> dict[str, Any]:
        """Type and param groups; `own_keys` are the hyper-parameters the optimizer reads (its defaults):
        other group keys are a scheduler's bookkeeping."""
        return {"type": type(self.optimizer).__name__, "param_groups": param_groups(self.optimizer, self.names),
                "own_keys": sorted(map(str, getattr(self.optimizer, "defaults", {}) or {}))}

    def _probe_only(self) -> Any:
        """Our own tensor work must not show up in the op graph or the random ledger."""
        watching_ops = self.watch is not None and self.watch.mode_on
        return _disable_current_modes() if self.dispatch is not None or watching_ops else nullcontext()

    def _watch_paused(self) -> Any:
        return self.watch.paused() if self.watch is not None else nullcontext()

    def _keep_values(self) -> bool:
        mode = self.capture.get("values", "none")
        return mode == "all" or (mode == "first" and self.step == 1)

    def add_batch(self, batch: Any, *, micro_batch: int) -> None:
        """A later micro-batch's data joins the step's batch record (under `micro_batch{n}/`), so a diff sees
        every batch one update trained on; the record's hash covers them all."""
        found = self._batch_record(batch)
        record = self.record["batch"]
        record["tensors"].update({f"micro_batch{micro_batch}/{name}": s for name, s in found["tensors"].items()})
        record["hash"] = hash_text(f"{record['hash']}|micro_batch{micro_batch}={found['hash']}")

    def _batch_record(self, batch: Any) -> dict[str, Any]:
        tensors = flatten_tensors(batch)
        if not tensors:
            return {"hash": hash_text(repr(batch)), "tensors": {}}
        summaries = summarize([t for _, t in tensors])
        combined = hash_text("|".join(f"{name}={s['hash']}" for (name, _), s in zip(tensors, summaries)))
        record = {"hash": combined, "tensors": {name: s for (name, _), s in zip(tensors, summaries)}}
        examples = example_hashes(tensors)  # ranked runs only: the ranks' union compares across world sizes
        return record if examples is None else {**record, "examples": examples}

    def _finish_forward(self) -> None:
        """End of the forward pass: label ops with loss terms, fingerprint the graph, store it if new."""
        first = self.loss.micro_batches == 1  # later micro-batches: ops labelled, the graph kept from the first
        nodes = ordered_nodes(self.total.grad_fn) if self.total is not None and first else []
        digest = graph_digest(nodes)
        graph: dict[str, Any] = {"digest": digest, "nodes": len(nodes), "stored": False}
        store = first and self.capture.get("graph", True) and (self.step == 1 or digest != self._previous_digest)
        # Which terms reach which node matters only where ops are labelled: step 1 and stored graphs.
        membership = term_membership(self.weighted) if store or self.dispatch is not None else {}
        if self.dispatch is not None:
            self.dispatch.finish_forward()
            label_ops(self.dispatch, membership, self._labelled, len(self.weighted))
        self._set_phase("backward")
        if not first:
            return
        if store:
            modules = modules_of_nodes(nodes, self.tracker.calls) if self.step > 1 else {}
            self.graphs[self.step] = autograd_graph(self.step, digest, nodes, modules, membership, len(self.weighted))
            graph["stored"] = True
        self._previous_digest = digest
        self.record["graph"] = graph

    def finish_graph(self) -> dict[str, Any] | None:
        """The full graph of this step for graphs/, completed with the backward and optimizer ops."""
        graph = self.graphs.pop(self.step, None)
        if graph is None:
            return None
        graph = completed_graph(graph, self.dispatch)
        if self.dispatch is not None:
            self.record["graph"]["ops"] = len(graph["ops"])
        return graph
