"""The terminal report of a comparison: verdict first, then the first divergence and why, then a summary.

It walks the Comparison the differ built and decides nothing. It is plain text (ANSI only with
`color=True`), deterministic, wrapped to `width` columns, and says whatever it cuts. The sentences that
answer "why" (the mechanisms, the first divergence's explanation, other causes) are wrapped whole, never cut.
"""

from __future__ import annotations

from typing import Any

from repro_audit.audit.divergence import CATEGORIES, Comparison, Divergence, count_diverged
from repro_audit.audit.health import RULE_TITLES
from repro_audit.audit.mechanisms import Mechanism, chain
from repro_audit.reports.text_layout import DEFAULT_WIDTH, MIN_WIDTH, fit, style, wrap, wrap_styled
from repro_audit.reports.text_verification import verification_lines
from repro_audit.reports.text_zoom import zoom_lines

WIDTH = DEFAULT_WIDTH  # columns when the caller does not say (the CLI passes the terminal's)
CONSEQUENCE_LINE_LIMIT = 300  # characters of one consequence: a fact among many, shortened past this
MAX_VALUE_CHARS = 200  # characters of one evidence value
# A sentence of ours is a few hundred characters; this cap only guards against a hostile document read back.
MAX_EXPLANATION_CHARS = 2000
MAX_LABEL_CHARS = 80  # characters of a run label or an evidence key
MAX_EVIDENCE = 6  # evidence keys shown besides a and b
MAX_ITEMS = 20  # items of one list or dict value formatted before the rest is counted
CUT_SLACK = 40  # a text this little over its limit is kept whole: the note would be as long as the cut
# Evidence that tells most about a difference comes first; any other key follows in name order.
EVIDENCE_ORDER = (
    "op_before_drift", "mismatched", "numel", "max_abs_error", "max_rel_error", "median_abs_error", "max_ulp", "passes_at_atol",
    "nan_a", "nan_b", "inf_a", "inf_b", "seed_offset", "creation_index", "shift", "loss_term", "loss_weight",
    "node", "forward_op", "module", "parameters", "ops_added", "ops_removed", "by_group", "hyperparameter",
    "param_group", "first_indices",
)
NONFINITE_COUNTS = ("nan_a", "nan_b", "inf_a", "inf_b")  # zero counts say little: shown after the rest
LABEL_WIDTH = 13
HEALTH_NAMED = 3  # findings named on a run's health line; `repro-audit health` lists them all


def render_text(comparison: Comparison, *, max_consequences: int = 5, max_rows: int = 20,
                color: bool = False, width: int = WIDTH) -> str:
    """The whole report; `max_consequences` and `max_rows` cap the listed consequences, causes and rows; no
    line is wider than `width` columns (at least MIN_WIDTH)."""
    width = max(width, MIN_WIDTH)
    lines = _verdict(comparison, color, width)
    first = comparison.first_divergence
    mechanisms = comparison.mechanisms if comparison.changed_inputs else []
    if first is not None and mechanisms:
        lines += _why(mechanisms, color, width)
        lines += verification_lines(comparison.verification, width=width)
        lines += ["", style("What you changed:", "bold", color)] + _first_block(comparison, first, width)
        shown = {id(m.instances[0]) for m in mechanisms}
        lines += _other_causes(comparison, first, max_rows, color, width, skip=shown)
        lines += _consequences(comparison, first, max_consequences, color, width)
    elif first is not None:
        lines += ["", style("First divergence:", "bold", color)] + _first_block(comparison, first, width)
        lines += _other_causes(comparison, first, max_rows, color, width)
        lines += _consequences(comparison, first, max_consequences, color, width)
    lines += zoom_lines(comparison.zoom, width=width)
    lines += _category_table(comparison, max_rows, color)
    lines += _health(comparison, color, width)
    if comparison.notes and not comparison.partial:  # a partial comparison lists them under its verdict
        lines += ["", style("Notes:", "bold", color)]
        lines += [line for note in comparison.notes for line in wrap(f"- {_clean(note)}", width, indent="  ",
                                                                      hang="    ")]
    return "\n".join(fit(lines, width))  # no trailing newline: click.echo and the pytest message add their own


