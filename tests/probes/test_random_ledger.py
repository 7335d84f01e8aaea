"""The random-draw wrappers of later steps: which calls draw, and what their entries say."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from probes.common.hashing import hash_bytes
from probes.torch.random_ledger import RandomLedger, python_random_wrappers


def entries_of(call) -> list[dict]:
    ledger = RandomLedger(module_of=lambda: "block")
    with python_random_wrappers(ledger):
        call()
    return ledger.take_entries()


def test_a_dropout_that_draws_is_one_entry_with_the_state_before_it() -> None:
    x = torch.ones(4, 8)
    torch.manual_seed(0)
    before = hash_bytes(torch.default_generator.get_state().numpy())
    entries = entries_of(lambda: F.dropout(x, 0.25))
    assert [(e["op"], e["count"], e["offset_before"], e["module"]) for e in entries] == [("F.dropout", 32, 0, "block")]
    assert entries[0]["rng_fingerprint"] == before
    assert len(entries_of(lambda: F.dropout(x, p=0.5, training=True))) == 1
    assert len(entries_of(lambda: torch.dropout(x, 0.5, True))) == 1
    assert len(entries_of(lambda: F.dropout2d(torch.ones(2, 3, 4, 4), 0.5))) == 1


def test_dropout_calls_that_draw_nothing_leave_no_entry_and_the_stream_where_it_was() -> None:
    x = torch.ones(4, 8)
    quiet = [lambda: F.dropout(x, 0.0), lambda: F.dropout(x, 1.0), lambda: F.dropout(x, 0.5, training=False),
             lambda: F.dropout(torch.ones(0), 0.5), lambda: torch.dropout(x, 0.5, False),
             lambda: torch.nn.Dropout(0.5).eval()(x)]
    for call in quiet:
        state = torch.default_generator.get_state()
        assert entries_of(call) == []
        assert torch.equal(state, torch.default_generator.get_state()), "the call did draw after all"


def test_arguments_that_are_not_plain_numbers_are_judged_by_the_generator_moving() -> None:
    x = torch.ones(4, 8)
    assert len(entries_of(lambda: F.dropout(x, np.float32(0.5)))) == 1
    assert entries_of(lambda: F.dropout(x, np.float32(0.0))) == []
    assert len(entries_of(lambda: torch.dropout(x, p=0.5, train=True))) == 1
    assert len(entries_of(lambda: torch.rand(3, 2))) == 1
    assert entries_of(lambda: torch.rand(0)) == []


def test_wrappers_are_made_once_per_ledger_and_again_for_a_function_replaced_meanwhile(monkeypatch) -> None:
    ledger = RandomLedger(module_of=lambda: None)
    seen = []
    for _ in range(2):
        with python_random_wrappers(ledger):
            seen.append((F.dropout, torch.rand))
            torch.rand(3)
    assert F.dropout is not seen[0][0]  # the originals are back after each step
    assert seen[0] == seen[1], "the second step puts the same wrappers in place"
    assert [e["op"] for e in ledger.take_entries()] == ["torch.rand", "torch.rand"]

    calls = []
    original = torch.rand

    def patched(*args, **kwargs):  # the user's own patch, made between steps
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", patched)
    with python_random_wrappers(ledger):
        assert torch.rand is not seen[0][1]
        torch.rand(2)
    assert calls == [(2,)] and [e["op"] for e in ledger.take_entries()] == ["torch.rand"]
    assert torch.rand is patched
