"""Summaries of tensors that recur every step: the kernel's arguments are reused only while they still fit."""

from __future__ import annotations

import math

import pytest
import torch

from repro_audit.probes.common import native_summary
from repro_audit.probes.torch.repeated_summaries import RepeatedSummaries
from repro_audit.probes.torch.tensors import summarize, tensor_hashes

needs_compiler = pytest.mark.skipif(native_summary.find_compiler() is None, reason="no C compiler here")


def same_records(found: list[dict], expected: list[dict]) -> bool:
    """Equal, NaN equal to NaN: records of tensors with NaN hold NaN statistics."""
    if len(found) != len(expected):
        return False
    for a, b in zip(found, expected):
        if a.keys() != b.keys() or list(a) != list(b):
            return False
        for key in a:
            x, y = a[key], b[key]
            both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
            if not both_nan and x != y:
                return False
    return True


def step_tensors() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(64, 48, generator=generator)
    poisoned = torch.randn(5000, generator=generator)
    poisoned[10], poisoned[4000] = float("nan"), float("-inf")
    return [weight, torch.randn(48, generator=generator).double(), poisoned, torch.zeros(7),
            torch.randn(30, generator=generator).bfloat16(), torch.randn(8, 6, generator=generator).t()]


@needs_compiler
def test_records_equal_summarize_across_steps_while_values_change_in_place() -> None:
    tensors = step_tensors()
    repeated = RepeatedSummaries()
    for step in range(3):
        assert same_records(repeated.summaries(tensors), summarize(tensors)), f"step {step}"
        for tensor in tensors:
            tensor.mul_(1.5).add_(0.25)  # new values, same memory: the prepared batch is reused
    earlier = tensors
    for step in range(2):  # new tensors of the same layouts elsewhere, as gradients come back each step
        tensors = [t * (2.0 + step) for t in earlier]
        assert same_records(repeated.summaries(tensors), summarize(tensors)), f"moved, step {step}"
    without_zeros = RepeatedSummaries(count_zeros=False)
    assert same_records(without_zeros.summaries(tensors), summarize(tensors, count_zeros=False))
    assert without_zeros.summaries(tensors)[3]["zeros"] is None


@needs_compiler
def test_a_tensor_seen_through_another_layout_at_the_same_address_is_read_anew() -> None:
    """A transposed view starts at the same address with the same size: only its layout tells it apart."""
    square = torch.arange(36, dtype=torch.float32).reshape(6, 6)
    other = torch.randn(100)
    repeated = RepeatedSummaries()
    hashes = RepeatedSummaries(hash_only=True)
    first = repeated.summaries([square, other])
    hashes.hashes([square, other])
    assert same_records(first, summarize([square, other]))
    turned = square.t()
    assert turned.data_ptr() == square.data_ptr()
    assert same_records(repeated.summaries([turned, other]), summarize([turned, other]))
    assert repeated.summaries([turned, other])[0]["hash"] != first[0]["hash"]
    reshaped = square.reshape(4, 9)  # same bytes, another shape: the hash covers the shape
    assert same_records(repeated.summaries([reshaped, other]), summarize([reshaped, other]))
    assert hashes.hashes([turned, other]) == tensor_hashes([turned, other])
    assert hashes.hashes([reshaped, other]) == tensor_hashes([reshaped, other])


@needs_compiler
def test_hashes_equal_tensor_hashes_for_every_dtype_and_layout() -> None:
    tensors = step_tensors() + [torch.arange(10), torch.tensor([True, False]), torch.randn(3, 3)[:, 1]]
    repeated = RepeatedSummaries(hash_only=True)
    for _ in range(2):
        assert repeated.hashes(tensors) == tensor_hashes(tensors)
        tensors[0].add_(1.0)
