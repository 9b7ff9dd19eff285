"""The job pages in a real headless Chromium against a real ``jobsight api``: the signed link
from the notification opens the failed job's page with its cause, timeline and charts; logs
filter; accessibility basics; hostile text stays text; tenants and signatures are enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Browser, Page

from tests.api.pages.browser import CONTRAST_JS, FAULT_PIXEL_JS, UNLABELLED_JS, chromium, watch_dialogs
from tests.api.pages.conftest import ADMIN, EVIL, EVIL_JOB, TEAM_A, TEAM_B, TRAIN_JOB, PagesApi, signed_link

TIMEOUT_MS = 60_000  # a shared 2-core machine can be slow; every wait is on a condition


def _sign_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/jobs", timeout=TIMEOUT_MS)


def _check_accessibility(page: Page, charts: bool = True, badges: bool = True) -> None:
    """Every chart has a text alternative, every form field a label, every status badge a
    contrast of at least 4.5:1 (WCAG AA for normal text)."""
    plots = page.locator(".plot")
    assert (plots.count() >= 1) == charts
    for i in range(plots.count()):
        label = plots.nth(i).get_attribute("aria-label") or ""
        assert plots.nth(i).get_attribute("role") == "img" and len(label) > 20, label
    assert page.evaluate(UNLABELLED_JS) == []
    found = page.locator(".badge")
    assert (found.count() >= 1) == badges
    for i in range(found.count()):
        ratio = found.nth(i).evaluate(CONTRAST_JS)
        assert ratio >= 4.5, (found.nth(i).inner_text(), ratio)


def _job_page(browser: Browser, link: str, scheme: Literal["light", "dark"], shots: Path) -> None:
    context = browser.new_context(color_scheme=scheme, viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        dialogs = watch_dialogs(page)
        response = page.goto(link)
        assert response is not None and response.status == 200
        first = page.locator("li.cause.first .cause-title")
        assert "XID 79 on node2 GPU 3" in first.inner_text()
        page.wait_for_selector("body[data-charts]", timeout=TIMEOUT_MS)
        assert page.locator("body").get_attribute("data-charts") == "ready", dialogs
        timeline = page.locator(".timeline-plot")
        assert timeline.get_attribute("data-rendered") == "true"
        assert int(timeline.get_attribute("data-moments") or 0) >= 4
        assert page.locator("li.moment-fault").count() == 1
        util = page.locator("#chart-gpu_util")
        assert util.get_attribute("data-rendered") == "true"
        assert util.get_attribute("data-series") == "8"  # every GPU of the job
        assert util.get_attribute("data-fault-series") == "1"
        assert int(util.get_attribute("data-markers") or 0) >= 1
        # The job reports no training steps: no training chart, not even an empty one.
        assert page.locator("#chart-train_step_seconds").count() == 0
        fault_t = page.evaluate("JSON.parse(document.getElementById('page-data').textContent).fault.t")
        assert page.evaluate(FAULT_PIXEL_JS, ["gpu_util", fault_t]), "no fault marker drawn at the fault"
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(255, 255, 255)") == (scheme == "light"), background
        _check_accessibility(page)
        page.screenshot(path=str(shots / f"job-{scheme}.png"), full_page=True)
        assert dialogs == []
    finally:
        context.close()


def test_signed_link_opens_the_failed_job(pages_api: PagesApi, tmp_path: Path) -> None:
    link = signed_link(pages_api, "demo-fail")
    with chromium() as browser:
        _job_page(browser, link, "light", tmp_path)
        _job_page(browser, link, "dark", tmp_path)
        # Without JavaScript the text is all there: the cause, the timeline, tables and logs.
        context = browser.new_context(java_script_enabled=False)
        try:
            page = context.new_page()
            page.goto(link)
            assert "XID 79 on node2 GPU 3" in page.locator("li.cause.first").inner_text()
            assert page.locator("li.moment").count() >= 4
            assert page.locator("table.per-gpu tbody tr").count() == 8
            assert page.locator("#log-lines li.line").count() >= 5
        finally:
            context.close()
        # Filtering the logs to NCCL timeouts shows the ranks' lines, with the link's signature kept.
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(link)
            page.get_by_label("Kind").fill("nccl_timeout")
            page.get_by_role("button", name="Show lines").click()
            page.wait_for_url("**kind=nccl_timeout**", timeout=TIMEOUT_MS)
            assert "sig" in parse_qs(urlsplit(page.url).query)
            lines = page.locator("#log-lines li.line")
            assert lines.count() == 3
            texts = [lines.nth(i).inner_text() for i in range(3)]
            assert all("Watchdog caught collective operation timeout" in t for t in texts), texts
            assert sorted(t.split("rank ", 1)[1].split()[0] for t in texts) == ["0", "1", "4"]
            page.locator("#log-lines li.line a.ctx").first.click()
            page.wait_for_selector("#log-context li.match", timeout=TIMEOUT_MS)
            # A tampered signature is refused.
            sig = parse_qs(urlsplit(link).query)["sig"][0]
            tampered = link.replace(sig, sig[:-1] + ("A" if sig[-1] != "A" else "B"))
            response = page.goto(tampered)
            assert response is not None and response.status == 403
        finally:
            context.close()


def test_sign_in_tenants_and_hostile_text(pages_api: PagesApi, tmp_path: Path) -> None:
    url = pages_api.url
    with chromium() as browser:
        context = browser.new_context()
        try:
            page = context.new_page()
            dialogs = watch_dialogs(page)
            _sign_in(page, url, TEAM_A)
            assert page.locator("table.jobs").get_by_role("link", name="demo-fail").count() == 1
            assert page.locator("table.jobs").get_by_role("link", name="ok-job").count() == 0
            _check_accessibility(page, charts=False)
            cookie = next(c for c in context.cookies() if c["name"] == "jobsight_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # out of reach of scripts
            # A name, a reason, a log line and an event field made of markup: all shown as text.
            response = page.goto(f"{url}/jobs/{EVIL_JOB}")
            assert response is not None and response.status == 200
            page.wait_for_load_state("load")
            assert page.evaluate("window.__pwned") is None
            assert page.locator("main img").count() == 0
            assert page.locator("main script:not([type='application/json'])").count() == 0
            assert page.locator("h1 .job-name").inner_text() == EVIL
            assert any(EVIL in t for t in page.locator("#log-lines .msg").all_inner_texts())
            assert any(EVIL in t for t in page.locator("#events td").all_inner_texts())
            page.goto(f"{url}/jobs")
            assert page.evaluate("window.__pwned") is None
            page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)
            assert dialogs == []
            # Signing out ends the session.
            page.get_by_role("button", name="Sign out").click()
            page.wait_for_url(f"{url}/login", timeout=TIMEOUT_MS)
            assert not [c for c in context.cookies() if c["name"] == "jobsight_session"]
        finally:
            context.close()
        context = browser.new_context()
        try:
            page = context.new_page()
            _sign_in(page, url, TEAM_B)
            response = page.goto(f"{url}/jobs/demo-fail")
            assert response is not None and response.status == 404  # another tenant's job
        finally:
            context.close()
        # An admin lands on the fleet.
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{url}/login")
            page.get_by_label("API token").fill(ADMIN)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{url}/", timeout=TIMEOUT_MS)
            tiles = page.locator("ul.tiles li").all_inner_texts()
            assert any("jobs failed today" in t for t in tiles), tiles
            assert any("GPUs lost" in t for t in tiles), tiles
            _check_accessibility(page, charts=False, badges=False)
            page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)
        finally:
            context.close()


def test_training_chart_shows_ranks_and_the_hang(pages_api: PagesApi, tmp_path: Path) -> None:
    url = pages_api.url
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            dialogs = watch_dialogs(page)
            _sign_in(page, url, TEAM_A)
            response = page.goto(f"{url}/jobs/{TRAIN_JOB}")
            assert response is not None and response.status == 200
            page.wait_for_selector("body[data-charts]", timeout=TIMEOUT_MS)
            assert page.locator("body").get_attribute("data-charts") == "ready", dialogs
            chart = page.locator("#chart-train_step_seconds")
            assert chart.get_attribute("data-rendered") == "true"
            assert chart.get_attribute("data-series") == "4"  # one line per rank
            assert chart.get_attribute("data-stopped-series") == "1"  # rank 3, in red
            assert chart.get_attribute("data-slow-series") == "1"  # rank 1, thicker
            assert int(chart.get_attribute("data-markers") or 0) >= 1
            assert page.locator("li.moment-hang").count() == 1
            hang_t = page.evaluate(
                "JSON.parse(document.getElementById('page-data').textContent).training.hang.t")
            assert page.evaluate(FAULT_PIXEL_JS, ["train_step_seconds", hang_t]), "no hang marker at the hang"
            # One time axis with the timeline (the GPU charts of this job have no data here).
            spans = page.evaluate("() => (window.jobsightCharts || []).map((c) => [c.chart.scales.x.min, "
                                  "c.chart.scales.x.max])")
            assert len(spans) >= 2 and all(span == spans[0] for span in spans), spans
            _check_accessibility(page)
            page.screenshot(path=str(tmp_path / "training.png"), full_page=True)
            assert dialogs == []
        finally:
            context.close()
        # Without JavaScript: the hang and the slowest ranks as text.
        context = browser.new_context(java_script_enabled=False)
        try:
            page = context.new_page()
            _sign_in_form(page, url, TEAM_A)
            page.goto(f"{url}/jobs/{TRAIN_JOB}")
            assert "rank 3 stopped stepping first" in page.locator("#training .training-hang").inner_text()
            assert page.locator("table.training-ranks tbody tr").count() == 3
        finally:
            context.close()


def _sign_in_form(page: Page, url: str, token: str) -> None:
    """Sign in without JavaScript: the form posts and the server redirects."""
    page.goto(f"{url}/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/jobs", timeout=TIMEOUT_MS)
