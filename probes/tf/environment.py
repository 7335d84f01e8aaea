"""The TensorFlow section of the environment fingerprint: versions, devices, threads, determinism flags."""

from __future__ import annotations

import os
from typing import Any

from repro_audit.probes.common.environment import base_environment
from repro_audit.probes.common.native_summary import kernel
from repro_audit.probes.tf.summary_op import loaded as summary_op_loaded


def tf_environment(*, recipe_dir: str | None) -> dict[str, Any]:
    import tensorflow as tf

    environment = base_environment(recipe_dir=recipe_dir)
    build = _build_info(tf)
    environment["framework"] = {
        "name": "tensorflow",
        "version": tf.__version__,
        "git_version": getattr(tf.version, "GIT_VERSION", None),
        "keras": _keras_version(),
        "keras_backend": _keras_backend(),
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "devices": _devices(tf),
        "floatx": _floatx(),
    }
    environment["threads"] = {
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "note": "0 means TensorFlow picks the number of cores",
    }
    environment["determinism"] = {
        "op_determinism": _op_determinism(),
        "tf_deterministic_ops_env": os.environ.get("TF_DETERMINISTIC_OPS"),
        "tf_cudnn_deterministic_env": os.environ.get("TF_CUDNN_DETERMINISTIC"),
        "onednn_opts_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "tensor_float_32": _tf32(tf),
    }
    # Which code summarised the tensors: numbers are the same either way (docs/trace-format.md).
    environment["summary_kernel"] = "native" if kernel() is not None else "tensorflow"
    environment["summary_op"] = summary_op_loaded()
    return environment


def _op_determinism() -> bool | None:
    # Public only as enable/disable; the query lives in tensorflow.python.framework.config.
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):
        return None


def _tf32(tf: Any) -> bool | None:
    try:
        return bool(tf.config.experimental.tensor_float_32_execution_enabled())
    except AttributeError:
        return None


def _build_info(tf: Any) -> dict[str, Any]:
    try:
        return dict(tf.sysconfig.get_build_info())
    except Exception:  # not every build exposes it
        return {}


def _devices(tf: Any) -> list[dict[str, Any]]:
    devices = []
    for device in tf.config.list_physical_devices():
        record: dict[str, Any] = {"type": device.device_type.lower(), "name": device.name}
        if device.device_type == "GPU":
            try:
                details = tf.config.experimental.get_device_details(device)
                record["model"] = details.get("device_name")
                capability = details.get("compute_capability")
                record["capability"] = ".".join(str(n) for n in capability) if capability else None
            except Exception:
                pass
        devices.append(record)
    return devices


def _keras_version() -> str | None:
    try:
        import keras

        return str(keras.__version__)
    except ImportError:
        return None


def _keras_backend() -> str | None:
    try:
        import keras

        return str(keras.backend.backend())
    except ImportError:
        return None


def _floatx() -> str | None:
    try:
        import keras

        return str(keras.backend.floatx())
    except ImportError:
        return None
