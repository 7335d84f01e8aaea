"""The torch section of the environment fingerprint: versions, devices, threads, determinism flags."""

from __future__ import annotations

from typing import Any

import torch

from repro_audit.probes.common.environment import base_environment
from repro_audit.probes.common.native_summary import kernel


def torch_environment(*, recipe_dir: str | None) -> dict[str, Any]:
    environment = base_environment(recipe_dir=recipe_dir)
    environment["framework"] = {
        "name": "torch",
        "version": torch.__version__,
        "git_version": getattr(torch.version, "git_version", None),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": _devices(),
        "default_dtype": str(torch.get_default_dtype()).replace("torch.", ""),
    }
    # Which code summarised tensors: hashes are the same either way, sums and norms only up to rounding.
    environment["summary_kernel"] = "native" if kernel() is not None else "torch"
    environment["threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    environment["determinism"] = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    return environment


def _devices() -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = [{"type": "cpu", "name": "cpu"}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"type": "cuda", "index": index, "name": props.name,
                            "capability": f"{props.major}.{props.minor}"})
    return devices