def _verdict(comparison: Comparison, color: bool, width: int) -> list[str]:
    label_a, label_b = (_cut(_clean(run.label), MAX_LABEL_CHARS) for run in (comparison.run_a, comparison.run_b))
    steps = min(comparison.run_a.steps_recorded, comparison.run_b.steps_recorded)
    tolerance = _tolerance_text(comparison)
    first = comparison.first_divergence
    if first is None:
        how = f"within {tolerance}" if tolerance else "bitwise"
        lines = wrap_styled("IDENTICAL", f": {label_a} and {label_b} match {how} ({steps} steps compared)", width,
                            name="green", color=color)
    else:
        at = f" (at {tolerance})" if tolerance else ""
        lines = wrap_styled("DIVERGED", f": {label_a} vs {label_b}: {_headline(comparison, first)}{at}", width,
                            name="red", color=color)
    if comparison.partial:
        # The differ's notes say why a run stopped; without notes, the run's own error says it.
        stopped = [f"run {side} ({_clean(run.label)}) stopped early"
                   + (f" ({_cut(_clean(run.error), MAX_VALUE_CHARS)})" if run.error and not comparison.notes else "")
                   for side, run in (("A", comparison.run_a), ("B", comparison.run_b)) if not run.complete]
        lines += wrap_styled("PARTIAL", ": " + "".join(f"{text}; " for text in stopped)
                             + f"only the {steps} steps both runs recorded were compared", width, name="yellow",
                             color=color)
        lines += [line for note in comparison.notes for line in wrap(f"- {_clean(note)}", width, indent="  ",
                                                                      hang="    ")]
    return lines


def _headline(comparison: Comparison, first: Divergence) -> str:
    """The chain "what you changed -> how it changed the numbers" when an input changed; else where the
    first divergence is."""
    headline = chain(comparison)
    if headline:
        return headline
    where = "before training," if first.step is None else f"at step {first.step}"
    return f"first divergence {where} in {_clean(first.category)}"


def _why(mechanisms: list[Mechanism], color: bool, width: int) -> list[str]:
    """Each mechanism with its first instance's sentence, whole: the answer to "why" is not cut."""
    lines = ["", style("Why:", "bold", color)]
    for index, mechanism in enumerate(mechanisms, 1):
        shared = {True: "changes numbers both runs share", False: "changes no shared number",
                  None: "effect on shared numbers not known"}[mechanism.changes_shared]
        head = f"  {index}. {mechanism.title} ({shared}): "
        text = _cut(_clean(mechanism.explanation), MAX_EXPLANATION_CHARS)
        more = mechanism.instances[1:]
        if more:
            text += f" (and {len(more)} more: {', '.join(_clean(d.name) for d in more[:3])}{', ...' if len(more) > 3 else ''})"
        lines += wrap(head + text, width, hang="     ")
    return lines


def _tolerance_text(comparison: Comparison) -> str:
    """'' for bitwise, else 'rtol=.., atol=..' (then any other key in name order)."""
    tolerance = comparison.tolerance
    if not any(value for value in tolerance.values()):
        return ""
    keys = [key for key in ("rtol", "atol") if key in tolerance] + sorted(set(tolerance) - {"rtol", "atol"})
    return ", ".join(f"{key}={format_value(tolerance[key])}" for key in keys)


def _first_block(comparison: Comparison, first: Divergence, width: int) -> list[str]:
    lines = [_field("category", format_value(first.category)),
             _field("step", "before training" if first.step is None else str(first.step)),
             _field("name", format_value(first.name)), _field("kind", format_value(first.kind))]
    if first.cause:
        lines.append(_field("cause", format_value(first.cause)))
    if first.explanation:
        explanation = _cut(_clean(first.explanation), MAX_EXPLANATION_CHARS)
        wrapped = wrap(explanation, width - 2 - LABEL_WIDTH)
        lines.append(_field("explanation", wrapped[0]))
        lines += [" " * (2 + LABEL_WIDTH) + line for line in wrapped[1:]]
    evidence = first.evidence or {}
    for side, run in (("a", comparison.run_a), ("b", comparison.run_b)):
        if side in evidence:
            lines += wrap(_field(f"run {side.upper()}", f"{format_value(evidence[side], quote=True)}"
                                                       f"  ({_cut(_clean(run.label), MAX_LABEL_CHARS)})"),
                          width, hang=" " * (2 + LABEL_WIDTH))
    keys = sorted((key for key in evidence if key not in ("a", "b")), key=lambda key: _evidence_rank(key, evidence))
    if keys:
        lines.append(_field("evidence", ""))
        for key in keys[:MAX_EVIDENCE]:
            lines += wrap(f"{_cut(_clean(str(key)), MAX_LABEL_CHARS)}: {format_value(evidence[key])}", width,
                          indent="    ", hang="        ")
        cut = keys[MAX_EVIDENCE:]
        if cut:
            named = ", ".join(_cut(_clean(str(key)), 40) for key in cut[:5]) + (", ..." if len(cut) > 5 else "")
            lines += wrap(f"... {len(cut)} more evidence keys not shown ({named}); the JSON report has all", width,
                          indent="    ", hang="        ")
    return lines


