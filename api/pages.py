"""The pages for people: ``/`` (the fleet, for admins), ``/jobs`` (the caller's jobs) and
``/jobs/{id}`` (one job: what happened, where and when), with a login form and signed read-only
links. Server-rendered with Jinja2 (autoescaped); the charts are drawn in the browser by uPlot,
which the Makefile vendors into ``api/static/vendor/`` and this router serves with caching headers.

Access follows the API's rules (docs/security.md): a tenant sees its own jobs, an admin every
job, a scheduler token no job data at all; another tenant's job is a 404, as in the API. A
signed link (``?sig=``) opens one job's page, read-only, without a token until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import mimetypes
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from api.pageviews import (
    CHARTS,
    charts_for,
    fault_of,
    first_cause_of,
    fleet_view,
    fmt_bytes,
    fmt_duration,
    fmt_num,
    fmt_time,
    iso_time,
    log_view,
    timeline,
    training_marks,
)
from api.service import Caller, JobService, NotFound, iso
from api.settings import ApiSettings
from api.signing import BadSignature, Signer
from api.store import Job
from api.tensorboard import NotAllowed, check_logdir, roots_for
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.jobid import is_valid_job_id

log = logging.getLogger("jobsight.api")

SESSION_COOKIE = "jobsight_session"
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
JOB_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a caller (by session or bearer token), or the holder of a signed link."""

    caller: Caller | None
    via: Literal["session", "bearer", "link"]
    sig: str | None = None


@dataclass
class Asset:
    body: bytes
    content_type: str
    digest: str


@dataclass
class Assets:
    """Our own CSS/JS and the vendored uPlot, read once at start-up; URLs carry a content hash so
    the browser may keep them for a year."""

    files: dict[str, Asset] = field(default_factory=dict)

    @classmethod
    def load(cls, static_dir: Path) -> Assets:
        found: dict[str, Asset] = {}
        names = [p.name for p in sorted(static_dir.glob("*")) if p.is_file()]
        names += [f"vendor/{name}" for name in VENDOR_FILES]
        for name in names:
            path = static_dir / name
            try:
                body = path.read_bytes()
            except OSError:
                continue
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            found[name] = Asset(body, kind, hashlib.sha256(body).hexdigest()[:16])
        missing = [name for name in VENDOR_FILES if f"vendor/{name}" not in found]
        if missing:
            log.warning("uPlot is not vendored (%s missing under %s): job pages show no charts; `make setup` "
                        "installs it", ", ".join(missing), static_dir / "vendor")
        return cls(found)

    def url(self, name: str) -> str | None:
        asset = self.files.get(name)
        return f"/static/{name}?v={asset.digest}" if asset is not None else None


# -- the router -----------------------------------------------------------------------------------


