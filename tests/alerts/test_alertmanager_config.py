"""The rendered Alertmanager configuration: amtool accepts it, bad input is refused with a precise
message, and the knobs land where Alertmanager reads them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.config import (
    AlertmanagerSettings,
    TenantReceiver,
    render_alertmanager_config,
    write_alertmanager_config,
)
from jobsight.errors import ConfigError
from tests.support import require_binary

URL = "http://127.0.0.1:8000/v1/alerts/webhook"


def _amtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("amtool"), "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_default_config_passes_amtool(tmp_path: Path) -> None:
    path = write_alertmanager_config(
        tmp_path / "alertmanager.yml", render_alertmanager_config(URL, "tok-123")
    )
    result = _amtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert path.stat().st_mode & 0o777 == 0o600


def test_config_with_tenants_and_token_file_passes_amtool(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-456")
    settings = AlertmanagerSettings(
        group_wait="2s",
        tenants={
            "acme": TenantReceiver("https://hooks.acme.example/alerts", "acme-token"),
            "lab-1": TenantReceiver("http://10.0.0.5:9000/"),
        },
    )
    text = render_alertmanager_config(URL, webhook_token_file=token_file, settings=settings)
    path = write_alertmanager_config(tmp_path / "am.yml", text)
    result = _amtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr

    document = yaml.safe_load(text)
    route = document["route"]
    assert route["group_by"] == ["alertname", "Hostname", "job_id"]
    assert route["group_wait"] == "2s"
    tenant_routes = [r for r in route["routes"] if r["receiver"].startswith("tenant-")]
    assert tenant_routes == [
        {"receiver": "tenant-acme", "matchers": ['tenant="acme"'], "continue": True},
        {"receiver": "tenant-lab-1", "matchers": ['tenant="lab-1"'], "continue": True},
    ]
    # Tenant routes come first, so that the severity routes (which stop) cannot hide them.
    assert [r["receiver"] for r in route["routes"][:2]] == ["tenant-acme", "tenant-lab-1"]
    severities = [r["matchers"] for r in route["routes"][2:]]
    assert severities == [['severity="critical"'], ['severity="warning"'], ['severity="info"']]
    api = document["receivers"][0]["webhook_configs"][0]
    assert api["url"] == URL
    assert api["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}
    lab = next(r for r in document["receivers"] if r["name"] == "tenant-lab-1")["webhook_configs"][0]
    assert "http_config" not in lab


def test_inhibition_rules_cover_node_down_and_severity_ladder() -> None:
    document = yaml.safe_load(render_alertmanager_config(URL, "tok"))
    node_down, physical, flapping, critical, warning = document["inhibit_rules"]
    assert node_down["source_matchers"] == ['alertname="NodeDown"']
    assert physical["source_matchers"] == ['alertname="RDMAPhysicalLinkDown"']
    assert physical["target_matchers"] == ['alertname="RDMAPortNotActive"']
    assert physical["equal"] == flapping["equal"] == ["Hostname", "device", "port"]
    assert flapping["target_matchers"] == ['alertname="RDMALinkDowned"']
    assert node_down["equal"] == ["Hostname"]
    assert critical["source_matchers"] == ['severity="critical"']
    assert "alertname" in critical["equal"] and "Hostname" in critical["equal"]
    assert warning["target_matchers"] == ['severity="info"']


def test_values_with_yaml_syntax_stay_plain_strings(tmp_path: Path) -> None:
    # A token full of YAML syntax must come back verbatim, not change the document's structure.
    token = "a:b#c'd\"e{f}[g]&h*i!j|k>l%m@n`o"
    url = "http://127.0.0.1:8000/v1/alerts/webhook?x=1&y=#frag"
    text = render_alertmanager_config(url, token)
    document = yaml.safe_load(text)
    config = document["receivers"][0]["webhook_configs"][0]
    assert config["http_config"]["authorization"]["credentials"] == token
    assert config["url"] == url
    result = _amtool_check(write_alertmanager_config(tmp_path / "am.yml", text))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"webhook_url": "ftp://x/y", "webhook_token": "t"}, "invalid webhook_url"),
        ({"webhook_url": "http://", "webhook_token": "t"}, "invalid webhook_url"),
        ({"webhook_url": URL, "webhook_token": "has space"}, "invalid webhook_token"),
        ({"webhook_url": URL, "webhook_token": ""}, "invalid webhook_token"),
        ({"webhook_url": URL}, "exactly one of webhook_token and webhook_token_file"),
        (
            {"webhook_url": URL, "webhook_token": "t", "settings": AlertmanagerSettings(group_wait="soon")},
            "invalid duration 'soon'",
        ),
        (
            {
                "webhook_url": URL,
                "webhook_token": "t",
                "settings": AlertmanagerSettings(tenants={'a"b': TenantReceiver("http://x/")}),
            },
            "invalid tenant name",
        ),
        (
            {
                "webhook_url": URL,
                "webhook_token": "t",
                "settings": AlertmanagerSettings(tenants={"acme": TenantReceiver("not a url")}),
            },
            "invalid tenant acme url",
        ),
    ],
)
def test_bad_input_is_refused_with_a_precise_message(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        render_alertmanager_config(**kwargs)  # type: ignore[arg-type]
