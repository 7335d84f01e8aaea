"""One rank of a run under torchrun: its process group, its DistributedDataParallel wrapper, its facts.

The runner, not the recipe, joins the process group (before the recipe builds, so a recipe can shard its
data with `torch.distributed.get_rank()` or a DistributedSampler) and wraps the model in DDP after the
recipe built it: the same recipe then runs as one process or as N ranks, and the recorder hooks the inner
module, so parameter names are the recipe's own (no `module.` prefix) and compare across world sizes.
"""

from __future__ import annotations

import os
from typing import Any

_SHARDED = False  # set once this rank's model is sharded with FSDP: only then can a tensor be a DTensor


def join_process_group() -> dict[str, Any]:
    """Init the default process group from torchrun's environment: gloo on CPU, nccl where CUDA is."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return distributed_facts()


def distributed_facts() -> dict[str, Any]:
    """Rank, world size, backend and the launcher's variables: part of the rank's environment."""
    import torch.distributed as dist

    launcher = {name: os.environ[name] for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                                    "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS")
                if name in os.environ}
    launcher.pop("TORCHELASTIC_RUN_ID", None)  # a fresh id per run: not a fact to compare
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": str(dist.get_backend()),
            "launcher": "torch.distributed.run", "environment": launcher}


def wrap_in_ddp(model: Any) -> Any:
    """The recipe's model in DistributedDataParallel (which broadcasts rank 0's parameters and buffers)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        model.to(device)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def shard_with_fsdp(model: Any, optimizer: Any) -> Any:
    """FULL_SHARD with FSDP2 (`fully_shard`, the API that runs on CPU with gloo): every child module that
    holds parameters, then the root. Returns the recipe's optimizer rebuilt over the sharded parameters,
    group by group with the same hyperparameters (FSDP2 replaces the parameter objects)."""
    import torch
    from torch.distributed.fsdp import fully_shard

    if torch.cuda.is_available():  # as wrap_in_ddp: each rank on the GPU of its LOCAL_RANK
        model.to(torch.device("cuda", torch.cuda.current_device()))
    global _SHARDED
    _SHARDED = True
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = [{**{key: value for key, value in group.items() if key != "params"},
               "params": [names[id(parameter)] for parameter in group["params"]]} for group in optimizer.param_groups]
    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(model)
    sharded = dict(model.named_parameters())
    return type(optimizer)([{**group, "params": [sharded[name] for name in group["params"]]} for group in groups])


def gathered(tensor: Any) -> Any:
    """A sharded tensor (FSDP2's DTensor) as the whole tensor every rank would hold without sharding; an
    all-gather, so every rank must ask for the same tensors in the same order (the recorder does)."""
    if not _SHARDED:
        return tensor
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def example_hashes(tensors: list[tuple[str, Any]]) -> list[str] | None:
    """One fingerprint per example of a rank's batch (row i of every batch tensor), sorted: the union of the
    ranks' examples at a step can then be compared across world sizes. None outside a process group or
    where the batch's tensors do not share a first dimension."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return None
    from repro_audit.probes.common.hashing import hash_bytes
    from repro_audit.probes.torch.tensors import as_numpy

    arrays = [as_numpy(tensor) for _, tensor in tensors]
    if any(array.ndim == 0 for array in arrays) or len({array.shape[0] for array in arrays}) != 1:
        return None
    return sorted(hash_bytes(b"".join(array[row].tobytes() for array in arrays)) for row in range(len(arrays[0])))