def pages_router(settings: ApiSettings, service: JobService, signer: Signer,
                 clock: Callable[[], float] = time.time, static_dir: Path = STATIC) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = Assets.load(static_dir)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is text unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, iso=iso_time, duration=fmt_duration, bytes=fmt_bytes, num=fmt_num)
    env.globals.update(asset=assets.url)
    by_fingerprint = page_sessions(settings, signer).by_fingerprint
    tokens = [(t.token.encode(), Caller(t.tenant, t.role)) for t in settings.tokens]
    public = settings.public_url or f"http://{settings.listen}"
    secure_cookie = public.startswith("https://")

    # -- helpers --------------------------------------------------------------------------------

    def render(name: str, code: int = 200, /, **context: Any) -> HTMLResponse:
        body = env.get_template(name).render(**context)
        return HTMLResponse(body, status_code=code, headers=_page_headers())

    def token_caller(given: str) -> Caller | None:
        found: Caller | None = None
        for secret, who in tokens:
            # Every token is compared, so the time taken does not tell which one matched.
            if hmac.compare_digest(secret, given.encode()):
                found = who
        return found

    def viewer(request: Request) -> Viewer | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            who = token_caller(header[7:].strip())
            if who is None:
                raise PageError(401, "Unknown token", "The bearer token is not one this API knows.")
            return Viewer(who, "bearer")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                found = by_fingerprint.get(signer.check_session(cookie))
            except BadSignature:
                found = None
            if found is not None:
                return Viewer(found, "session")
        return None

    def require(request: Request) -> Caller:
        seen = viewer(request)
        if seen is None or seen.caller is None:
            raise _Login(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        if seen.caller.scheduler:
            raise PageError(403, "Not for scheduler tokens",
                            "A scheduler token registers and finishes jobs; it reads no job data.")
        return seen.caller

    def base_context(request: Request, seen: Viewer | None) -> dict[str, Any]:
        who = seen.caller if seen is not None else None
        return {"who": who, "via": seen.via if seen else None, "path": request.url.path,
                "grafana_url": settings.grafana_url}

    def job_for(request: Request, job_id: str) -> tuple[Job, str, Viewer]:
        """The job and how it is seen: by a signed link (``sig``) or by a caller who may see it."""
        if not is_valid_job_id(job_id) or len(job_id) > 128:
            raise PageError(404, "No such job", "There is no job with this id.")
        sig = request.query_params.get("sig")
        if sig is not None:
            try:
                signer.check_job(job_id, sig)
            except BadSignature as exc:
                raise PageError(403, "This link does not open this page",
                                f"The link's signature is not valid ({exc}). Ask for a new link, or sign in."
                                ) from None
            job = service.store.get_job(job_id)
            if job is None:
                raise PageError(404, "No such job", "There is no job with this id.")
            return job, "registered", Viewer(None, "link", sig)
        who = require(request)
        try:
            job, source = service.visible_job(job_id, who)
        except NotFound:
            raise PageError(404, "No such job", "There is no job with this id that you may see.") from None
        return job, source, Viewer(who, "bearer" if request.headers.get("authorization") else "session")

    # -- static assets --------------------------------------------------------------------------

    @router.get("/static/{name:path}")
    def static(name: str, request: Request) -> Response:
        asset = assets.files.get(name)
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        etag = f'"{asset.digest}"'
        pinned = request.query_params.get("v") == asset.digest
        headers = {
            "ETag": etag,
            # A hashed URL never changes meaning; an unhashed one is revalidated after five minutes.
            "Cache-Control": "public, max-age=31536000, immutable" if pinned else "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.content_type, headers=headers)

    # -- login ----------------------------------------------------------------------------------

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        target = _safe_next(request.query_params.get("next"))
        return render("login.html", **base_context(request, None), next=target, error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        _same_origin(request)
        raw = await request.body()
        try:
            form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:
            raise PageError(400, "Bad form", "The sign-in form has more fields than it should.") from None
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or [""])[0])
        who = token_caller(token) if token else None
        if who is None or who.scheduler:
            error = ("A scheduler token cannot sign in: it reads no job data." if who is not None
                     else "That token is not one this API knows.")
            return render("login.html", 401 if who is None else 403, **base_context(request, None),
                          next=target, error=error)
        response = RedirectResponse(target or ("/" if who.admin else "/jobs"), status_code=303)
        response.set_cookie(SESSION_COOKIE, signer.sign_session(token, settings.pages.session_seconds),
                            max_age=int(settings.pages.session_seconds), path="/", httponly=True,
                            samesite="strict", secure=secure_cookie)
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        _same_origin(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=secure_cookie)
        return response

    # -- the fleet ------------------------------------------------------------------------------

    @router.get("/")
    def fleet(request: Request) -> Response:
        who = require(request)
        if not who.admin:
            return RedirectResponse("/jobs", status_code=303)
        return render("fleet.html", **base_context(request, viewer(request)), **fleet_view(service, clock))

    # -- jobs -----------------------------------------------------------------------------------

    @router.get("/jobs")
    def jobs(request: Request) -> Response:
        who = require(request)
        params = request.query_params
        status = params.get("status") or None
        if status is not None and status not in JOB_STATUSES:
            raise PageError(422, "Unknown status", f"status must be one of {', '.join(JOB_STATUSES)}")
        user = (params.get("user") or "").strip()[:128] or None
        since_text = (params.get("since") or "").strip()[:32]
        since = _parse_day(since_text) if since_text else None
        cursor = params.get("after")
        after = None
        if cursor:
            stamp, _, last_id = cursor.partition(":")
            try:
                after = (float(stamp), last_id)
            except ValueError:
                raise PageError(422, "Bad page link", "The page link is not one this page made.") from None
        scope = None if who.all_tenants else who.tenant
        found = service.store.list_jobs(tenant=scope, status=status, user=user, since=since, limit=51,
                                        after=after)
        more = len(found) > 50
        found = found[:50]
        rows = [{"job": job, "cause": first_cause_of(service, job, budget=i < 10)}
                for i, job in enumerate(found)]
        discovered: list[Job] = []
        warnings: list[str] = []
        if who.admin and not cursor and status in (None, "running") and user is None and since is None:
            try:
                seen = service.discovered()
                known = service.store.known_job_ids(seen)
                discovered = [job for job_id, job in sorted(seen.items()) if job_id not in known]
            except DependencyUnavailable as exc:
                warnings.append(f"discovered jobs omitted: {exc}")
        next_query = None
        if more and found:
            query = {k: v for k, v in (("status", status), ("user", user), ("since", since_text)) if v}
            query["after"] = f"{found[-1].created_at!r}:{found[-1].job_id}"
            next_query = urllib.parse.urlencode(query)
        return render("jobs.html", **base_context(request, viewer(request)), rows=rows, discovered=discovered,
                      warnings=warnings, status=status, user=user or "", since=since_text,
                      statuses=JOB_STATUSES, next_query=next_query)

    @router.get("/jobs/{job_id}")
    def job_page(job_id: str, request: Request) -> Response:
        began = time.perf_counter()
        job, source, seen = job_for(request, job_id)
        summary = service.summary(job, source, strict=False)
        notifications = service.store.list_notifications(job.job_id)
        moments = timeline(job, summary, notifications)
        start, end = summary.start.timestamp(), summary.end.timestamp()
        # The axis spans the run and the moments near it; a notification sent long after (an old
        # job's retried delivery) is listed, not allowed to squash the charts into a corner.
        slack = max(600.0, 0.1 * (end - start))
        times = [m.t for m in moments if start - slack <= m.t <= end + slack]
        pad = _pad(start, end)
        axis = (min([start - pad, *times]), max([end + pad, *times]))
        fault = fault_of(summary)
        logs = log_view(service, job, request.query_params)
        sig_query = f"sig={urllib.parse.quote(seen.sig)}" if seen.sig else ""
        charts_url = f"/jobs/{urllib.parse.quote(job.job_id, safe='')}/charts.json" + (
            f"?{sig_query}" if sig_query else "")
        page_data = {
            "chartsUrl": charts_url, "axis": list(axis),
            "moments": [{"t": m.t, "kind": m.kind, "label": m.label} for m in moments],
            "fault": fault,
            "training": training_marks(summary),
        }
        links = service.links(job)
        charts = charts_for(summary)
        response = render(
            "job.html", **base_context(request, seen), job=job, source=source, summary=summary,
            diagnosis=summary.diagnosis, moments=moments, notifications=notifications, page_data=page_data,
            charts=charts, fault=fault, logs=logs, links=links, sig=seen.sig, sig_query=sig_query,
            read_only=seen.via == "link", charts_available=assets.url("vendor/uPlot.iife.min.js") is not None,
            duration=(job.ended_at or clock()) - job.started_at if job.started_at is not None else None,
            tensorboard_roots=bool(settings.tensorboard.allowed_roots),
        )
        # The server's own time for the page (benchmarks/api_load.py reads it; so do browsers' tools).
        response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - began) * 1000:.1f}"
        return response

    @router.get("/jobs/{job_id}/charts.json")
    def charts_data(job_id: str, request: Request) -> Response:
        job, _, _ = job_for(request, job_id)
        names = [c.metric for c in CHARTS]
        start, end = service.window(job)
        pad = _pad(start, end)
        # About 600 points across, however short the job: the demo's job lives for seconds, and
        # the API's default step (15 s or more) would leave its charts empty.
        step = max(1.0, (end - start + 2 * pad) / 600)
        try:
            body = service.metrics_json(job, names, iso(start - pad), iso(end + pad), step)
        except InvalidInput:
            # A job so large that this would pass max_points_per_answer: the API's own, coarser step.
            body = service.metrics_json(job, names, iso(start - pad), iso(end + pad), None)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    @router.api_route("/jobs/{job_id}/tensorboard", methods=["GET", "POST"])
    def tensorboard(job_id: str, request: Request) -> Response:
        if request.method == "POST":
            _same_origin(request)
        if request.query_params.get("sig") is not None:
            raise PageError(403, "Sign in to start TensorBoard",
                            "A shared link shows the page only; TensorBoard needs you to sign in.")
        job, _, seen = job_for(request, job_id)
        if not job.tensorboard_logdir:
            raise PageError(404, "No TensorBoard", "This job has no tensorboard_logdir.")
        try:
            roots = roots_for(settings.tensorboard.allowed_roots, job.tenant)
            logdir = check_logdir(job.tensorboard_logdir, roots, job.tenant)
        except NotAllowed as exc:
            raise PageError(403, "TensorBoard is off for this job", str(exc)) from None
        _, ready = service.tensorboard.ensure(logdir)
        ui = f"/v1/jobs/{urllib.parse.quote(job.job_id, safe='')}/tensorboard/ui/"
        if ready:
            return RedirectResponse(ui, status_code=303)
        return render("tensorboard.html", **base_context(request, seen), job=job)

    return router


