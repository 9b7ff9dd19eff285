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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from api.catalog import CATALOG
from api.diagnosis import HARDWARE_KINDS, NCCL_KINDS
from api.logsource import UnconfiguredLogSource
from api.models import SummaryResponse
from api.notify import first_cause
from api.service import Caller, JobService, NotFound, iso, record_out
from api.settings import ApiSettings
from api.signing import BadSignature, Signer
from api.store import Job
from api.tensorboard import NotAllowed, check_logdir, roots_for
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.identity import is_valid_job_id
from jobsight.logstore import LogRecord

log = logging.getLogger("jobsight.api")

SESSION_COOKIE = "jobsight_session"
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
JOB_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
LOG_PAGE = 50
CONTEXT_LINES = 8
# Alerts that mean a node's hardware is at fault (alerts/rules); the fleet page lists their nodes.
HARDWARE_ALERTS = frozenset({
    "GPUXidError", "GPULost", "GPUMissing", "GPUEccDoubleBitError", "GPUNVLinkErrors", "GPURowRemapFailure",
    "GPURecoveryActionRequired", "GPUPcieLinkDegraded", "RDMALinkDowned", "RDMAPhysicalLinkDown",
    "RDMALinkFlapping", "RDMAPortNotActive", "RDMALinkDegraded",
})


@dataclass(frozen=True)
class Chart:
    metric: str
    title: str
    unit: str
    scope: Literal["gpu", "node"]


CHARTS = (
    Chart("gpu_util", "GPU utilisation", "percent", "gpu"),
    Chart("gpu_memory_used", "GPU memory used", "bytes", "gpu"),
    Chart("gpu_power", "GPU power", "watts", "gpu"),
    Chart("gpu_temperature", "GPU temperature", "celsius", "gpu"),
    Chart("gpu_tensor_active", "Tensor pipes active", "ratio", "gpu"),
    Chart("rdma_rx_bytes", "RDMA received", "bytes_per_second", "node"),
    Chart("rdma_tx_bytes", "RDMA transmitted", "bytes_per_second", "node"),
    Chart("job_cpu", "Job CPU", "cores", "node"),
    Chart("job_memory", "Job memory (RSS)", "bytes", "node"),
)
assert all(c.metric in CATALOG for c in CHARTS)


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


# -- formatting -----------------------------------------------------------------------------------


