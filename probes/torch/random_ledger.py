"""The ledger of random draws: every random op, with its module, generator, count and RNG position.

`offset_before` counts values drawn from a generator since the run started: the CPU Mersenne Twister has
no readable offset, so we count what each random op draws. The dispatch-level capture (build and step 1)
sees every random aten op; later steps use light wrappers around the Python-level random functions, which
cost a few microseconds per draw instead of a dispatch mode's tens of microseconds per op.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from probes.common.hashing import hash_bytes


class RandomLedger:
    """Counts draws per generator and keeps the entries of the current phase."""

    def __init__(self, module_of: Callable[[], str | None]) -> None:
        self.module_of = module_of
        self.offsets: dict[str, int] = {}
        self.entries: list[dict[str, Any]] = []
        self.phase = "build"
        self.inside_wrapper = False
        self._custom_names: dict[int, str] = {}
        self.custom_generators: list[torch.Generator] = []  # kept so a replayed step can rewind them too
        # (owner, name) -> (original, its wrapper): made once, put in place at every step
        self.wrappers: dict[tuple[Any, str], tuple[Any, Callable[..., Any]]] = {}

    def take_entries(self) -> list[dict[str, Any]]:
        entries, self.entries = self.entries, []
        return entries

    def generator_name(self, generator: torch.Generator | None, device: torch.device | None) -> str:
        if generator is None:
            if device is None or device.type == "cpu":
                return "cpu"
            return f"{device.type}:{device.index or 0}"
        if generator is torch.default_generator:
            return "cpu"
        key = id(generator)
        if key not in self._custom_names:
            self._custom_names[key] = f"generator{len(self._custom_names) + 1}:{generator.device}"
            self.custom_generators.append(generator)
        return self._custom_names[key]

    def fingerprint(self, generator: torch.Generator | None, device: torch.device | None) -> str:
        state = self.state(generator, device)
        return "unavailable" if state is None else hash_bytes(state)

    def state(self, generator: torch.Generator | None, device: torch.device | None) -> np.ndarray | None:
        """The generator's raw state, or None where it cannot be read."""
        try:
            if generator is not None:
                state = generator.get_state()
            elif device is None or device.type == "cpu":
                state = torch.default_generator.get_state()
            elif device.type == "cuda":
                state = torch.cuda.get_rng_state(device)
            else:
                return None
        except RuntimeError:
            return None
        return state.numpy()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Draws made inside the block (a replayed forward pass) leave no entry and move no offset."""
        offsets, count = dict(self.offsets), len(self.entries)
        try:
            yield
        finally:
            self.offsets = offsets
            del self.entries[count:]

    def record(self, *, op: str, count: int, generator: str, fingerprint: str,
               target: int | None = None) -> dict[str, Any]:
        offset = self.offsets.get(generator, 0)
        entry = {
            "index": len(self.entries),
            "op": op,
            "module": self.module_of(),
            "phase": self.phase,
            "generator": generator,
            "count": int(count),
            "offset_before": offset,
            "rng_fingerprint": fingerprint,
        }
        if target is not None:
            entry["target_storage"] = target
        self.offsets[generator] = offset + int(count)
        self.entries.append(entry)
        return entry


# Python-level random functions wrapped on steps without a dispatch mode. Module-level functions are
# looked up at call time by nn.Dropout and friends, so replacing the attribute is enough.
_FUNCTIONAL = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
               "gumbel_softmax", "rrelu")
_TORCH = ("rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal", "poisson",
          "rand_like", "randn_like", "randint_like", "dropout", "alpha_dropout", "feature_dropout")
_TENSOR = ("uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_", "log_normal_",
           "cauchy_", "bernoulli", "multinomial")


# Whether a dropout call draws is known from its arguments (torch returns the input, or zeros, without
# drawing for p = 0, p = 1, eval mode and empty inputs), so a step's some thirty dropout calls read the
# generator state once each, not twice. Per label: the names of its `p` and training arguments, and
# whether the function has defaults for them (p=0.5, training=True).
_DROPOUT_ARGUMENTS: dict[str, tuple[str, str, bool]] = {
    **{f"F.{name}": ("p", "training", True)
       for name in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")},
    **{f"torch.{name}": ("p", "train", False) for name in ("dropout", "alpha_dropout", "feature_dropout")},
}


@contextmanager
def python_random_wrappers(ledger: RandomLedger) -> Iterator[None]:
    """Record draws made through torch's Python-level random functions while the context is open.

    Entered at every step: each wrapper is made once per ledger and function (some thirty
    `functools.wraps` a step otherwise), and made again only where the function in place has changed."""
    originals: list[tuple[Any, str, Any]] = []
    targets = ([(torch.nn.functional, name, f"F.{name}") for name in _FUNCTIONAL]
               + [(torch, name, f"torch.{name}") for name in _TORCH]
               + [(torch.Tensor, name, f"Tensor.{name}") for name in _TENSOR])
    for owner, name, label in targets:
        original = getattr(owner, name, None)
        if original is None:
            continue
        made = ledger.wrappers.get((owner, name))
        if made is None or made[0] is not original:
            made = ledger.wrappers[(owner, name)] = (original, _wrap(original, label, ledger))
        originals.append((owner, name, original))
        setattr(owner, name, made[1])
    try:
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def _wrap(function: Callable[..., Any], label: str, ledger: RandomLedger) -> Callable[..., Any]:
    dropout = _DROPOUT_ARGUMENTS.get(label)

    @functools.wraps(function)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        if ledger.inside_wrapper:  # gumbel_softmax calls Tensor.exponential_: count the outer call only
            return function(*args, **kwargs)
        draws = _dropout_draws(dropout, args, kwargs) if dropout is not None else None
        if draws is False:
            return function(*args, **kwargs)
        generator = kwargs.get("generator")
        device = _device_of(args, kwargs)
        before = ledger.state(generator, device)
        ledger.inside_wrapper = True
        try:
            result = function(*args, **kwargs)
        finally:
            ledger.inside_wrapper = False
        if draws is None:
            # Other functions may draw nothing (a zero-size sample): only a moved generator is a draw. The
            # states are compared as bytes (a third of np.array_equal's cost); only the one before the
            # draw is hashed, for the entry.
            after = ledger.state(generator, device)
            if before is None or after is None:
                draws = (before is None) != (after is None)
            else:
                draws = before.tobytes() != after.tobytes()
        if draws:
            count = result.numel() if isinstance(result, torch.Tensor) else 0
            ledger.record(op=label, count=count, generator=ledger.generator_name(generator, device),
                          fingerprint="unavailable" if before is None else hash_bytes(before))
        return result

    return recorded


def _dropout_draws(names: tuple[str, str, bool], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    """Whether a dropout call draws, from its arguments; None where they are not plain numbers and flags."""
    p_name, training_name, defaults = names
    p = args[1] if len(args) > 1 else kwargs.get(p_name, 0.5 if defaults else None)
    training = args[2] if len(args) > 2 else kwargs.get(training_name, True if defaults else None)
    tensor = args[0] if args else kwargs.get("input")
    if type(p) not in (float, int) or type(training) is not bool or not isinstance(tensor, torch.Tensor):
        return None
    return training and 0 < p < 1 and tensor.numel() > 0


def _device_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    device = kwargs.get("device")
    return torch.device(device) if device is not None else None