class _Login(Exception):
    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class PageSessions:
    signer: Signer
    by_fingerprint: dict[str, Caller]


def page_sessions(settings: ApiSettings, signer: Signer) -> PageSessions:
    # A session names a token by a keyed fingerprint; the token's role is looked up each time, so
    # a token taken out of the configuration ends its sessions.
    found = {signer.fingerprint(t.token): Caller(t.tenant, t.role) for t in settings.tokens}
    return PageSessions(signer, found)


def session_caller(request: Request) -> Caller | None:
    """The caller of a page session, for the API's reading routes (GET/HEAD, and TensorBoard's
    proxied UI, which also POSTs its queries): a signed-in browser may open the raw routes its job
    page links to. It never changes anything through them; the cookie is SameSite=Strict besides."""
    sessions: PageSessions | None = getattr(request.app.state, "page_sessions", None)
    value = request.cookies.get(SESSION_COOKIE)
    if sessions is None or not value:
        return None
    reading = request.method in ("GET", "HEAD") or (
        request.method == "POST" and "/tensorboard/ui/" in request.url.path)
    if not reading:
        return None
    try:
        return sessions.by_fingerprint.get(sessions.signer.check_session(value))
    except BadSignature:
        return None


def install_page_errors(app: FastAPI, settings: ApiSettings, signer: Signer) -> None:
    """HTML answers for the pages' own errors (a login redirect, or a short page saying what), and
    the sessions the API's reading routes accept (:func:`session_caller`)."""
    app.state.page_sessions = page_sessions(settings, signer)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.globals.update(asset=lambda name: f"/static/{name}")

    @app.exception_handler(_Login)
    async def _to_login(_: Request, exc: _Login) -> Response:
        return RedirectResponse("/login?" + urllib.parse.urlencode({"next": exc.next_path}), status_code=303)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        body = env.get_template("error.html").render(
            who=None, via=None, path=request.url.path, grafana_url=None, title=exc.title, message=exc.message,
            status=exc.status)
        return HTMLResponse(body, status_code=exc.status, headers=_page_headers())


