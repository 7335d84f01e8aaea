"""The failure message of a repro-audit assertion: at most 12 lines in pytest's style, the cause first.

pytest puts the first line in its short test summary (`FAILED test_x.py::test - <first line>`), so that line
is the verdict: the chain "what you changed -> mechanisms" when an input changed, else where the runs first
differ. The lines under it say which runs were compared, the top mechanisms or the first divergence with
the evidence that tells most (errors and norms before NaN/Inf counts, zero counts left out), and where the
full report is. `verbosity` (pytest's -v) shows more of each sentence and more mechanisms, never more than
MAX_LINES lines. Like every presenter it walks the Comparison and decides nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from repro_audit.audit.divergence import CATEGORIES, Comparison, Divergence, display_module
from repro_audit.audit.mechanisms import INPUT_CATEGORIES, MECHANISM_TITLES, chain, input_summary

MAX_LINES = 12
# Characters of one line, and mechanisms or other causes listed, by verbosity (0: default and -q, 1: -v,
# 2: -vv and more): a longer sentence, never more lines.
LINE_CHARS = (120, 240, 1000)
FIRST_LINE_CHARS = (240, 400, 1000)  # the verdict: pytest's short summary cuts it to the terminal anyway
LISTED = (3, 5, 8)
EVIDENCE_ITEMS = (4, 6, 8)
NONFINITE = (("NaN", "nan_a", "nan_b"), ("Inf", "inf_a", "inf_b"))


def failure_message(comparison: Comparison, *, verdict: str, runs: str, report: str | None = None,
                    hint: str | None = None, traces: str | None = None, verbosity: int = 0) -> str:
    """The message: `verdict: cause`, the runs compared, why, and where the report and traces are.

    `runs` names the two sides ("'a' (A) vs 'b' (B)"); `report` is the HTML report's path, `hint` what to
    say instead when none was written; `traces` the folder the traces were kept in.
    """
    level = min(max(verbosity, 0), 2)
    width = LINE_CHARS[level]
    head = [_cut(f"{verdict}: {cause_line(comparison)}", FIRST_LINE_CHARS[level]),
            _cut(f"  runs: {runs}, {_compared(comparison)}", width)]
    footer = [_cut(f"  HTML report: {report}", 1000) if report else _cut(f"  {hint}", width) if hint else "",
              _cut(f"  traces kept in {traces}", 1000) if traces else ""]
    footer = [line for line in footer if line]
    room = MAX_LINES - len(head) - len(footer)
    body = _body(comparison, level, width, room)
    if len(body) > room:  # only a tree the sections above did not expect: cut, and say so
        body = body[:room - 1] + [f"  ... {len(body) - room + 1} more lines in the full report"]
    return "\n".join(head + body + footer)


def cause_line(comparison: Comparison) -> str:
    """The verdict's cause in one line: "what you changed -> how it changed the numbers", else where."""
    first = comparison.first_divergence
    if first is None:
        return "no divergence"
    inputs = comparison.changed_inputs
    if inputs:
        headline = chain(comparison)  # what the terminal and HTML reports lead with too
        if headline is not None:
            return headline
        changed = " and ".join(input_summary(root) for root in inputs)
        effect = first_effect(comparison)
        if effect is not None:
            when = "before training" if effect.step is None else f"at step {effect.step}"
            return f"{changed} -> {effect.category} {_name(effect)} changed {when}"
        return f"{changed}: {_clean(first.explanation or first.kind)}"
    # The mechanism's name first: a short summary line cut to the terminal's width still names it.
    return f"{_title(first)} {_where(first)}" if first.cause else f"first divergence {_where(first)}"


def first_effect(comparison: Comparison) -> Divergence | None:
    """The first divergence, in causal order, that is not an input itself: what the change did first."""
    effects = [d for d in comparison.walk() if not (d.step is None and d.category in INPUT_CATEGORIES)]
    return min(effects, key=lambda d: d.sort_key()) if effects else None


