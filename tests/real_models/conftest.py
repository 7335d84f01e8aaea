"""Recordings of the real architectures, made once per session and shared by every test that reads them.

Every run is a real worker subprocess, as `repro-audit` makes them; `check` runs go through the CLI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from repro_audit.audit.config import load_config
from repro_audit.audit.executors.local import record_all
from repro_audit.audit.trace import Trace

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
CHECK_RUNS = 10
STEPS = 2

# name -> (recipe, params, loss_weights)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, float]]] = {
    "resnet_aux": ("resnet", {"aux_head": True}, {"aux_ce": 0.0}),
    "resnet_momentum": ("resnet", {"bn_momentum": 0.5}, {}),
    "resnet_fc_first": ("resnet", {"fc_first": True}, {}),
    "resnet_onecycle_a": ("resnet", {"max_lr": 0.1}, {}),
    "resnet_onecycle_b": ("resnet", {"max_lr": 0.2}, {}),
    "encoder_probe": ("encoder", {"probe_branch": True}, {"probe": 0.0}),
    "encoder_data": ("encoder", {"data_seed": 2}, {}),
    "tied_lm_entropy": ("tied_lm", {"attention_entropy": True}, {"attention_entropy": 0.0}),
    "tied_lm_untied": ("tied_lm", {"tie": False}, {}),
    "gpt2": ("gpt2", {}, {}),
    "gpt2_value_head": ("gpt2", {"value_head": True}, {"value": 0.0}),
    "gpt2_clip": ("gpt2", {"clip_grad_norm": 0.1}, {}),
}
HF_RECIPES = ("gpt2", "bert")
# Keras models (keras_architectures.py): name -> (recipe, params, loss_weights); every one is recorded once.
KERAS_VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, float]]] = {
    "mobilenet_momentum": ("mobilenet", {"bn_momentum": 0.5}, {}),
    "transformer_noise": ("transformer", {"noise_branch": True, "mode": "eager"}, {"noise": 0.0}),
    "transformer_probe_first": ("transformer", {"probe_first": True, "mode": "eager"}, {}),
    "transformer_decay": ("transformer", {"decay": 0.1, "probe_first": True, "mode": "eager"}, {}),
    "transformer_decay_probe": ("transformer", {"decay": 0.1, "probe_term": True, "mode": "eager"}, {"probe": 0.0}),
}
# (recipe, mode) -> how many runs `check` makes: ten for one model per mode, two for the other pairs.
KERAS_CHECKS: dict[tuple[str, str], int] = {
    ("mobilenet", "function"): 10, ("transformer", "eager"): 10, ("graph_transformer", "graph"): 10,
    ("mobilenet", "eager"): 2, ("transformer", "function"): 2,
}


def write_config(folder: Path, name: str, recipe: str, params: dict[str, Any], weights: dict[str, float], *,
                 keras: bool = False) -> Path:
    path = folder / f"{name}.yaml"
    fields = {"recipe": f"{'keras_architectures' if keras else 'architectures'}:{recipe}", "seed": 0,
              "steps": STEPS, "params": params, "loss_weights": weights, "label": name}
    if keras:
        fields["framework"] = "tensorflow"
    path.write_text(yaml.safe_dump(fields), encoding="utf-8")
    return path


def needs(recipe: str) -> None:
    if recipe in HF_RECIPES and not HAS_TRANSFORMERS:
        pytest.skip("transformers is not installed (pip install 'repro-audit[test]')")


@pytest.fixture(scope="session")
def architecture_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("architectures")
    shutil.copy(HERE / "architectures.py", folder / "architectures.py")
    shutil.copy(HERE / "keras_architectures.py", folder / "keras_architectures.py")
    return folder


@pytest.fixture(scope="session")
def checked(architecture_folder: Path) -> Callable[[str], tuple[subprocess.CompletedProcess[str], list[Path]]]:
    """`repro-audit check` of a baseline over CHECK_RUNS runs (made on first use), and its kept traces."""
    done: dict[str, tuple[subprocess.CompletedProcess[str], list[Path]]] = {}

    def check(recipe: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
        needs(recipe)
        if recipe not in done:
            config = write_config(architecture_folder, recipe, recipe, {}, {})
            keep = architecture_folder / f"{recipe}-check"
            completed = subprocess.run(
                [sys.executable, "-m", "repro_audit.audit.cli_main", "check", str(config), "--runs", str(CHECK_RUNS), "-q",
                 "--keep", str(keep)], capture_output=True, text=True, cwd=architecture_folder, env=_env())
            done[recipe] = (completed, sorted(keep.glob("*.trace"), key=lambda p: int(p.name.split("-")[0])))
        return done[recipe]

    return check


@pytest.fixture(scope="session")
def keras_checked(architecture_folder: Path) -> Callable[[str, str], tuple[subprocess.CompletedProcess[str], list[Path]]]:
    """`repro-audit check` of a Keras baseline in one mode (KERAS_CHECKS says how many runs), and its traces.
    `graph_transformer` is the tf.compat.v1 Transformer of fixtures/configs/tf (graph mode has no Keras 3)."""
    pytest.importorskip("tensorflow")
    done: dict[tuple[str, str], tuple[subprocess.CompletedProcess[str], list[Path]]] = {}

    def check(recipe: str, mode: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
        if (recipe, mode) not in done:
            if recipe == "graph_transformer":
                config = ROOT / "fixtures" / "configs" / "tf" / "graph_baseline.yaml"
                extra = ["--steps", str(STEPS)]
            else:
                config = write_config(architecture_folder, f"keras-{recipe}-{mode}", recipe, {"mode": mode}, {},
                                      keras=True)
                extra = []
            keep = architecture_folder / f"keras-{recipe}-{mode}-check"
            completed = subprocess.run(
                [sys.executable, "-m", "repro_audit.audit.cli_main", "check", str(config), "--runs",
                 str(KERAS_CHECKS[recipe, mode]), "-q", "--keep", str(keep), *extra],
                capture_output=True, text=True, cwd=architecture_folder, env=_env())
            done[recipe, mode] = (completed, sorted(keep.glob("*.trace"), key=lambda p: int(p.name.split("-")[0])))
        return done[recipe, mode]

    return check


@pytest.fixture(scope="session")
def keras_variant_traces(architecture_folder: Path) -> dict[str, Trace]:
    """Every Keras variant recorded once, two at a time."""
    pytest.importorskip("tensorflow")
    jobs = [(load_config(write_config(architecture_folder, name, recipe, params, weights, keras=True)),
             architecture_folder / f"{name}.trace") for name, (recipe, params, weights) in KERAS_VARIANTS.items()]
    results = record_all(jobs)
    failed = [result.failure_line() for result in results if not result.ok]
    assert not failed, failed
    return {path.stem: Trace(path) for _, path in jobs}


@pytest.fixture(scope="session")
def variant_traces(architecture_folder: Path) -> dict[str, Trace]:
    """Every variant recorded once, two at a time."""
    jobs = []
    for name, (recipe, params, weights) in VARIANTS.items():
        if recipe in HF_RECIPES and not HAS_TRANSFORMERS:
            continue
        config = load_config(write_config(architecture_folder, name, recipe, params, weights))
        jobs.append((config, architecture_folder / f"{name}.trace"))
    results = record_all(jobs)
    failed = [result.failure_line() for result in results if not result.ok]
    assert not failed, failed
    return {path.stem: Trace(path) for _, path in jobs}


@pytest.fixture(scope="session")
def baseline(checked: Callable[[str], tuple[Any, list[Path]]], variant_traces: dict[str, Trace]) -> Callable[[str], Trace]:
    """The A side of every variant's comparison: run 1 of the model's check, or (GPT-2, whose check is
    BERT's) its plain recording."""
    return lambda recipe: variant_traces[recipe] if recipe in variant_traces else Trace(checked(recipe)[1][0])


@pytest.fixture(scope="session")
def attach_traces(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[Path]]:
    """Traces of the attach-mode loop (tests/real_models/attach_loop.py) run as a script."""
    folder = tmp_path_factory.mktemp("attach")
    made: dict[tuple[str, ...], list[Path]] = {}

    def run(*args: str, times: int = 1) -> list[Path]:
        if args not in made:
            paths = [folder / f"{'_'.join(a.strip('-') for a in args) or 'plain'}-{i}.trace" for i in range(times)]

            def one(path: Path) -> None:
                completed = subprocess.run([sys.executable, str(HERE / "attach_loop.py"), str(path), *args],
                                           capture_output=True, text=True, env=_env())
                assert completed.returncode == 0, completed.stderr[-2000:]

            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(one, paths))
            made[args] = paths
        return made[args]

    return run


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
