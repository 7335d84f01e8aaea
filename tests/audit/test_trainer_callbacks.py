"""The HuggingFace Trainer and Lightning callbacks record the trace a recipe run of the same model records.

Optional extras (`pip install 'repro-audit[trainers]'`): skipped, with the install line, where missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from repro_audit.audit.config import load_config
from repro_audit.audit.diff import compare_traces
from repro_audit.audit.diff.compare_ranks import compare_ranks
from repro_audit.audit.runner import record
from repro_audit.audit.trace import Trace
from repro_audit.audit.trace.ranks import open_ranks

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "torch" / "ddp"
# What the trainers' own loops change, and the inputs that differ by construction (config, script, packages):
# everything a step computes (data, loss terms, gradients, optimizer, parameters) must match bitwise.
LOOP_CATEGORIES = ("environment", "code", "config", "graph", "random_draws")
STEP_RESULTS = ("data", "loss_terms", "gradients", "optimizer", "parameters", "module_outputs")


@pytest.fixture(scope="module")
def recipe_trace(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    path = tmp_path_factory.mktemp("recipe") / "recipe.trace"
    result = record(load_config(FIXTURES / "trainer_mlp.yaml"), path)
    assert result.ok, result.failure_line()
    return Trace(path)


@pytest.fixture()
def trainer_models():
    sys.path.insert(0, str(FIXTURES))
    try:
        import trainer_models

        yield trainer_models
    finally:
        sys.path.remove(str(FIXTURES))


def _same_steps(recipe: Trace, other: Trace) -> None:
    comparison = compare_traces(recipe, other, ignore=("environment", "code", "config"))
    for category in STEP_RESULTS:
        counts = comparison.category_counts[category]
        assert counts["compared"] > 0 and counts["diverged"] == 0, (category, counts)
    assert {d.category for d in comparison.divergences} <= set(LOOP_CATEGORIES)
    assert len(other.steps) == len(recipe.steps) == 3


def test_huggingface_trainer_callback_records_what_the_recipe_records(recipe_trace, trainer_models, tmp_path) -> None:
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate: pip install 'repro-audit[trainers]'")
    transformers = pytest.importorskip("transformers", reason="pip install 'repro-audit[trainers]'")
    import torch

    from repro_audit.audit.hf import AuditTrainerCallback

    torch.manual_seed(0)
    model = trainer_models.MlpWithLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer_models.LR)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=trainer_models.BATCH, max_steps=3,
        max_grad_norm=0.0, lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
        logging_strategy="no", seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=trainer_models.Examples(),
                                   optimizers=(optimizer, None),
                                   callbacks=[AuditTrainerCallback(tmp_path / "hf.trace", seed=0)])
    trainer.train()
    hf = Trace(tmp_path / "hf.trace")
    assert hf.complete and hf.steps[0]["loss_terms"]["loss"]["weight"] == 1.0
    _same_steps(recipe_trace, hf)
    # The Trainer re-seeds at init (set_seed(args.seed)), after the model was built: its training draws
    # start elsewhere in the stream, which the comparison names.
    comparison = compare_traces(recipe_trace, hf, ignore=("environment", "code", "config"))
    assert comparison.first_divergence is not None and comparison.first_divergence.cause == "random_stream_shift"


def test_lightning_callback_records_what_the_recipe_records(recipe_trace, trainer_models, tmp_path) -> None:
    pl = pytest.importorskip("lightning.pytorch", reason="pip install 'repro-audit[trainers]'")
    import torch

    from repro_audit.audit.lightning import AuditLightningCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = trainer_models.MlpWithLoss()

        def training_step(self, batch, batch_idx):
            return self.model(**batch)["loss"]

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.model.parameters(), lr=trainer_models.LR)
            return {"optimizer": optimizer,
                    "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)}

    torch.manual_seed(0)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[AuditLightningCallback(tmp_path / "pl.trace", seed=0, module="model")])
    trainer.fit(Lit(), trainer_models.loader())
    lightning_trace = Trace(tmp_path / "pl.trace")
    assert lightning_trace.complete
    _same_steps(recipe_trace, lightning_trace)


def test_huggingface_trainer_callback_records_each_rank_under_torchrun(tmp_path) -> None:
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate: pip install 'repro-audit[trainers]'")
    pytest.importorskip("transformers", reason="pip install 'repro-audit[trainers]'")
    _torchrun_two_ranks("hf_trainer_ddp.py", tmp_path / "run.trace")
    ranks = open_ranks(tmp_path / "run.trace")
    assert [(t.environment["distributed"]["rank"], t.environment["distributed"]["world_size"]) for t in ranks] \
        == [(0, 2), (1, 2)]
    comparison = compare_ranks(ranks, label="hf")
    # DDP kept the ranks equal and accelerate gave each rank its own shard; the examples come unshuffled, so
    # the second epoch (step 3) repeats the first on every rank, and that is what is found.
    assert comparison.category_counts["parameters"]["diverged"] == 0
    assert comparison.category_counts["optimizer"]["diverged"] == 0
    found = [(d.step, d.evidence["rank"], d.cause) for d in comparison.divergences]
    assert found == [(3, 0, "epoch_repeat"), (3, 1, "epoch_repeat")]


def test_lightning_callback_records_each_rank_under_torchrun(tmp_path) -> None:
    pytest.importorskip("lightning.pytorch", reason="pip install 'repro-audit[trainers]'")
    _torchrun_two_ranks("lightning_ddp.py", tmp_path / "run.trace")
    ranks = open_ranks(tmp_path / "run.trace")
    facts = [trace.environment["distributed"] for trace in ranks]
    assert [(f["rank"], f["world_size"], f["backend"]) for f in facts] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert all(trace.complete and len(trace.steps) == 3 for trace in ranks)
    # Lightning's DDP kept the ranks bitwise equal, and its DistributedSampler (reshuffled each epoch) gave
    # each rank its own shard: the cross-rank check finds nothing, having compared every step.
    comparison = compare_ranks(ranks, label="lightning")
    assert comparison.category_counts["parameters"] == {"compared": 12, "diverged": 0}
    assert comparison.category_counts["optimizer"]["compared"] > 0
    assert comparison.divergences == []
    hashes = [[step["batch"]["hash"] for step in trace.steps] for trace in ranks]
    assert not set(hashes[0]) & set(hashes[1]) and len(set(hashes[0])) == 3


def _torchrun_two_ranks(script: str, trace: Path) -> None:
    """Run a trainer script of fixtures/configs/torch/ddp under torchrun with 2 ranks, as users launch it."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                str(FIXTURES / script), str(trace)], env=env, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
