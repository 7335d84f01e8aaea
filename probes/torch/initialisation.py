"""Creation order, seed offsets and initial values of every parameter and buffer.

While the recipe builds the model, the dispatch capture saw which op created each storage and which random
op first filled it. Here those storage events are matched to the model's named tensors, following copies
(`model.to(...)`) back to the storage that was initialised.
"""

from __future__ import annotations

from typing import Any

import torch

from repro_audit.probes.torch.dispatch_capture import DispatchCapture
from repro_audit.probes.torch.storage_origins import storage_key
from repro_audit.probes.torch.tensors import dtype_name, summarize


def named_tensors(model: torch.nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(name, kind, tensor) for parameters then buffers, shared tensors once, in registration order."""
    seen: set[int] = set()
    found: list[tuple[str, str, torch.Tensor]] = []
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in items:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            found.append((name, kind, tensor))
    return found


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{alias: name} for tensors registered under several names (tied weights): one tensor, recorded once
    under the name `named_tensors` gives it."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for items in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        for name, tensor in items:
            if id(tensor) in first and first[id(tensor)] != name:
                tied[name] = first[id(tensor)]
            first.setdefault(id(tensor), name)
    return tied


def initialisation_record(model: torch.nn.Module, capture: DispatchCapture, draws: list[dict[str, Any]],
                          *, seed: int) -> dict[str, Any]:
    tensors = named_tensors(model)
    origins = {name: capture.storage.origin(storage_key(tensor)) for name, _, tensor in tensors}
    # A draw is the tensor's whose storage it filled (or the storage its values were copied from).
    owner = {tuple(origin["storage"]): name for name, origin in origins.items() if origin}
    summaries = summarize([tensor for _, _, tensor in tensors])
    ranked = sorted((origin["event"], position) for position, (name, _, _) in enumerate(tensors)
                    if (origin := origins[name]) is not None)
    creation_index = {tensors[position][0]: index for index, (_, position) in enumerate(ranked)}
    records = []
    for (name, kind, tensor), summary in zip(tensors, summaries):
        origin = origins[name]
        record: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "module": name.rsplit(".", 1)[0] if "." in name else "",
            "creation_index": creation_index.get(name),
            "shape": list(tensor.shape),
            "dtype": dtype_name(tensor.dtype),
            "summary": summary,
        }
        fill = origin["fill"] if origin else None
        if fill is not None:
            record.update(initialiser=fill["op"], generator=fill["generator"], seed_offset=fill["offset_before"],
                          rng_fingerprint=fill["rng_fingerprint"])
        elif origin is not None:
            record.update(initialiser=origin["fill_op"], generator="cpu",
                          seed_offset=origin["fill_offsets"].get("cpu", 0), rng_fingerprint=None)
        else:
            record.update(initialiser=None, generator=None, seed_offset=None, rng_fingerprint=None,
                          note="created outside the recipe's build; creation order not observed")
        records.append(record)
    ledger = []
    for draw in draws:
        entry = {key: value for key, value in draw.items() if key != "target_origin"}
        target = owner.get(tuple(draw.get("target_origin") or ()))
        entry["target"] = target
        entry["module"] = entry.get("module") or (target.rsplit(".", 1)[0] if target and "." in target else None)
        ledger.append(entry)
    return {"generators": {"cpu": {"seed": seed}}, "tensors": records, "draws": ledger, "tied": tied_names(model)}
