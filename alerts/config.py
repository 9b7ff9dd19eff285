"""Where the rule files live, and the two things rendered from them at deploy time: rule files with
a configured job-stall window, and the Alertmanager configuration.

The rule files under ``alerts/rules`` are static YAML that ``promtool`` checks and tests as they are;
only :func:`render_rules` rewrites one expression (``JobStalled``) when the stall window differs from
the default. The Alertmanager configuration is a template (``alertmanager.yml.tmpl``) whose scalar
placeholders are filled with YAML-quoted values; credentials and per-tenant routes are added to the
parsed document, so no user value is ever spliced into YAML syntax.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from jobsight.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
RULES_DIR = PACKAGE_DIR / "rules"
RULE_TESTS_DIR = PACKAGE_DIR / "tests"
ALERTMANAGER_TEMPLATE = PACKAGE_DIR / "alertmanager.yml.tmpl"

RUNBOOK_BASE_URL = "https://github.com/jobsight/jobsight/blob/main/docs/runbooks/"

# The JobStalled expression with the stall window in seconds. The committed jobs.yaml holds it with
# DEFAULT_JOB_STALL_SECONDS; a test keeps the two identical.
DEFAULT_JOB_STALL_SECONDS = 900
JOB_STALLED_EXPR = """\
(time() - max by (job_id) (jobsight_log_job_last_record_timestamp_seconds)) > {seconds}
  and on (job_id)
