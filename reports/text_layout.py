"""How terminal text is laid out: wrapped to a width (never a 300-column line), styled only when asked.

The reports build plain lines; these helpers wrap sentences whole under a hanging indent and, as a last
pass, fold any line still wider than the terminal. ANSI styles never count towards a line's width.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable

DEFAULT_WIDTH = 100  # columns when the terminal's width is not known (piped, in a pytest message)
MIN_WIDTH = 40  # narrower terminals get this much: a report folded at 20 columns reads worse than one too wide
HANG = 4  # extra indent of a folded line's continuation

_ANSI = {"red": "\x1b[1;31m", "green": "\x1b[1;32m", "yellow": "\x1b[1;33m", "bold": "\x1b[1m", "dim": "\x1b[2m"}
_RESET = "\x1b[0m"
_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def style(text: str, name: str, color: bool) -> str:
    """`text` in one of the styles of _ANSI, or as it is without colour."""
    return f"{_ANSI[name]}{text}{_RESET}" if color else text


def visible_length(line: str) -> int:
    return len(_ESCAPE.sub("", line))


def wrap(text: str, width: int, *, indent: str = "", hang: str | None = None) -> list[str]:
    """`text` as lines of at most `width` columns, the first indented by `indent`, the rest by `hang`
    (`indent` when None). Words longer than a line (a long parameter path) are split rather than overflow."""
    hang = indent if hang is None else hang
    lines = textwrap.wrap(text, width=max(width, len(hang) + 10), initial_indent=indent, subsequent_indent=hang,
                          break_on_hyphens=False, drop_whitespace=True)
    return lines or [indent.rstrip()]


def wrap_styled(head: str, rest: str, width: int, *, name: str, color: bool, hang: str = "  ") -> list[str]:
    """`head` (a verdict word, a heading) followed by `rest`, wrapped as plain text, then `head` styled."""
    lines = wrap(head + rest, width, hang=hang)
    if color and lines[0].startswith(head):
        lines[0] = style(head, name, color) + lines[0][len(head):]
    return lines


def fit(lines: Iterable[str], width: int) -> list[str]:
    """Every line at most `width` columns: a wider one is folded under its own indent plus HANG."""
    fitted: list[str] = []
    for line in lines:
        if visible_length(line) <= width:
            fitted.append(line)
            continue
        plain = _ESCAPE.sub("", line)
        indent = " " * min(len(plain) - len(plain.lstrip(" ")), width // 2)
        fitted += wrap(plain.strip(" "), width, indent=indent, hang=indent + " " * HANG)
    return fitted
