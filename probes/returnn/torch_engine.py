"""RETURNN's torch engine, recorded: model creation, each train step's marked losses and the updater's step.

The engine's methods are wrapped on its instance (never on the class): `_create_model` under the build
capture (creation order, seed offsets), `_run_step` between `begin_step` and the loss terms (every
`mark_as_loss` a named term with its scale, zero-scaled ones too), and the updater's `step` between the
gradients (as RETURNN's backward made them) and the parameters after its update. RETURNN computes its own
total and runs its own backward; our total of the same terms only names them.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from repro_audit.audit.config import RunConfig
from repro_audit.audit.trace import TraceWriter
from repro_audit.audit.trace import format as fmt
from repro_audit.probes.returnn.environment import returnn_environment
from repro_audit.probes.returnn.lr_control import lr_control_state

SEED_SEQUENCE = "returnn-seed-sequence"  # audit/explain/returnn_seeds.py


def record_torch_engine(config: RunConfig, writer: TraceWriter, *, config_file: Path,
                        progress: Callable[[int], None]) -> None:
    import torch
    from returnn import __main__ as rnn

    from repro_audit.probes.torch.dispatch_capture import DispatchCapture
    from repro_audit.probes.torch.initialisation import initialisation_record
    from repro_audit.probes.torch.modules import module_tree
    from repro_audit.probes.torch.random_ledger import RandomLedger

    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory(prefix="repro-audit-returnn-") as scratch:
        updates = {"model": str(Path(scratch) / "model"), "learning_rate_file": str(Path(scratch) / "lr.txt"),
                   "log": None, **config.params}
        rnn.init(config_filename=str(config_file), config_updates=updates, extra_greeting="repro-audit")
        engine = rnn.engine
        ledger = RandomLedger(module_of=lambda: None)
        build = DispatchCapture(ledger, lambda: None, record_ops=False, track_storage=True)
        create_model = engine._create_model

        def created_under_capture(**kwargs: Any) -> None:
            with build:
                create_model(**kwargs)

        engine._create_model = created_under_capture
        engine.init_train_from_config(rnn.config, rnn.train_data, rnn.dev_data, rnn.eval_data)
        model = engine.get_pt_model()
        initialisation = initialisation_record(model, build, ledger.take_entries(),
                                               seed=rnn.config.int("random_seed", 42))
        writer.write_json(fmt.INITIALISATION, per_op_seed_offsets(initialisation))
        structure: dict[str, Any] = {"modules": module_tree(model), "graph_steps": []}
        writer.write_json(fmt.STRUCTURE, structure)
        writer.write_json(fmt.ENVIRONMENT, returnn_environment(config, config_file=config_file))
        attached = EngineSteps(engine, config, writer, structure, ledger=ledger, progress=progress)
        loader = engine._train_dataloader
        engine._train_dataloader = FirstBatches(loader, config.steps * _micro_batches(rnn.config))
        try:
            engine.train()
        finally:
            engine._train_dataloader = loader  # RETURNN shuts its own loader down
            attached.close()
            rnn.finalize()
        # Modules imported during training belong to the code fingerprint too.
        writer.write_json(fmt.ENVIRONMENT, returnn_environment(config, config_file=config_file))


def per_op_seed_offsets(initialisation: dict[str, Any]) -> dict[str, Any]:
    """RETURNN's torch backend seeds a fresh generator for every random op from one seed sequence, so a
    tensor's seed offset is its draw's position in that sequence: a layer created earlier moves every later
    one (the offset within each fresh generator is always 0 and says nothing)."""
    position = {draw["generator"]: index for index, draw in enumerate(initialisation.get("draws") or [])
                if draw.get("offset_before") == 0}
    for tensor in initialisation.get("tensors") or []:
        if tensor.get("generator") in position and tensor.get("seed_offset") == 0:
            tensor["seed_offset"] = position[tensor["generator"]]
            tensor["generator"] = SEED_SEQUENCE
    initialisation.setdefault("generators", {})[SEED_SEQUENCE] = {
        "rule": "RETURNN seeds a fresh generator for every random op with the next seed of one sequence, in "
                "creation order: a tensor's seed offset is its position in that sequence"}
    return initialisation


def _micro_batches(returnn_config: Any) -> int:
    """Batches per optimizer update: `accum_grad_multiple_step` (a callable one is only known per step: 1)."""
    value = returnn_config.typed_dict.get("accum_grad_multiple_step", 1)
    return value if isinstance(value, int) and value > 1 else 1


class FirstBatches:
    """The engine's data loader, cut to the config's `steps` updates per epoch (RETURNN's epochs are long):
    with `accum_grad_multiple_step` N, N batches make one step, so the epoch ends on an update."""

    def __init__(self, loader: Any, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.steps)


class EngineSteps:
    """The step recorder around the engine's own train step and update."""

    def __init__(self, engine: Any, config: RunConfig, writer: TraceWriter, structure: dict[str, Any], *,
                 ledger: Any, progress: Callable[[int], None]) -> None:
        from repro_audit.probes.torch.step_recorder import TorchStepRecorder

        self.engine, self.writer, self.structure, self.progress = engine, writer, structure, progress
        self.scales: dict[str, float] = {}
        # Term attribution and NaN provenance look into a kept graph; RETURNN's backward does not keep it.
        capture = {**config.capture, "term_attribution": False, "nan_provenance": False}
        self.recorder = TorchStepRecorder(engine.get_pt_model(), engine.get_pt_optimizer(), capture=capture,
                                          weight_of=lambda term: self.scales.get(term, 1.0), ledger=ledger,
                                          watch_gradient_changes=True)
        self.steps = 0
        self.micro_batch = 0
        self.open = False
        self._run_step, self._update = engine._run_step, engine._updater.step
        engine._run_step = self.run_step
        engine._updater.step = self.update

    def run_step(self, extern_data: Any, **kwargs: Any) -> None:
        if not (kwargs.get("train_func") and kwargs.get("train_flag")):  # evaluation: not a training step
            self._run_step(extern_data, **kwargs)
            return
        if self.open:  # accum_grad_multiple_step: another forward and backward before the update
            self.micro_batch += 1
            self.recorder.next_micro_batch()
            self.recorder.add_batch(_batch(extern_data), micro_batch=self.micro_batch)
        else:
            self.steps += 1
            self.micro_batch = 1
            self.recorder.begin_step(self.steps, _batch(extern_data))
            self.open = True
        self._run_step(extern_data, **kwargs)
        self._loss_terms()

    def _loss_terms(self) -> None:
        """Every marked loss as a named term: its reduced value, weighted by its scale (0 where RETURNN
        leaves it out of the total: zero-scaled or reported as an error)."""
        import returnn.frontend as rf

        terms = {}
        for name, loss in rf.get_run_ctx().losses.items():
            reduced = loss.get_mean_loss() if loss.use_normalized_loss else loss.get_summed_loss()
            terms[name] = reduced.raw_tensor
            self.scales[name] = 0.0 if loss.as_error else float(loss.scale)
        self.recorder.combine_loss(terms)

    def update(self, **kwargs: Any) -> None:
        updater = self.engine._updater
        self.recorder.after_backward()
        self.recorder.note_update({"learning_rate": float(updater.get_effective_learning_rate()),
                                   "epoch": int(self.engine.epoch),
                                   "global_train_step": int(self.engine.global_train_step),
                                   **lr_control_state(self.engine)})
        self._update(**kwargs)
        graph = self.recorder.finish_graph()
        record = self.recorder.end_step()
        self.open = False
        if graph is not None:
            self.writer.write_graph(record["step"], graph)
            self.structure["graph_steps"].append(record["step"])
            self.writer.write_json(fmt.STRUCTURE, self.structure)
        values = self.recorder.values
        record["values"] = self.writer.write_values(record["step"], values) if values else None
        self.writer.append_step(record)
        self.progress(record["step"])

    def close(self) -> None:
        if self.open:
            self.recorder.abort_step()
        self.recorder.close()


def _batch(extern_data: Any) -> dict[str, Any]:
    """The batch as RETURNN hands it to the step: every data key's raw tensor and sequence lengths, and
    the sequence tags (as bytes)."""
    import torch

    from repro_audit.probes.returnn.batches import seq_tag_bytes

    batch: dict[str, Any] = {}
    for name, tensor in extern_data.data.items():
        raw = tensor.raw_tensor
        if isinstance(raw, torch.Tensor):
            batch[name] = raw
        elif name == "seq_tag" and raw is not None:
            batch["seq_tags"] = torch.from_numpy(seq_tag_bytes(raw))
        for dim in tensor.dims:
            if dim.dyn_size_ext is not None and isinstance(dim.dyn_size_ext.raw_tensor, torch.Tensor):
                batch[f"{name}:size:{dim.name}"] = dim.dyn_size_ext.raw_tensor
    return batch