def evidence_text(evidence: dict[str, Any], *, items: int = EVIDENCE_ITEMS[0]) -> str:
    """The evidence that tells most, in a few words: how far apart, then how big, then NaN/Inf that
    differ; counts that are zero in both runs say nothing and are left out."""
    shown: list[str] = []
    mismatched, numel = evidence.get("mismatched"), evidence.get("numel")
    if _number(mismatched) and _number(numel):
        shown.append(f"{mismatched} of {numel} values differ")
    for key, label in (("max_abs_error", "max |A-B|"), ("max_rel_error", "max rel"), ("max_ulp", "ULP")):
        if _number(evidence.get(key)):
            shown.append(f"{label} {_format(evidence[key])}")
    for key, label in (("norm", "norm"), ("max_abs", "max_abs"), ("seed_offset", "seed offset"),
                       ("offset_before", "stream offset")):
        pair = _pair(evidence.get(key))
        if pair:
            shown.append(f"{label} {pair}")
    for label, key_a, key_b in NONFINITE:
        a, b = evidence.get(key_a), evidence.get(key_b)
        if _number(a) and _number(b) and (a or b):
            shown.append(f"{label} {a} vs {b}")
    for key, label in (("loss_term", "loss term"), ("loss_weight", "weight"), ("parameters", "parameters reached"),
                       ("shift", "shift"), ("ops_added", "ops added")):
        value = evidence.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            shown.append(f"{label} {_format(value)}")
    if not shown and ("a" in evidence or "b" in evidence):
        shown.append(f"run A {_short(evidence.get('a'))} vs run B {_short(evidence.get('b'))}")
    more = len(shown) - items
    return ", ".join(shown[:items]) + (f" (+{more} more)" if more > 0 else "")


def _body(comparison: Comparison, level: int, width: int, room: int) -> list[str]:
    """What the runs differ by, in at most `room` lines: the closing lines (consequences, proof) are kept,
    the mechanisms fill what is left."""
    first = comparison.first_divergence
    if first is None:
        return []
    head = [_cut(f"  partial: {_clean(note)}", width) for note in comparison.notes[:1] if comparison.partial]
    tail = _consequences(first, width) if level > 0 else []
    proof = _verified(comparison)
    tail += [_cut(f"  verified: {proof}", width)] if proof else []
    left = room - len(head) - len(tail)
    mechanisms = comparison.mechanisms if comparison.changed_inputs else []
    if mechanisms:
        middle = _mechanism_lines(mechanisms, level, width, left)
    elif comparison.changed_inputs:
        middle = [_cut(f"  changed: {_clean(root.explanation or root.name)}", width)
                  for root in comparison.changed_inputs]
        effect = first_effect(comparison)
        if effect is not None:
            middle += _divergence_lines("first effect", effect, level, width)
    else:
        middle = _divergence_lines("first", first, level, width) + _others(comparison, first, level, width)
    return head + middle + tail


def _mechanism_lines(mechanisms: list[Any], level: int, width: int, room: int) -> list[str]:
    """Each mechanism with its sentence (and its evidence: the first one's by default, each one's with -v),
    as many as fit in `room` lines with the note of how many more there are."""
    lines: list[str] = []
    for index, mechanism in enumerate(mechanisms[:LISTED[level]], 1):
        block = [_cut(f"  {index}. {mechanism.title}: {_clean(mechanism.explanation)}", width)]
        evidence = evidence_text(mechanism.instances[0].evidence, items=EVIDENCE_ITEMS[level])
        if evidence and (index == 1 or level > 0):
            block.append(_cut(f"     evidence: {evidence}", width))
        last = index == len(mechanisms)
        if len(lines) + len(block) + (0 if last else 1) > room and lines:
            break
        lines += block
    shown = sum(1 for line in lines if not line.startswith("     "))
    more = len(mechanisms) - shown
    if more:
        lines.append(f"  ... {more} more mechanism{'' if more == 1 else 's'} in the full report")
    return lines


