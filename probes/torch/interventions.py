"""Neutralise one mechanism in a torch run, for `--verify` (the spec: audit/verify/spec.py).

Each intervention undoes one way a change reaches the shared numbers: run A's initial values for the shared
parameters (seed-offset shift), run A's generator state after build (a stream moved by build-time draws),
a private generator for modules only run B has (a stream moved by their draws in training), a term left out
of the total (NaN through a term), run A's optimizer settings (a hyper-parameter change).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from repro_audit.audit.errors import RunFailed
from repro_audit.audit.trace import Trace

RNG_KEY = "rng_after_build/"  # values file 0 of a run that keeps values: its generator states after build
PRIVATE_SEED = 0x5EED  # where the private generator of run-B-only modules starts


def generator_states() -> dict[str, np.ndarray]:
    """The default generators' states (CPU, each CUDA device), as values files keep them."""
    states = {f"{RNG_KEY}cpu": torch.get_rng_state().numpy().copy()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"{RNG_KEY}cuda{index}"] = state.numpy().copy()
    return states


class TorchInterventions:
    """The interventions of one run's config; each method does nothing when its intervention is not set."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.dropped_terms = frozenset(self.spec.get("drop_terms") or ())
        self._reference: Any = None
        self._trace: Trace | None = None

    def _initial(self) -> Any:
        if self._reference is None:
            trace = Trace(self.spec["reference_trace"])
            self._reference = trace.values(0)
            if self._reference is None:
                raise RunFailed(f"--verify: reference trace {trace.path} kept no initial values")
        return self._reference

    def load_initial_values(self, model: torch.nn.Module) -> list[str]:
        """Shared parameters and buffers take run A's initial values; returns the names that did."""
        if not self.spec.get("initial_values"):
            return []
        reference = self._initial()
        loaded = []
        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=True).items():
                value = reference.get(f"initial/{name}")
                if value is not None and tuple(value.shape) == tuple(tensor.shape):
                    tensor.copy_(torch.from_numpy(np.array(value)))
                    loaded.append(name)
        return loaded

    def set_generators(self) -> None:
        """The default generators take the state run A's had after build."""
        if not self.spec.get("rng_after_build"):
            return
        reference = self._initial()
        cpu = reference.get(f"{RNG_KEY}cpu")
        if cpu is None:
            raise RunFailed("--verify: the reference trace kept no generator state after build")
        torch.set_rng_state(torch.from_numpy(np.array(cpu)))
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            state = reference.get(f"{RNG_KEY}cuda{index}")
            if state is not None:
                torch.cuda.set_rng_state(torch.from_numpy(np.array(state)), index)

    def batch(self, step: int, batch: Any) -> Any:
        """Run A's batch of this step in run B's batch structure (tensors matched by their path)."""
        if not self.spec.get("batches"):
            return batch
        if self._trace is None:
            self._trace = Trace(self.spec["reference_trace"])
        values = self._trace.values(step)
        if values is None:
            raise RunFailed(f"--verify: the reference trace kept no batch values at step {step}")
        return _replaced(batch, "", values)

    def apply_hyperparameters(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Run A's optimizer settings of this step, set just before the update."""
        for group, values in (self.spec.get("hyperparameters") or {}).get(str(step), {}).items():
            settings = optimizer.param_groups[int(group)]
            for key, value in values.items():
                if isinstance(settings.get(key), torch.Tensor):
                    settings[key].fill_(value)
                else:
                    settings[key] = value

    @contextmanager
    def private_generators(self, model: torch.nn.Module) -> Iterator[None]:
        """While active, the named modules' forward passes draw from a generator of their own."""
        names = set(self.spec.get("private_rng_modules") or ())
        modules = dict(model.named_modules())
        outermost = [name for name in sorted(names) if name in modules
                     and not any(name.startswith(other + ".") for other in names if other != name)]
        if not outermost:
            yield
            return
        private = PrivateGenerator()
        handles = []
        for name in outermost:
            handles.append(modules[name].register_forward_pre_hook(lambda *_: private.enter()))
            handles.append(modules[name].register_forward_hook(lambda *_: private.leave()))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _replaced(value: Any, prefix: str, values: Any) -> Any:
    """`value` with each tensor replaced by the kept one at its path (as repro_audit.probes.torch.tensors names it)."""
    if isinstance(value, torch.Tensor):
        kept = values.get(f"batch/{prefix or '0'}")
        if kept is None or tuple(kept.shape) != tuple(value.shape):
            raise RunFailed(f"--verify: run A's batch has no tensor {prefix or '0'!r} of shape {tuple(value.shape)}")
        return torch.from_numpy(np.array(kept)).to(dtype=value.dtype, device=value.device)
    if isinstance(value, dict):
        return type(value)({key: _replaced(item, f"{prefix}.{key}" if prefix else str(key), values)
                            for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        items = [_replaced(item, f"{prefix}.{index}" if prefix else str(index), values)
                 for index, item in enumerate(value)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


class PrivateGenerator:
    """Swaps the default CPU generator's state for a private one and back; nested calls swap once."""

    def __init__(self) -> None:
        self._state = torch.Generator().manual_seed(PRIVATE_SEED).get_state()
        self._saved: torch.Tensor | None = None
        self._depth = 0

    def enter(self) -> None:
        self._depth += 1
        if self._depth == 1:
            self._saved = torch.get_rng_state()
            torch.set_rng_state(self._state)

    def leave(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._saved is not None:
            self._state = torch.get_rng_state()
            torch.set_rng_state(self._saved)
            self._saved = None
