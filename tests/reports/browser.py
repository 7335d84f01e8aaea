"""Open a report in real headless Chromium (Debian's /usr/bin/chromium) through Playwright, and watch it.

Records what the page did: console errors, uncaught exceptions, every request it made, and any dialog
(alert/confirm/prompt) it tried to open. Tests skip cleanly where chromium or Playwright is absent.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
FIRST_SCREEN: ViewportSize = {"width": 1400, "height": 900}  # where the verdict, its mechanisms and the chart must all show


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return f"{CHROMIUM} is not installed (CI installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install 'repro-audit[test]'"
    return None


requires_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")


@dataclass
class OpenedReport:
    """A loaded report and everything the page did while loading and afterwards."""

    page: Any
    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    load_ms: float = 0.0

    def in_viewport(self, target: Any) -> bool:
        """True when the element (a selector or a locator) is shown entirely on the first screen, unscrolled."""
        locator = self.page.locator(target) if isinstance(target, str) else target
        if self.page.evaluate("window.scrollY") != 0 or not locator.first.is_visible():
            return False
        box = locator.first.bounding_box()
        if box is None:
            return False
        size = self.page.viewport_size
        return (box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size["width"]
                and box["y"] + box["height"] <= size["height"])

    def page_height(self) -> int:
        """Height of the whole page in CSS pixels, as it is laid out now (folded sections folded)."""
        return int(self.page.evaluate("document.documentElement.scrollHeight"))

    def words_broken_across_lines(self) -> list[str]:
        """Words (letters and digits) of the visible text that the layout split over two lines. A name may
        wrap after a dot or an underscore; a word should never be cut in the middle."""
        return list(self.page.evaluate(BROKEN_WORDS_JS))

    def smallest_chart_font(self, selector: str) -> float:
        """The smallest font size, in CSS pixels as rendered (the SVG's scale included), of the text of the
        charts under `selector`."""
        return float(self.page.evaluate(SMALLEST_FONT_JS, selector))

    def shown_rows(self, table_id: str) -> int:
        """Rows of a filterable table that its name filter leaves shown."""
        return int(self.page.evaluate(
            "id => Array.from(document.querySelectorAll('#' + id + ' tbody tr[data-name]'))"
            ".filter(row => !row.hidden).length", table_id))


# Text in a folded <details> (but its summary) is laid out when asked for, yet not shown: it is skipped.
BROKEN_WORDS_JS = """() => {
  const folded = element => {
    for (let node = element; node; node = node.parentElement) {
      if (node.tagName === "DETAILS" && !node.open) {
        const summary = element.closest("summary");
        if (!summary || summary.parentElement !== node) { return true; }
      }
    }
    return false;
  };
  const broken = [];
  const walker = document.createTreeWalker(document.querySelector("main"), NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest("svg") || folded(node.parentElement)) { continue; }
    for (const match of node.textContent.matchAll(/[A-Za-z0-9]{2,}/g)) {
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const tops = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (tops.size > 1) { broken.push(match[0]); }
    }
  }
  return broken;
}"""
SMALLEST_FONT_JS = """selector => {
  const sizes = Array.from(document.querySelectorAll(selector + " svg text")).map(text => {
    const matrix = text.getScreenCTM();  // scale of the SVG on the page, rotation of the text
    return parseFloat(getComputedStyle(text).fontSize) * Math.hypot(matrix.a, matrix.b);
  });
  return sizes.length ? Math.min(...sizes) : 0;
}"""


@contextmanager
def open_report(path: Path, *, viewport: ViewportSize | None = None) -> Iterator[OpenedReport]:
    """Launch chromium, open the report from file://, and yield it once its load event fired."""
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT)
            opened = OpenedReport(page=page, url=path.resolve().as_uri())
            page.on("console", lambda message: opened.console_errors.append(message.text)
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: opened.page_errors.append(str(error)))
            page.on("request", lambda request: opened.requests.append(request.url))

            def dismiss(dialog: Any) -> None:
                opened.dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", dismiss)
            page.goto(opened.url, wait_until="load")
            # Navigation start to the end of the load event, as the browser measured it.
            opened.load_ms = float(page.evaluate(
                "performance.getEntriesByType('navigation')[0].loadEventEnd"))
            yield opened
        finally:
            browser.close()