def _moment(value: float | datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if isinstance(value, datetime) else datetime.fromtimestamp(value, tz=UTC)


def fmt_time(value: float | datetime | None, with_date: bool = True) -> str:
    moment = _moment(value)
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S")


def iso_time(value: float | datetime | None) -> str:
    moment = _moment(value)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment is not None else ""


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def fmt_num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


# -- the timeline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    t: float
    kind: Literal["start", "fault", "nccl", "alert", "failure", "notification", "cause"]
    label: str


def timeline(job: Job, summary: SummaryResponse, notifications: Sequence[Any]) -> list[Moment]:
    """Job start, the causes (the first hardware fault among them), NCCL timeouts per rank,
    alerts firing, the failure and the notification, oldest first."""
    out: list[Moment] = []
    if job.started_at is not None:
        out.append(Moment(job.started_at, "start", "job started"))
    diagnosis = summary.diagnosis
    if diagnosis is not None:
        hardware_seen = False
        for cause in diagnosis.causes[:3]:
            if cause.time is None:
                continue
            hardware = cause.kind in HARDWARE_KINDS and not hardware_seen
            hardware_seen = hardware_seen or hardware
            kind: Literal["fault", "cause"] = "fault" if hardware else "cause"
            prefix = "first hardware fault" if hardware else f"cause {cause.rank}"
            out.append(Moment(cause.time.timestamp(), kind, f"{prefix}: {cause.title}"))
    ranks: dict[str, float] = {}
    for event in summary.events:
        if event.event_kind not in NCCL_KINDS or event.event_kind != "nccl_timeout":
            continue
        who = f"rank {event.rank}" if event.rank is not None else event.host
        ranks.setdefault(who, event.timestamp.timestamp())
    for who, at in ranks.items():
        out.append(Moment(at, "nccl", f"NCCL timeout, {who}"))
    for alert in summary.alerts:
        where = " ".join(v for v in (alert.labels.get("Hostname"), _gpu_label(alert.labels)) if v)
        out.append(Moment(alert.starts_at.timestamp(), "alert",
                          f"alert {alert.alertname or '?'} firing" + (f" ({where})" if where else "")))
    failed_at = diagnosis.failed_at.timestamp() if diagnosis and diagnosis.failed_at else None
    if job.status == "failed":
        failure = failed_at or job.ended_at or job.failed_at
        if failure is not None:
            out.append(Moment(failure, "failure", f"job failed (exit code {job.exit_code})"
                              if job.exit_code is not None else "job failed"))
    for note in notifications:
        if note.sent_at is not None:
            out.append(Moment(note.sent_at, "notification", "notification sent"))
    out.sort(key=lambda m: m.t)
    return out


def _gpu_label(labels: Mapping[str, str]) -> str | None:
    gpu = labels.get("gpu")
    return f"GPU {gpu}" if gpu is not None else None


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
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
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
        return render("fleet.html", **base_context(request, viewer(request)), **_fleet(service, clock))

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
        rows = [{"job": job, "cause": _first_cause(service, job, budget=i < 10)}
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
        fault = _fault(summary)
        logs = _log_view(service, job, request.query_params)
        sig_query = f"sig={urllib.parse.quote(seen.sig)}" if seen.sig else ""
        charts_url = f"/jobs/{urllib.parse.quote(job.job_id, safe='')}/charts.json" + (
            f"?{sig_query}" if sig_query else "")
        page_data = {
            "chartsUrl": charts_url, "axis": list(axis),
            "moments": [{"t": m.t, "kind": m.kind, "label": m.label} for m in moments],
            "fault": fault,
        }
        links = service.links(job)
        charts = list(CHARTS)
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


def _first_cause(service: JobService, job: Job, budget: bool) -> str | None:
    """The first diagnosed cause of a failed job: from its notification, else (for the first few
    jobs of a page) from a fresh summary, which the query cache keeps for settled jobs."""
    if job.status != "failed":
        return None
    for note in reversed(service.store.list_notifications(job.job_id)):
        cause = first_cause(note.body)
        if cause:
            return cause
    if not budget:
        return None
    try:
        diagnosis = service.summary(job, "registered", strict=False).diagnosis
    except (DependencyUnavailable, InvalidInput) as exc:
        log.info("no first cause for job %s on /jobs: %s", job.job_id, exc)
        return None
    return diagnosis.causes[0].title if diagnosis and diagnosis.causes else None


def _fault(summary: SummaryResponse) -> dict[str, Any] | None:
    """The first hardware fault the diagnosis names (time, host, GPU): marked on the charts."""
    if summary.diagnosis is None:
        return None
    for cause in summary.diagnosis.causes:
        if cause.kind in HARDWARE_KINDS and cause.time is not None:
            return {"t": cause.time.timestamp(), "host": cause.host, "gpu": cause.gpu, "title": cause.title}
    return None


@dataclass
class LogView:
    q: str = ""
    kind: str = ""
    rank: str = ""
    host: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    error: str | None = None
    context: list[dict[str, Any]] | None = None
    context_of: str | None = None
    hosts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    filtered: bool = False


def _log_view(service: JobService, job: Job, params: Mapping[str, str]) -> LogView:
    hosts, _ = service.hosts_and_gpus(job)
    view = LogView(q=(params.get("q") or "")[:1000], kind=(params.get("kind") or "")[:64],
                   rank=(params.get("rank") or "")[:8], host=(params.get("host") or "")[:253], hosts=hosts,
                   kinds=sorted({"nccl_timeout", "nccl_error", "gpu_xid", "gpu_fallen_off_bus", "cuda_oom",
                                 "child_failed", "process_exit", "ecc_error", "oom_killed"}))
    view.filtered = any((view.q, view.kind, view.rank, view.host))
    if isinstance(service.logs, UnconfiguredLogSource):
        view.error = "No log store is configured."
        return view
    rank: int | None = None
    if view.rank:
        if not view.rank.isdigit():
            view.error = "rank must be a number"
            return view
        rank = int(view.rank)
    kind = view.kind or None
    if kind is not None and not kind.replace("_", "").isalnum():
        view.error = "kind must be a word like nccl_timeout"
        return view
    cursor = params.get("cursor") or None
    try:
        context_id = params.get("context")
        if context_id:
            view.context = _context(service, job, context_id, params.get("at") or "")
            view.context_of = context_id
        records, view.next_cursor = _search(service, job, view.q or None, kind, rank, view.host or None,
                                            cursor)
        view.records = [record_out(r) for r in records]
    except (DependencyUnavailable, InvalidInput) as exc:
        view.error = str(exc)
    return view


def _search(service: JobService, job: Job, q: str | None, kind: str | None, rank: int | None,
            host: str | None, cursor: str | None) -> tuple[list[LogRecord], str | None]:
    """One page of the job's log lines, oldest first. The store has no host filter, so with one
    the page is filled batch by batch, each batch no larger than what is still wanted: every
    match of a batch fits, and the store's cursor after it is exact."""
    found: list[LogRecord] = []
    for _ in range(20):
        wanted = LOG_PAGE - len(found)
        page = service.logs.search(job_id=job.job_id, q=q, kind=kind, rank=rank, limit=wanted, cursor=cursor)
        found += [r for r in page.records if host is None or r.host == host]
        cursor = page.next_cursor
        if cursor is None or len(found) >= LOG_PAGE or host is None:
            break
    return found, cursor


def _context(service: JobService, job: Job, record_id: str, at_text: str) -> list[dict[str, Any]]:
    """The lines of the same file around one record: what came just before and after it. The
    store has no file filter, so the window around the line's time widens until it holds enough
    lines of that file, or as many records as one search returns."""
    try:
        at = float(at_text)
    except ValueError:
        raise InvalidInput("the context link is missing the line's time") from None
    found: list[LogRecord] = []
    for half in (60.0, 600.0, 3600.0, 6 * 3600.0):
        page = service.logs.search(job_id=job.job_id, since=at - half, until=at + half + 0.001, limit=1000)
        target = next((r for r in page.records if r.record_id == record_id), None)
        if target is None:
            if page.next_cursor is not None:
                break  # this window is already too full to hold the line: keep the last answer
            continue
        same = [r for r in page.records if r.host == target.host and r.path == target.path]
        index = same.index(target)
        found = same[max(0, index - CONTEXT_LINES): index + CONTEXT_LINES + 1]
        enough = index >= CONTEXT_LINES and len(same) - index > CONTEXT_LINES
        if enough or page.next_cursor is not None:
            break
    return [{**record_out(r), "match": r.record_id == record_id} for r in found]


def _fleet(service: JobService, clock: Callable[[], float]) -> dict[str, Any]:
    now = clock()
    today = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight = today.timestamp()
    running = service.store.list_jobs(status="running", limit=1000)
    failed = [j for j in service.store.list_jobs(status="failed", since=midnight, limit=1000)
              if (j.ended_at or j.failed_at or now) >= midnight]
    warnings: list[str] = []
    gpus: dict[str, int] | None = None
    try:
        gpus = _gpu_states(service)
    except DependencyUnavailable as exc:
        warnings.append(f"GPU states unavailable: {exc}")
    firing = service.store.list_alerts(status="firing", limit=200)
    faults: dict[str, list[str]] = {}
    for alert in service.store.list_alerts(limit=1000):
        if alert.alertname in HARDWARE_ALERTS and alert.starts_at >= now - 86400:
            host = alert.labels.get("Hostname") or alert.labels.get("instance") or "?"
            what = alert.alertname + (f" GPU {alert.labels['gpu']}" if "gpu" in alert.labels else "")
            if alert.labels.get("xid"):
                what += f" (XID {alert.labels['xid']})"
            if what not in faults.setdefault(host, []):
                faults[host].append(what)
    return {"running": running, "failed": failed, "gpus": gpus, "firing": firing,
            "faults": sorted(faults.items()), "warnings": warnings, "since": midnight}


def _gpu_states(service: JobService) -> dict[str, int]:
    """Busy (held by a job), idle, lost (``jobsight_gpu_up`` 0), over the last five minutes."""
    up = service.prometheus.query("max by (Hostname, gpu) (last_over_time(jobsight_gpu_up[5m]))")
    held = service.prometheus.query("max by (Hostname, gpu) (last_over_time(jobsight_gpu_job_info[5m]))")
    busy_keys = {(s.labels.get("Hostname"), s.labels.get("gpu")) for s in held}
    states = {"busy": 0, "idle": 0, "lost": 0}
    for sample in up:
        key = (sample.labels.get("Hostname"), sample.labels.get("gpu"))
        if sample.value < 1:
            states["lost"] += 1
        elif key in busy_keys:
            states["busy"] += 1
        else:
            states["idle"] += 1
    return states
