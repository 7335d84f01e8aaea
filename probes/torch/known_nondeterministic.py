"""Ops that `torch.use_deterministic_algorithms(True)` would flag on a device, as aten names.

Taken from that function's documentation (torch 2.x) plus cuDNN convolutions, which `cudnn.deterministic`
governs. An op here may agree with itself in one run and still differ in the next (atomic adds depend on
timing), so `repro-audit ops` lists each one it saw even when its two executions matched. `alternative`
says whether `use_deterministic_algorithms(True)` switches to a deterministic kernel (True) or raises
(False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Condition = Callable[[tuple[Any, ...], dict[str, Any]], bool]


@dataclass(frozen=True)
class KnownNondeterministic:
    op: str
    devices: tuple[str, ...]
    alternative: bool
    note: str
    condition: Condition | None = None


def _accumulate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    value = kwargs.get("accumulate", args[3] if len(args) > 3 else False)
    return bool(value)


def _not_accumulate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return not _accumulate(args, kwargs)


def _reduce_is(*names: str) -> Condition:
    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        reduce = kwargs.get("reduce", args[4] if len(args) > 4 else None)
        return reduce in names
    return check


def _weights_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return (kwargs.get("weights", args[1] if len(args) > 1 else None)) is not None


def _floating_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    first = args[0] if args else None
    return isinstance(first, torch.Tensor) and (first.is_floating_point() or first.is_complex())


def _cudnn_free_to_choose(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """cuDNN picks among algorithms, some with atomic adds, unless told to be deterministic."""
    backend = torch.backends.cudnn
    return bool(backend.enabled) and not bool(backend.deterministic)


_CUDA = ("cuda",)
_CPU_CUDA = ("cpu", "cuda")
_TABLE = (
    # A deterministic kernel exists: use_deterministic_algorithms(True) switches to it.
    KnownNondeterministic("aten::convolution", _CUDA, True, "cuDNN chooses convolution algorithms "
                          "(set torch.backends.cudnn.deterministic = True, benchmark = False)", _cudnn_free_to_choose),
    KnownNondeterministic("aten::convolution_backward", _CUDA, True, "cuDNN convolution backward uses atomic adds "
                          "(set torch.backends.cudnn.deterministic = True)", _cudnn_free_to_choose),
    KnownNondeterministic("aten::index_add", _CUDA, True, "index_add on CUDA accumulates with atomic adds"),
    KnownNondeterministic("aten::index_add_", _CUDA, True, "index_add_ on CUDA accumulates with atomic adds"),
    KnownNondeterministic("aten::scatter_add", _CUDA, True, "scatter_add on CUDA accumulates with atomic adds"),
    KnownNondeterministic("aten::scatter_add_", _CUDA, True, "scatter_add_ on CUDA accumulates with atomic adds"),
    KnownNondeterministic("aten::scatter", _CUDA, True, "scatter with a tensor src on CUDA"),
    KnownNondeterministic("aten::scatter_", _CUDA, True, "scatter_ with a tensor src on CUDA"),
    KnownNondeterministic("aten::scatter_reduce", _CUDA, True, "scatter_reduce sum/mean on CUDA",
                          _reduce_is("sum", "mean")),
    KnownNondeterministic("aten::scatter_reduce_", _CUDA, True, "scatter_reduce_ sum/mean on CUDA",
                          _reduce_is("sum", "mean")),
    KnownNondeterministic("aten::embedding_dense_backward", _CUDA, True,
                          "embedding backward on CUDA accumulates rows of repeated indices with atomic adds"),
    KnownNondeterministic("aten::index_put", _CPU_CUDA, True, "index_put without accumulate: order of "
                          "duplicate indices", _not_accumulate),
    KnownNondeterministic("aten::index_put_", _CPU_CUDA, True, "index_put_ without accumulate: order of "
                          "duplicate indices", _not_accumulate),
    KnownNondeterministic("aten::_index_put_impl_", ("cpu",), True, "index_put_ with accumulate on CPU "
                          "(the backward of indexing with a list of tensors)", _accumulate),
    KnownNondeterministic("aten::index_copy", _CPU_CUDA, True, "index_copy: order of duplicate indices"),
    KnownNondeterministic("aten::index_copy_", _CPU_CUDA, True, "index_copy_: order of duplicate indices"),
    KnownNondeterministic("aten::gather_backward", _CUDA, True, "gather backward on CUDA (scatter_add)"),
    KnownNondeterministic("aten::index_select_backward", _CUDA, True, "index_select backward on CUDA"),
    KnownNondeterministic("aten::replication_pad1d_backward", _CUDA, True, "ReplicationPad1d backward on CUDA"),
    KnownNondeterministic("aten::replication_pad2d_backward", _CUDA, True, "ReplicationPad2d backward on CUDA"),
    KnownNondeterministic("aten::replication_pad3d_backward", _CUDA, True, "ReplicationPad3d backward on CUDA"),
    KnownNondeterministic("aten::max_pool3d_with_indices_backward", _CUDA, True, "MaxPool3d backward on CUDA"),
    # No deterministic kernel: use_deterministic_algorithms(True) raises.
    KnownNondeterministic("aten::avg_pool3d_backward", _CUDA, False, "AvgPool3d backward on CUDA"),
    KnownNondeterministic("aten::_adaptive_avg_pool2d_backward", _CUDA, False, "AdaptiveAvgPool2d backward on CUDA"),
    KnownNondeterministic("aten::_adaptive_avg_pool3d_backward", _CUDA, False, "AdaptiveAvgPool3d backward on CUDA"),
    KnownNondeterministic("aten::adaptive_max_pool2d_backward", _CUDA, False, "AdaptiveMaxPool2d backward on CUDA"),
    KnownNondeterministic("aten::fractional_max_pool2d_backward", _CUDA, False, "FractionalMaxPool2d backward"),
    KnownNondeterministic("aten::fractional_max_pool3d_backward", _CUDA, False, "FractionalMaxPool3d backward"),
    KnownNondeterministic("aten::max_unpool2d", _CPU_CUDA, False, "MaxUnpool: order of duplicate indices"),
    KnownNondeterministic("aten::max_unpool3d", _CPU_CUDA, False, "MaxUnpool: order of duplicate indices"),
    KnownNondeterministic("aten::upsample_linear1d_backward", _CUDA, False, "interpolate(linear) backward"),
    KnownNondeterministic("aten::upsample_bilinear2d_backward", _CUDA, False, "interpolate(bilinear) backward"),
    KnownNondeterministic("aten::upsample_bicubic2d_backward", _CUDA, False, "interpolate(bicubic) backward"),
    KnownNondeterministic("aten::upsample_trilinear3d_backward", _CUDA, False, "interpolate(trilinear) backward"),
    KnownNondeterministic("aten::reflection_pad1d_backward", _CUDA, False, "ReflectionPad1d backward on CUDA"),
    KnownNondeterministic("aten::reflection_pad2d_backward", _CUDA, False, "ReflectionPad2d backward on CUDA"),
    KnownNondeterministic("aten::reflection_pad3d_backward", _CUDA, False, "ReflectionPad3d backward on CUDA"),
    KnownNondeterministic("aten::nll_loss2d_forward", _CUDA, False, "NLLLoss (2d) on CUDA"),
    KnownNondeterministic("aten::nll_loss_forward", _CUDA, False, "NLLLoss on CUDA (weighted reduction)"),
    KnownNondeterministic("aten::_ctc_loss_backward", _CUDA, False, "CTCLoss backward on CUDA"),
    KnownNondeterministic("aten::_embedding_bag_backward", _CUDA, False, "EmbeddingBag(mode='max') backward"),
    KnownNondeterministic("aten::put_", _CPU_CUDA, False, "put_ without accumulate", _not_accumulate),
    KnownNondeterministic("aten::histc", _CUDA, False, "histc on CUDA"),
    KnownNondeterministic("aten::bincount", _CUDA, False, "bincount with weights on CUDA", _weights_given),
    KnownNondeterministic("aten::median", _CUDA, False, "median with indices on CUDA"),
    KnownNondeterministic("aten::grid_sampler_2d_backward", _CUDA, False, "grid_sample backward on CUDA"),
    KnownNondeterministic("aten::grid_sampler_3d_backward", _CUDA, False, "grid_sample backward on CUDA"),
    KnownNondeterministic("aten::cumsum", _CUDA, False, "cumsum of floating point on CUDA", _floating_input),
)
CATALOGUE: dict[str, tuple[KnownNondeterministic, ...]] = {}
for _entry in _TABLE:
    CATALOGUE[_entry.op] = CATALOGUE.get(_entry.op, ()) + (_entry,)


def known_nondeterministic(op: str, device_type: str, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> KnownNondeterministic | None:
    """The catalogue entry for this call of `op` on `device_type`, or None."""
    for entry in CATALOGUE.get(op, ()):
        if device_type in entry.devices and (entry.condition is None or entry.condition(args, kwargs)):
            return entry
    return None
