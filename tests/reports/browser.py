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
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}


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
        return (box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"]
                and box["y"] + box["height"] <= VIEWPORT["height"])

    def shown_rows(self, table_id: str) -> int:
        """Rows of a filterable table that its name filter leaves shown."""
        return int(self.page.evaluate(
            "id => Array.from(document.querySelectorAll('#' + id + ' tbody tr[data-name]'))"
            ".filter(row => !row.hidden).length", table_id))


@contextmanager
def open_report(path: Path) -> Iterator[OpenedReport]:
    """Launch chromium, open the report from file://, and yield it once its load event fired."""
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
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