(
  max by (job_id) (
    jobsight_gpu_job_info
      * on (Hostname, gpu) group_left ()
    max_over_time(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE[{seconds}s])
  ) < 0.01
    or
  max by (job_id) (
    jobsight_gpu_job_info
      * on (Hostname, gpu) group_left ()
    max_over_time(DCGM_FI_DEV_GPU_UTIL[{seconds}s])
  ) < 1
)
"""

# Prometheus/Alertmanager duration syntax, e.g. 5s, 1m30s, 4h, 1d.
_DURATION_RE = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_DURATION_UNITS_S = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
RENDERED_HEADER = (
    "# Rendered by jobsight (alerts.config.render_alertmanager_config) from alerts/alertmanager.yml.tmpl.\n"
    "# Do not edit: change the template or the settings and render again.\n"
)


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    """The Prometheus rule files, sorted (``rules/*.yaml``)."""
    return sorted(rules_dir.glob("*.yaml"))


def rule_test_files(tests_dir: Path = RULE_TESTS_DIR) -> list[Path]:
    """The ``promtool test rules`` files, sorted (``tests/*.yaml``)."""
    return sorted(tests_dir.glob("*.yaml"))


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule as written in a rule file."""

    file: Path
    group: str
    alert: str
    expr: str
    labels: dict[str, str]
    annotations: dict[str, str]


def load_alert_rules(files: list[Path] | None = None) -> list[AlertRule]:
    """Every alerting rule (recording rules are skipped) of ``files`` (default: all rule files)."""
    rules: list[AlertRule] = []
    for path in files if files is not None else rule_files():
        document = _load_yaml(path)
        for group in document.get("groups") or []:
            for rule in group.get("rules") or []:
                if "alert" not in rule:
                    continue
                rules.append(
                    AlertRule(
                        file=path,
                        group=str(group.get("name", "")),
                        alert=str(rule["alert"]),
                        expr=str(rule.get("expr", "")),
                        labels={str(k): str(v) for k, v in (rule.get("labels") or {}).items()},
                        annotations={str(k): str(v) for k, v in (rule.get("annotations") or {}).items()},
                    )
                )
    return rules


def duration_seconds(value: str) -> float:
    """Seconds in a Prometheus duration such as ``15m`` or ``1h30m``; ConfigError otherwise."""
    text = value.strip()
    if not text or not _DURATION_RE.match(text):
        raise ConfigError(f"invalid duration {value!r}: expected e.g. 30s, 5m, 1h30m")
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|[ywdhms])", text):
        total += int(number) / 1000 if unit == "ms" else int(number) * _DURATION_UNITS_S[unit]
    return total


def render_rules(
    out_dir: Path,
    *,
    job_stall_after: str = "15m",
    runbook_base_url: str = RUNBOOK_BASE_URL,
    rules_dir: Path = RULES_DIR,
) -> list[Path]:
    """Write the rule files into ``out_dir`` for Prometheus to load, with the JobStalled window set
    to ``job_stall_after`` (a Prometheus duration, at least 1m) and every ``runbook_url`` pointing
    under ``runbook_base_url`` (e.g. your own docs site; ``<base><AlertName>.md``). With the
    defaults the files are copied byte for byte. Give ``out_dir`` to these files alone: other
    ``*.yaml`` files there would be loaded by a ``rule_files: [<out_dir>/*.yaml]`` glob too.
    Returns the written paths."""
    seconds = int(duration_seconds(job_stall_after))
    if seconds < 60:
        raise ConfigError(f"job stall window {job_stall_after!r} is too short: use at least 1m")
    _check_url("runbook_base_url", runbook_base_url)
    if not runbook_base_url.endswith("/"):
        runbook_base_url += "/"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in rule_files(rules_dir):
        target = out_dir / path.name
        if seconds == DEFAULT_JOB_STALL_SECONDS and runbook_base_url == RUNBOOK_BASE_URL:
            # Byte-identical copy: comments survive, and what runs is what promtool tested.
            target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        else:
            document = _load_yaml(path)
            for group in document.get("groups") or []:
                for rule in group.get("rules") or []:
                    if rule.get("alert") == "JobStalled":
                        rule["expr"] = JOB_STALLED_EXPR.format(seconds=seconds)
                    annotations = rule.get("annotations") or {}
                    if "runbook_url" in annotations and "alert" in rule:
                        annotations["runbook_url"] = f"{runbook_base_url}{rule['alert']}.md"
            target.write_text(_dump_yaml(document), encoding="utf-8")
        written.append(target)
    return written


@dataclass(frozen=True)
class TenantReceiver:
    """An extra webhook that also gets every alert labelled ``tenant=<name>`` (the API still gets
    them too)."""

    url: str
    bearer_token: str | None = None


@dataclass(frozen=True)
class AlertmanagerSettings:
    """The grouping and repetition knobs. ``group_wait`` is the delay between the first alert of a
    group and its notification: with ``for: 0s`` rules it dominates fault-to-notification time."""

    group_wait: str = "5s"
    group_interval: str = "1m"
    repeat_interval: str = "4h"
    critical_repeat_interval: str = "1h"
    info_group_interval: str = "5m"
    info_repeat_interval: str = "24h"
    resolve_timeout: str = "5m"
    tenants: Mapping[str, TenantReceiver] = field(default_factory=dict)


def render_alertmanager_config(
    webhook_url: str,
    webhook_token: str | None = None,
    *,
    webhook_token_file: Path | None = None,
    settings: AlertmanagerSettings | None = None,
    template: Path = ALERTMANAGER_TEMPLATE,
) -> str:
    """The Alertmanager configuration (YAML text) that sends every alert to the jobsight API webhook
    ``webhook_url`` (``.../v1/alerts/webhook``) with ``Authorization: Bearer <token>``.

    Give the token either inline (``webhook_token``) or as a file Alertmanager reads
    (``webhook_token_file``, keeps the secret out of the config file). Raises ConfigError naming the
    bad value."""
    settings = settings or AlertmanagerSettings()
    _check_url("webhook_url", webhook_url)
    if (webhook_token is None) == (webhook_token_file is None):
        raise ConfigError("give exactly one of webhook_token and webhook_token_file")
    if webhook_token is not None:
        _check_token("webhook_token", webhook_token)

    values: dict[str, str] = {"webhook_url": webhook_url}
    for name in (
        "group_wait",
        "group_interval",
        "repeat_interval",
        "critical_repeat_interval",
        "info_group_interval",
        "info_repeat_interval",
        "resolve_timeout",
    ):
        value = getattr(settings, name)
        duration_seconds(value)  # validates
        values[name] = value
    # json.dumps yields a double-quoted scalar that YAML reads back verbatim.
    text = string.Template(template.read_text(encoding="utf-8")).substitute(
        {key: json.dumps(value) for key, value in values.items()}
    )
    document = yaml.safe_load(text)

    authorization = document["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
    if webhook_token is not None:
        authorization["credentials"] = webhook_token
    else:
        authorization["credentials_file"] = str(webhook_token_file)

    tenant_routes: list[dict[str, Any]] = []
    for tenant, receiver in sorted(settings.tenants.items()):
        if not _TENANT_RE.match(tenant):
            raise ConfigError(f"invalid tenant name {tenant!r}: letters, digits and ._:@- only")
        _check_url(f"tenant {tenant} url", receiver.url)
        name = f"tenant-{tenant}"
        webhook: dict[str, Any] = {"url": receiver.url, "send_resolved": True}
        if receiver.bearer_token is not None:
            _check_token(f"tenant {tenant} bearer_token", receiver.bearer_token)
            webhook["http_config"] = {
                "authorization": {"type": "Bearer", "credentials": receiver.bearer_token}
            }
        document["receivers"].append({"name": name, "webhook_configs": [webhook]})
        tenant_routes.append({"receiver": name, "matchers": [f'tenant="{tenant}"'], "continue": True})
    document["route"]["routes"][:0] = tenant_routes
    return RENDERED_HEADER + _dump_yaml(document)


def write_alertmanager_config(path: Path, config_text: str) -> Path:
    """Write a rendered configuration readable by its owner only (it may hold a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(config_text, encoding="utf-8")
    return path


def _check_url(what: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise ConfigError(f"invalid {what} {url!r}: expected an http:// or https:// URL")


def _check_token(what: str, token: str) -> None:
    if not token or any(c.isspace() or ord(c) < 32 for c in token):
        raise ConfigError(f"invalid {what}: it must be non-empty and have no whitespace")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return document


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, so rendered rule files stay readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def _dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=1000)
