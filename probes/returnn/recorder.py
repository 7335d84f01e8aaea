"""Record a `framework: returnn` config: RETURNN's own engine trains, repro-audit's probes watch.

RETURNN owns the loop (batching, its updater with clipping and learning-rate control, the loss scales), so
the recorder attaches to it as attach mode attaches to a user's loop: around the engine's model creation,
its train step and its updater step (torch), or its session, updater and runner (TF net dict).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from repro_audit.audit.config import RunConfig
from repro_audit.audit.errors import ConfigError
from repro_audit.audit.trace import TraceWriter
from repro_audit.probes.returnn import require_returnn


def record_run(config: RunConfig, writer: TraceWriter, *, progress: Callable[[int], None]) -> None:
    require_returnn()
    assert config.returnn_config is not None
    folder = Path(config.config_dir or ".")
    config_file = (folder / config.returnn_config).resolve()
    if not config_file.is_file():
        raise ConfigError(f"{config.source or 'config'}: RETURNN config file not found: {config_file}")
    # The config's own imports (its model module) resolve next to it, as when RETURNN runs from that folder.
    sys.path.insert(0, str(config_file.parent))
    backend = _backend(config_file, config)
    if backend == "torch":
        from repro_audit.probes.returnn.torch_engine import record_torch_engine

        record_torch_engine(config, writer, config_file=config_file, progress=progress)
        return
    if backend == "tensorflow-net-dict":
        from repro_audit.probes.returnn.tf_engine import record_tf_engine

        record_tf_engine(config, writer, config_file=config_file, progress=progress)
        return
    raise ConfigError(f"{config.source or 'config'}: RETURNN backend {backend!r} is not supported yet "
                      f"(supported: torch, tensorflow-net-dict)")


def _backend(config_file: Path, config: RunConfig) -> str:
    from returnn.config import Config

    returnn_config = Config()
    returnn_config.load_file(str(config_file))
    backend = config.params.get("backend", returnn_config.value("backend", None))
    return str(backend)
