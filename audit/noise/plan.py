"""Which runs a noise band needs: one config, K seeds, varying initialisation, data order or both.

`seed` drives everything the runner seeds before the recipe builds (initial values, dropout); the data order
is the recipe's, so it is varied through the config's `data_order_seed`, which the recipe receives as a
keyword argument (audit/recipe.py: call_recipe). The runs keep parameter values at every step (the distance
from the seed-0 run needs them) and leave out what a band does not read (op graphs, module outputs, random
draws, NaN provenance, term attribution, health), which would only slow K runs down.
"""

from __future__ import annotations

import copy
from pathlib import Path

from repro_audit.audit.config import MAX_SEED, RunConfig
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.executors.base import RunJob
from repro_audit.audit.outputs import trace_file_name

VARY = ("init", "data", "all")
NOISE_CAPTURE = {"values": "all", "graph": False, "module_outputs": False, "random_draws": False,
                 "nan_provenance": False, "term_attribution": False, "health": False}


def seeded_configs(config: RunConfig, *, seeds: int, vary: str, steps: int | None = None) -> list[RunConfig]:
    """K copies of `config`; copy i has seed `seed + i` (init, all) and data order `data_order_seed + i`
    (data, all; the order starts at 0 when the config sets none)."""
    if vary not in VARY:
        raise ConfigError(f"--vary must be one of {', '.join(VARY)}, got {vary!r}")
    if seeds < 2:
        raise ConfigError(f"a seed-to-seed spread needs at least 2 seeds, got {seeds}")
    if vary != "data" and config.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(f"seed {config.seed} + {seeds - 1} runs past {MAX_SEED}: give a smaller seed")
    runs = []
    for index in range(seeds):
        run = copy.deepcopy(config)
        if vary in ("init", "all"):
            run.seed = config.seed + index
        if vary in ("data", "all"):
            run.data_order_seed = (config.data_order_seed or 0) + index
        if steps is not None:
            run.steps = steps
        run.capture = dict(NOISE_CAPTURE)
        run.label = f"{config.label} seed {index}"
        runs.append(run)
    return runs


def noise_jobs(configs: list[RunConfig], folder: Path, *, prefix: str) -> list[RunJob]:
    return [RunJob(config, folder / trace_file_name(config.label, prefix=f"{prefix}{index}-"))
            for index, config in enumerate(configs)]
