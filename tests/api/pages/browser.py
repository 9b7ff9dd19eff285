"""Debian's Chromium, driven by Playwright's Python package (its own browser download is never
used), started headless with a fresh profile and the flags that keep it off the network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

from tests.support import require_binary

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; Playwright gives each launch a fresh temporary --user-data-dir and
    ends the browser (and its driver) when the block exits."""
    executable = require_binary("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def watch_dialogs(page: Page) -> list[str]:
    """Every alert/confirm a page opens (an injected script would), dismissed and recorded."""
    seen: list[str] = []

    def on_dialog(dialog: Any) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    # Script errors too: a page whose script throws would leave its charts undrawn.
    page.on("pageerror", lambda error: seen.append(f"script error: {error}"))
    return seen


# In the page: the WCAG contrast ratio of an element's text against its own background.
CONTRAST_JS = """(el) => {
  const rgb = (s) => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => { const [r, g, b] = c.map((v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const style = getComputedStyle(el);
  const a = lum(rgb(style.color)), b = lum(rgb(style.backgroundColor));
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
}"""

# In the page: form fields (not hidden) that have no label a screen reader would read.
UNLABELLED_JS = """() => Array.from(document.querySelectorAll('input, select, textarea'))
  .filter((el) => el.type !== 'hidden')
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
  .map((el) => el.name || el.id || el.outerHTML)"""

# In the page: whether the chart of ``metric`` has the fault's colour on the fault's x position.
FAULT_PIXEL_JS = """([metric, t]) => {
  const fig = document.getElementById('chart-' + metric);
  const entry = (window.jobsightCharts || []).find((c) => fig.contains(c.el));
  if (!entry) { return false; }
  const u = entry.chart, ctx = u.ctx;
  const x = Math.round(u.valToPos(t, 'x', true));
  const y = Math.round(u.bbox.top + u.bbox.height / 2);
  const bad = getComputedStyle(document.documentElement).getPropertyValue('--bad').trim();
  const probe = document.createElement('canvas').getContext('2d');
  probe.fillStyle = bad; probe.fillRect(0, 0, 1, 1);
  const want = probe.getImageData(0, 0, 1, 1).data;
  for (let dx = -2; dx <= 2; dx++) {
    const px = ctx.getImageData(x + dx, y, 1, 1).data;
    if (Math.abs(px[0] - want[0]) < 40 && Math.abs(px[1] - want[1]) < 40 && Math.abs(px[2] - want[2]) < 40) {
      return true;
    }
  }
  return false;
}"""

# In the page: the time of the fault the page marks (from its embedded data).
FAULT_TIME_JS = "JSON.parse(document.getElementById('page-data').textContent).fault.t"