def _divergence_lines(label: str, divergence: Divergence, level: int, width: int) -> list[str]:
    lines = [_cut(f"  {label}: {_where(divergence)}: {_clean(divergence.explanation or divergence.kind)}", width)]
    evidence = evidence_text(divergence.evidence, items=EVIDENCE_ITEMS[level])
    return lines + ([_cut(f"  evidence: {evidence}", width)] if evidence else [])


def _others(comparison: Comparison, first: Divergence, level: int, width: int) -> list[str]:
    """Other named causes (default: a count; -v: one line each)."""
    others = [d for d in comparison.causes if d is not first]
    if not others:
        return []
    if level == 0:
        titles = list(dict.fromkeys(_title(d) for d in others))
        return [_cut(f"  also: {len(others)} other named cause{'s' if len(others) > 1 else ''} "
                     f"({', '.join(titles[:3])}{', ...' if len(titles) > 3 else ''})", width)]
    return [_cut(f"  also: {_where(d)}: {_clean(d.explanation or d.kind)}", width) for d in others[:LISTED[level] - 1]]


def _consequences(first: Divergence, width: int) -> list[str]:
    below = list(first.walk())[1:]
    if not below:
        return []
    counts = Counter(d.category for d in below)
    ordered = [c for c in CATEGORIES if c in counts] + sorted(set(counts) - set(CATEGORIES))
    return [_cut(f"  then: {len(below)} consequences ({', '.join(f'{c} {counts[c]}' for c in ordered)})", width)]


def _verified(comparison: Comparison) -> str:
    """`--verify`'s conclusion in one line, where a verification ran."""
    verification = comparison.verification
    if verification is None:
        return ""
    remains = verification.remains
    if verification.together is None:
        return ""
    return f"after neutralising every mechanism, {remains}" if remains else \
        "with every mechanism neutralised, run B matches run A on every shared number"


def _compared(comparison: Comparison) -> str:
    tolerance = comparison.tolerance
    how = "bitwise" if not any(tolerance.values()) else ", ".join(
        f"{key}={_format(value)}" for key, value in sorted(tolerance.items()))
    steps = min(comparison.run_a.steps_recorded, comparison.run_b.steps_recorded)
    return f"{how}, {steps} step{'' if steps == 1 else 's'} compared"


def _where(divergence: Divergence) -> str:
    when = "before training" if divergence.step is None else f"at step {divergence.step}"
    return f"{when} in {divergence.category} {_name(divergence)}"


def _name(divergence: Divergence) -> str:
    if divergence.category == "nan_provenance" and divergence.evidence.get("module") is not None:
        return f"{_clean(str(divergence.evidence.get('node')))} in {display_module(divergence.evidence['module'])}"
    return _clean(divergence.name)


def _title(divergence: Divergence) -> str:
    cause = divergence.cause or ""
    return MECHANISM_TITLES.get(cause, cause.replace("_", " "))


def _pair(value: Any) -> str:
    """`a vs b` for an {"a": .., "b": ..} pair of numbers, with as many digits as tell them apart."""
    if not isinstance(value, dict) or not _number(value.get("a")) or not _number(value.get("b")):
        return ""
    a, b = value["a"], value["b"]
    if a == b:
        return f"{_format(a)} in both"
    for digits in (4, 6, 9, 17):
        text_a, text_b = _format(a, digits), _format(b, digits)
        if text_a != text_b:
            break
    return f"{text_a} vs {text_b}"


def _format(value: Any, digits: int = 4) -> str:
    """A number in `digits` significant digits; a float keeps a point (a weight of 0.0 is not the count 0)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        text = f"{value:.{digits}g}"
        return text if any(mark in text for mark in ".e") else text + ".0"
    return _clean(str(value))


def _short(value: Any) -> str:
    return _cut(_clean(repr(value)), 60)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clean(text: str) -> str:
    """One line, control characters escaped: a hostile name cannot break the message or inject escapes."""
    text = " ".join(str(text).split())
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 4].rstrip() + " ..."