# -- pieces ---------------------------------------------------------------------------------------


def _pad(start: float, end: float) -> float:
    """Room on either side of the run on the charts: the ramp up, the last samples."""
    return max(10.0, 0.05 * (end - start))


def _page_headers() -> dict[str, str]:
    return {
        # Pages carry a job's logs (and a signed link in their URL): never cached, never framed,
        # never sent on as a Referer to Grafana or anywhere else. (same-origin, not no-referrer:
        # with no-referrer a browser sends "Origin: null" on our own form posts.)
        "Cache-Control": "no-store",
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                   "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                   "frame-ancestors 'none'; form-action 'self'",
    }


def _safe_next(value: str | None) -> str | None:
    """Only a path on this site: never ``//host`` or a scheme, which would send the user away."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 2000:
        return None
    return value


def _same_origin(request: Request) -> None:
    """Form posts come from our own pages: a browser names the page's origin in ``Origin``."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser (curl, a script): it could send any Origin anyway
    host = request.headers.get("host", "")
    if urllib.parse.urlsplit(origin).netloc != host:
        raise PageError(403, "Cross-site form", "This form may only be sent from this site's own pages.")


def _parse_day(text: str) -> float:
    for layout in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise PageError(422, "Bad date", "since must be a date like 2026-11-29 (UTC), optionally with HH:MM.")
