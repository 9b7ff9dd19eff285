"""The job pages over HTTP against a real ``jobsight api``: who may see what (sessions, signed
links, tenants, roles), the cookie's attributes, escaping, the notification's link and the
assets' caching headers. What a browser does with them is in test_browser.py."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import markupsafe
import pytest
import yaml

from api.catalog import CATALOG
from api.pageviews import CHARTS, HARDWARE_ALERTS
from api.signing import BadSignature, Signer
from tests.api.conftest import SCHEDULER
from tests.api.pages.conftest import (
    ADMIN,
    EVIL,
    EVIL_JOB,
    LONG_JOB,
    SIGNING_KEY,
    TEAM_A,
    TEAM_B,
    PagesApi,
    login,
    signed_link,
)
from tests.support import REPO_ROOT


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def test_every_chart_is_a_catalog_metric() -> None:
    assert {c.metric for c in CHARTS} <= set(CATALOG)
    assert all(CATALOG[c.metric].scope == c.scope and CATALOG[c.metric].unit == c.unit for c in CHARTS)


def test_fleet_hardware_alerts_are_alerts_jobsight_ships() -> None:
    groups = [g for path in (REPO_ROOT / "alerts" / "rules").glob("*.yaml")
              for g in yaml.safe_load(path.read_text())["groups"]]
    shipped = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert shipped >= HARDWARE_ALERTS, HARDWARE_ALERTS - shipped


def test_signer_refuses_tampered_expired_and_other_job() -> None:
    now = [1_000_000.0]
    signer = Signer(SIGNING_KEY.encode(), clock=lambda: now[0])
    sig = signer.sign_job("job-1", 60)
    assert signer.check_job("job-1", sig) == 1_000_060
    expires, mac = sig.split(".")
    flipped = f"{expires}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}"
    for bad in (f"{int(expires) + 1}.{mac}", flipped, "", "1.2.3", "x" * 500):
        with pytest.raises(BadSignature):
            signer.check_job("job-1", bad)
    with pytest.raises(BadSignature):
        signer.check_job("job-2", sig)
    with pytest.raises(BadSignature):
        Signer(b"another-key-0123456789abcdef012345").check_job("job-1", sig)
    now[0] += 61
    with pytest.raises(BadSignature, match="expired"):
        signer.check_job("job-1", sig)
    session = signer.sign_session("a-token-0123456789", 10)
    now[0] += 5
    assert signer.check_session(session) == signer.fingerprint("a-token-0123456789")
    now[0] += 6
    with pytest.raises(BadSignature):
        signer.check_session(session)


def test_notification_links_the_signed_page(pages_api: PagesApi, client: httpx.Client) -> None:
    link = signed_link(pages_api, "demo-fail")
    page = client.get(link)
    assert page.status_code == 200, page.text
    text = page.text
    first = re.search(r'<li class="cause first">\s*<h3 class="cause-title">([^<]*)</h3>', text)
    assert first is not None and "XID 79 on node2 GPU 3" in first.group(1), text[:2000]
    assert "llama-pretrain" in text and "alice" in text and "team-a" in text
    assert 'class="moment moment-fault"' in text and 'class="moment moment-nccl"' in text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # The charts' data comes with the same signature, and only for this job.
    sig = parse_qs(urlsplit(link).query)["sig"][0]
    charts = client.get(f"{pages_api.url}/jobs/demo-fail/charts.json", params={"sig": sig})
    assert charts.status_code == 200
    util = next(m for m in charts.json()["metrics"] if m["name"] == "gpu_util")
    drawn = {(s["labels"]["host"], s["labels"]["gpu"]) for s in util["series"]}
    assert drawn >= {("node2", "3"), ("node1", "0")}
    assert client.get(f"{pages_api.url}/jobs/ok-job/charts.json", params={"sig": sig}).status_code == 403


def test_signed_link_refusals(pages_api: PagesApi, client: httpx.Client) -> None:
    link = signed_link(pages_api, "demo-fail")
    sig = parse_qs(urlsplit(link).query)["sig"][0]
    expires, mac = sig.split(".")
    tampered = f"{expires}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    later = f"{int(expires) + 3600}.{mac}"
    url = pages_api.url
    for bad in (tampered, later, "garbage"):
        response = client.get(f"{url}/jobs/demo-fail", params={"sig": bad})
        assert response.status_code == 403, bad
        assert "does not open this page" in response.text
    # The signature of one job opens no other: not another tenant's, not the same tenant's.
    assert client.get(f"{url}/jobs/ok-job", params={"sig": sig}).status_code == 403
    assert client.get(f"{url}/jobs/{EVIL_JOB}", params={"sig": sig}).status_code == 403
    expired = Signer(SIGNING_KEY.encode(), clock=lambda: time.time() - 7200).sign_job("demo-fail", 60)
    response = client.get(f"{url}/jobs/demo-fail", params={"sig": expired})
    assert response.status_code == 403 and "expired" in response.text
    # A valid signature for a job id that does not exist.
    ghost = Signer(SIGNING_KEY.encode()).sign_job("no-such-job", 60)
    assert client.get(f"{url}/jobs/no-such-job", params={"sig": ghost}).status_code == 404
    # Without a signature or a session, the page asks for a login.
    response = client.get(f"{url}/jobs/demo-fail", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fjobs%2Fdemo-fail"


def test_login_session_cookie_and_tenants(pages_api: PagesApi, client: httpx.Client) -> None:
    url = pages_api.url
    bad = login(client, url, "not-a-token-0123456789")
    assert bad.status_code == 401 and "not one this API knows" in bad.text
    assert "set-cookie" not in bad.headers
    response = login(client, url, TEAM_B)
    assert response.status_code == 303 and response.headers["location"] == "/jobs"
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes, cookie
    assert "samesite=strict" in cookie.lower(), cookie
    assert TEAM_B not in cookie  # the cookie names a keyed fingerprint, never the token
    listing = client.get(f"{url}/jobs")
    assert listing.status_code == 200
    assert "ok-job" in listing.text and "demo-fail" not in listing.text
    # Another tenant's job is "not found", exactly as in the API.
    assert client.get(f"{url}/jobs/demo-fail").status_code == 404
    assert client.get(f"{url}/jobs/ok-job").status_code == 200
    assert client.get(f"{url}/", follow_redirects=False).headers["location"] == "/jobs"
    # A tampered cookie is no session.
    client.cookies.set("jobsight_session", client.cookies["jobsight_session"][:-2] + "xx")
    assert client.get(f"{url}/jobs", follow_redirects=False).status_code == 303
    # Logout clears it.
    login(client, url, TEAM_B)
    out = client.post(f"{url}/logout", follow_redirects=False)
    assert out.status_code == 303 and 'jobsight_session=""' in out.headers["set-cookie"]
    assert client.get(f"{url}/jobs", follow_redirects=False).status_code == 303


def test_session_also_opens_the_raw_api_routes(pages_api: PagesApi, client: httpx.Client) -> None:
    url = pages_api.url
    login(client, url, TEAM_A)
    summary = client.get(f"{url}/v1/jobs/demo-fail/summary")
    assert summary.status_code == 200, summary.text
    assert client.get(f"{url}/v1/jobs/ok-job").status_code == 404
    # Only reading: a session cannot change a job (those routes still need the token itself).
    assert client.patch(f"{url}/v1/jobs/demo-fail", json={"name": "x"}).status_code == 401


def test_roles(pages_api: PagesApi, client: httpx.Client) -> None:
    url = pages_api.url
    refused = login(client, url, SCHEDULER)
    assert refused.status_code == 403 and "set-cookie" not in refused.headers
    bearer = client.get(f"{url}/jobs/demo-fail", headers={"Authorization": f"Bearer {SCHEDULER}"})
    assert bearer.status_code == 403
    assert client.get(f"{url}/jobs", headers={"Authorization": f"Bearer {SCHEDULER}"}).status_code == 403
    response = login(client, url, ADMIN)
    assert response.headers["location"] == "/"
    fleet = client.get(f"{url}/")
    assert fleet.status_code == 200
    assert "jobs failed today" in fleet.text and "GPUs lost" in fleet.text
    every = client.get(f"{url}/jobs")
    assert all(job in every.text for job in ("demo-fail", "ok-job", EVIL_JOB))
    # The first diagnosed cause of a failed job, in the list.
    row = re.search(r'href="/jobs/demo-fail">demo-fail</a>.*?</tr>', every.text, re.S)
    assert row is not None and "XID 79" in row.group(0)
    failed = client.get(f"{url}/jobs", params={"status": "failed"})
    assert "demo-fail" in failed.text and "ok-job" not in failed.text
    assert client.get(f"{url}/jobs", params={"status": "nonsense"}).status_code == 422


def test_malformed_login_form(pages_api: PagesApi, client: httpx.Client) -> None:
    crowded = "&".join(f"f{i}=x" for i in range(50))
    response = client.post(f"{pages_api.url}/login", content=crowded,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400 and "set-cookie" not in response.headers


def test_cross_site_login_post_refused(pages_api: PagesApi, client: httpx.Client) -> None:
    response = client.post(f"{pages_api.url}/login", data={"token": TEAM_A},
                           headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_login_next_stays_on_this_site(pages_api: PagesApi, client: httpx.Client) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = client.post(f"{pages_api.url}/login", data={"token": TEAM_A, "next": target},
                               follow_redirects=False)
        assert response.headers["location"] == "/jobs", target
    response = client.post(f"{pages_api.url}/login", data={"token": TEAM_A, "next": "/jobs/demo-fail?q=x"},
                           follow_redirects=False)
    assert response.headers["location"] == "/jobs/demo-fail?q=x"


def test_hostile_text_is_escaped(pages_api: PagesApi, client: httpx.Client) -> None:
    login(client, pages_api.url, TEAM_A)
    page = client.get(f"{pages_api.url}/jobs/{EVIL_JOB}")
    assert page.status_code == 200
    assert "<script>window.__pwned" not in page.text
    assert "<img src=x" not in page.text
    assert str(markupsafe.escape(EVIL)) in page.text  # shown, as text
    listing = client.get(f"{pages_api.url}/jobs")
    assert "<script>window.__pwned" not in listing.text


def test_log_filters_and_context(pages_api: PagesApi, client: httpx.Client) -> None:
    login(client, pages_api.url, TEAM_A)
    url = f"{pages_api.url}/jobs/demo-fail"
    lines = re.compile(r'<li class="line[^"]*" data-kind="([^"]*)" data-rank="([^"]*)">')
    timeouts = lines.findall(client.get(url, params={"kind": "nccl_timeout"}).text)
    assert sorted(timeouts) == [("nccl_timeout", "0"), ("nccl_timeout", "1"), ("nccl_timeout", "4")]
    node2 = lines.findall(client.get(url, params={"kind": "nccl_timeout", "host": "node2"}).text)
    assert node2 == [("nccl_timeout", "4")]
    rank1 = lines.findall(client.get(url, params={"rank": "1"}).text)
    assert rank1 == [("nccl_timeout", "1")]
    words = lines.findall(client.get(url, params={"q": "loss"}).text)
    assert words == [("", "0")]
    s = pages_api.scenario
    context = client.get(url, params={"context": "t-3", "at": str(s.nccl_at + 5)}).text
    block = context.split('id="log-context"', 1)[1].split("</ol>", 1)[0]
    assert "step 100 loss" in block and 'class="match"' in block  # the line before, and the match
    assert client.get(url, params={"rank": "x"}).status_code == 200  # said on the page, not a 500


def test_assets_are_served_with_caching_headers(pages_api: PagesApi, client: httpx.Client) -> None:
    login(client, pages_api.url, TEAM_A)
    page = client.get(f"{pages_api.url}/jobs/demo-fail").text
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert any("uPlot.iife.min.js" in u for u in urls) and any("job.js" in u for u in urls), urls
    for path in urls:
        response = client.get(f"{pages_api.url}{html.unescape(path)}")
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        etag = response.headers["etag"]
        again = client.get(f"{pages_api.url}{html.unescape(path)}", headers={"If-None-Match": etag})
        assert again.status_code == 304
    assert client.get(f"{pages_api.url}/static/../settings.py").status_code == 404


def _pages(client: httpx.Client, url: str, params: dict[str, str]) -> list[list[str]]:
    """Every page of log lines the viewer gives, following its "Next lines" links."""
    found: list[list[str]] = []
    next_url: str | None = url + "?" + urlencode(params)
    while next_url is not None and len(found) < 10:
        text = client.get(next_url).text
        found.append(re.findall(r'<span class="msg">(step \d+) loss', text))
        more = re.search(r'<a rel="next" href="([^"]+)"', text)
        next_url = url.rsplit("/jobs/", 1)[0] + html.unescape(more.group(1)).split("#")[0] if more else None
    return found


def test_log_paging_with_and_without_a_host_filter(pages_api: PagesApi, client: httpx.Client) -> None:
    login(client, pages_api.url, TEAM_A)
    url = f"{pages_api.url}/jobs/{LONG_JOB}"
    pages = _pages(client, url, {})
    assert [len(p) for p in pages] == [50, 50, 50]
    assert [line for p in pages for line in p] == [f"step {i}" for i in range(150)]
    # The store has no host filter: the page fills from batches, and its cursor loses no line.
    node1 = _pages(client, url, {"host": "node1"})
    assert [len(p) for p in node1] == [50, 50]
    assert [line for p in node1 for line in p] == [f"step {i}" for i in range(150) if i % 3]
