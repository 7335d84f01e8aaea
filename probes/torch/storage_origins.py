"""Where each storage's values came from while the recipe builds the model: creation, fills, copies.

Storages are known by their address only while they live: a freed temporary's address is soon another
tensor's. So everything is resolved eagerly, at the op that happens: a whole copy (`model.to(...)`,
`weight.copy_(init)`) hands the target a copy of the source's origin at that moment, never a pointer to
an address that may later belong to someone else (which made creation order depend on the allocator, and
two runs of one model disagree). What a tensor holds is what the last whole write put there: a model whose
weights a library initialises twice (HuggingFace's `_init_weights` after `nn.Linear`'s own) has the
values, and the seed offset, of the second fill.
"""

from __future__ import annotations

from typing import Any

import torch

COPY_OPS = frozenset({"aten::_to_copy", "aten::copy_", "aten::clone", "aten::_copy_from", "aten::lift_fresh_copy"})
# In-place writes that replace every value of a storage without drawing.
RESET_OPS = frozenset({"aten::zero_", "aten::fill_"})


def storage_key(tensor: torch.Tensor) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return 0


class StorageOrigins:
    """Per live storage: its creation event and the fill its values come from (docs/trace-format.md)."""

    def __init__(self) -> None:
        self.event = 0
        self.origins: dict[int, dict[str, Any]] = {}

    def observe(self, name: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor],
                random_entry: dict[str, Any] | None, offsets: dict[str, int]) -> None:
        """One op: `random_entry` is its ledger entry where it drew, `offsets` the ledger's offsets now."""
        self.event += 1
        input_keys = {storage_key(t) for t in inputs}
        for position, tensor in enumerate(outputs):
            key = storage_key(tensor)
            if not key:
                continue
            if key not in input_keys:
                self._created(key, name, tensor, inputs, offsets)
            else:
                self._written(key, name, tensor, inputs, offsets, random_entry if position == 0 else None)
        if random_entry is not None and not outputs and inputs:
            self._written(storage_key(inputs[0]), name, inputs[0], inputs, offsets, random_entry)
        if random_entry is not None:
            filled = outputs[0] if outputs else inputs[0] if inputs else None
            origin = self.origins.get(storage_key(filled)) if filled is not None else None
            if origin is not None:
                random_entry["target_origin"] = list(origin["storage"])  # which storage's values it drew

    def origin(self, key: int) -> dict[str, Any] | None:
        return self.origins.get(key)

    def _created(self, key: int, name: str, tensor: torch.Tensor, inputs: list[torch.Tensor],
                 offsets: dict[str, int]) -> None:
        """A new storage, or a new one at a freed address: what was known of the old one is gone."""
        source = self.origins.get(storage_key(inputs[0])) if inputs else None
        if name in COPY_OPS and source is not None and _whole_copy(tensor, inputs[0]):
            self.origins[key] = dict(source)
            return
        self.origins[key] = {"event": self.event, "storage": [key, self.event], "op": name, "fill": None,
                             "fill_op": name, "fill_offsets": dict(offsets)}

    def _written(self, key: int, name: str, tensor: torch.Tensor, inputs: list[torch.Tensor],
                 offsets: dict[str, int], random_entry: dict[str, Any] | None) -> None:
        origin = self.origins.get(key)
        if origin is None:
            return  # made before the capture started
        whole = _covers_storage(tensor)
        if random_entry is not None:
            if whole or origin["fill"] is None:
                origin.update(fill=random_entry, fill_op=name, fill_offsets=dict(offsets))
            return
        if name in COPY_OPS and len(inputs) > 1 and _whole_copy(tensor, inputs[1]):
            # Only a copy of a whole tensor gives this storage the source's values; a copy into a slice
            # (`table[:, 0::2] = ...`) writes part of it from a temporary.
            source = self.origins.get(storage_key(inputs[1]))
            if source is not None:
                origin.update(fill=source["fill"], fill_op=source["fill_op"], fill_offsets=source["fill_offsets"])
            else:
                origin.update(fill=None, fill_op=name, fill_offsets=dict(offsets))
        elif name in RESET_OPS and whole:
            origin.update(fill=None, fill_op=name, fill_offsets=dict(offsets))


def _covers_storage(tensor: torch.Tensor) -> bool:
    return tensor.numel() * max(tensor.element_size(), 1) >= tensor.untyped_storage().nbytes()


def _whole_copy(target: torch.Tensor, source: torch.Tensor) -> bool:
    return target.numel() == source.numel() and _covers_storage(target)