def _evidence_rank(key: Any, evidence: dict[Any, Any]) -> tuple[int, str]:
    # NaN/Inf counts come as a pair (nan_a 0, nan_b 1024 is the story); both zero says little.
    quiet = key in NONFINITE_COUNTS and evidence.get(key[:-1] + "a") == 0 and evidence.get(key[:-1] + "b") == 0
    known = key in EVIDENCE_ORDER and not quiet
    return (EVIDENCE_ORDER.index(key) if known else len(EVIDENCE_ORDER), str(key))


def _other_causes(comparison: Comparison, first: Divergence, max_rows: int, color: bool, width: int,
                  skip: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Other roots of the tree, and divergences anywhere below a root that an explanation rule named a cause
    for, less those already told (`skip`, by id)."""
    # Named causes, most telling first as the differ ranks them, then the other roots.
    others = [d for d in comparison.causes if d is not first and id(d) not in skip]
    others += [root for root in comparison.divergences if root is not first and not root.cause]
    if not others:
        return []
    lines = ["", style("Other causes:", "bold", color)]
    for divergence in others[:max_rows]:  # each sentence whole: a cause is what the reader came for
        lines += wrap(_one_line(divergence, limit=MAX_EXPLANATION_CHARS), width, indent="  ", hang="    ")
    if len(others) > max_rows:
        lines.append(f"  ... {len(others) - max_rows} more not shown")
    return lines


def _consequences(comparison: Comparison, first: Divergence, max_consequences: int, color: bool,
                  width: int) -> list[str]:
    """The items under the first divergence, counted as the category table counts them (count_diverged):
    summaries and parts of an item are told elsewhere and neither listed nor counted here."""
    below = [d for d in list(first.walk())[1:] if d.counted]
    if not below:
        return ["", style("Consequences:", "bold", color) + " none under the first divergence"]
    counts = count_diverged(below)
    summary = ", ".join(f"{_clean(category)} {counts[category]}" for category in _ordered(counts))
    lines = [""] + wrap_styled("Consequences:", f" {len(below)} ({summary}){_rest_of_table(comparison, first)}",
                               width, name="bold", color=color)
    for divergence in below[:max_consequences]:
        lines += wrap(_one_line(divergence, limit=CONSEQUENCE_LINE_LIMIT), width, indent="  ", hang="    ")
    if len(below) > max_consequences:
        lines.append(f"  ... {len(below) - max_consequences} more not shown")
    return lines


def _rest_of_table(comparison: Comparison, first: Divergence) -> str:
    """What the category table counts besides the consequences, so that the two totals visibly add up."""
    rest = []
    if first.counted:
        rest.append("the first divergence itself")
    elsewhere = sum(sum(count_diverged(root.walk()).values()) for root in comparison.divergences if root is not first)
    if elsewhere:
        rest.append(f"{elsewhere} under other roots")
    omitted = sum(int(counts.get("omitted") or 0) for counts in comparison.category_counts.values())
    if omitted:
        rest.append(f"{omitted} counted but not kept (see the notes)")
    return f"; the table also counts {', '.join(rest)}" if rest else ""


def _category_table(comparison: Comparison, max_rows: int, color: bool) -> list[str]:
    """One row per category in causal order: compared and diverged (from the differ), first step (from the tree)."""
    first_step: dict[str, int | None] = {}
    for divergence in comparison.walk():
        known = divergence.category in first_step
        if not known or _step_rank(divergence.step) < _step_rank(first_step[divergence.category]):
            first_step[divergence.category] = divergence.step
    categories = _ordered(set(comparison.category_counts) | set(first_step))
    if not categories:
        return []
    hidden_identical = 0
    if len(categories) > max_rows:  # a short table shows the categories that diverged
        diverged = [c for c in categories if c in first_step or comparison.category_counts.get(c, {}).get("diverged")]
        hidden_identical = len(categories) - len(diverged)
        categories = diverged
    rows = [("category", "compared", "diverged", "first step diverged")]
    for category in categories[:max_rows]:
        counts = comparison.category_counts.get(category, {})
        rows.append((_cut(_clean(category), 40), _count(counts.get("compared")), _count(counts.get("diverged")),
                     _step_text(first_step[category]) if category in first_step else "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ["", style("Categories:", "bold", color)]
    for index, row in enumerate(rows):
        text = (f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}").rstrip()
        lines.append(style(text, "bold", color) if index == 0 else text)
    if len(categories) > max_rows:
        lines.append(f"  ... {len(categories) - max_rows} more categories not shown")
    if hidden_identical:
        lines.append(f"  ({hidden_identical} categories without divergences not shown)")
    return lines


def _health(comparison: Comparison, color: bool, width: int) -> list[str]:
    """One entry per run: healthy, or how many anomalies and the first few, as the health rules found them."""
    if comparison.health is None:
        return []
    lines = ["", style("Health:", "bold", color)]
    for side, run in (("a", comparison.run_a), ("b", comparison.run_b)):
        head = f"run {side.upper()} ({_cut(_clean(run.label), MAX_LABEL_CHARS)}): "
        lines += wrap(head + _clean(_health_line(comparison.health.get(side))), width, indent="  ", hang="    ")
    return lines


def _health_line(report: dict[str, Any] | None) -> str:
    if report is None:
        return "not recorded"
    skipped = [str(reason).split(":", 1)[0] for reason in report.get("not_checked") or []]
    unchecked = f"; not checked: {', '.join(skipped)}" if skipped else ""
    findings = report.get("findings") or []
    if not findings:
        return f"healthy ({report.get('steps')} steps{unchecked})"
    named = [f"{RULE_TITLES.get(f['rule'], f['rule'])} at {f['layer'] or '(root)'} (step {f['step']})"
             for f in findings[:HEALTH_NAMED]]
    more = [f"{len(findings) - HEALTH_NAMED} more"] if len(findings) > HEALTH_NAMED else []
    count = len(findings)
    return f"{count} anomal{'y' if count == 1 else 'ies'}: {'; '.join(named + more)}"


def _one_line(divergence: Divergence, *, limit: int = CONSEQUENCE_LINE_LIMIT) -> str:
    """`[step k] category name: explanation`, or the kind and the plainest evidence when nothing explains it."""
    head = f"[{_step_text(divergence.step)}] {divergence.category} {divergence.name}"
    if divergence.explanation:
        return _cut(_clean(f"{head}: {divergence.explanation}"), limit)
    evidence = divergence.evidence or {}
    details = [divergence.kind]
    if "a" in evidence or "b" in evidence:
        details.append(f"{format_value(evidence.get('a'), quote=True, limit=40)} -> "
                       f"{format_value(evidence.get('b'), quote=True, limit=40)}")
    if "mismatched" in evidence and "numel" in evidence:
        details.append(f"{format_value(evidence['mismatched'])} of {format_value(evidence['numel'])} values differ")
    if "max_abs_error" in evidence:
        details.append(f"max abs error {format_value(evidence['max_abs_error'])}")
    return _cut(_clean(f"{head}: {', '.join(details)}"), limit)


def format_value(value: Any, *, quote: bool = False, limit: int = MAX_VALUE_CHARS) -> str:
    """A value on one line: floats exactly as repr (4.340999841690063, nan, inf), long values cut and said so.

    Strings are bare unless `quote` (run A/B values, where '1' and 1 differ) or inside a list or dict.
    """
    return _cut(_clean(_plain(value, quote=quote)), limit)


def _plain(value: Any, *, quote: bool) -> str:
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy, without importing numpy
        if value.ndim:
            return _array(value)
        value = value.tolist()
    if isinstance(value, str):
        return repr(value) if quote else value
    if isinstance(value, float):
        return repr(value)  # exact, and nan, inf, -inf as Python writes them
    if isinstance(value, dict):
        items = list(value.items())
        shown = [f"{_plain(key, quote=False)}: {_plain(item, quote=True)}" for key, item in items[:MAX_ITEMS]]
        more = [f"... {len(items) - MAX_ITEMS} more"] if len(items) > MAX_ITEMS else []
        return "{" + ", ".join(shown + more) + "}"
    if isinstance(value, (list, tuple)):
        shown = [_plain(item, quote=True) for item in value[:MAX_ITEMS]]
        more = [f"... {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else []
        return "[" + ", ".join(shown + more) + "]"
    return repr(value) if isinstance(value, (bool, int)) or value is None else str(value)


def _array(array: Any) -> str:
    """A numpy array by its first items (flattened), its shape and dtype; the JSON report has every value."""
    shown = ", ".join(_plain(item, quote=True) for item in array.ravel()[:MAX_ITEMS].tolist())
    more = f", ... {array.size - MAX_ITEMS} more" if array.size > MAX_ITEMS else ""
    return f"[{shown}{more}] (shape {tuple(array.shape)}, {array.dtype})"


def _clean(text: str) -> str:
    """Control characters escaped, so a hostile name cannot break a line or inject a terminal escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit + CUT_SLACK:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters cut)"


def _field(label: str, value: str) -> str:
    return f"  {label + ':':<{LABEL_WIDTH}}{_clean(value)}".rstrip()


def _step_text(step: int | None) -> str:
    return "before training" if step is None else f"step {step}"


def _step_rank(step: int | None) -> int:
    return -1 if step is None else step


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def _ordered(categories: Any) -> list[str]:
    """Known categories in causal order, then any other in name order."""
    present = set(categories)
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
