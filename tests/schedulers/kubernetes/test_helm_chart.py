"""The Helm chart: `helm lint` and `helm template` over its values files, every rendered object
validated by `kubernetes-validate --strict` (Kubernetes 1.29 and the newest bundled schemas), the
PrometheusRule's groups by `promtool check rules`, and what matters asserted: privileges, mounts,
no GPU request, the rules equal to alerts/rules, the dashboards equal to dashboards/json.

Helm comes from `make` (.venv/bin/helm, see deploy/helm/tools/fetch_helm.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, require_binary

CHART = REPO_ROOT / "deploy" / "helm" / "jobsight"
VALUES = {
    "defaults": None,
    "cpu-only": CHART / "ci" / "cpu-only-values.yaml",
    "elasticsearch": CHART / "ci" / "elasticsearch-values.yaml",
    "tls": CHART / "ci" / "tls-values.yaml",
}
CRD_KINDS = {"PodMonitor", "PrometheusRule", "AlertmanagerConfig"}


def helm() -> str:
    local = Path(sys.executable).parent / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if found is None:
        raise AssertionError("helm is not installed; `make setup` puts it in .venv/bin (deploy/helm/tools)")
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


@cache
def render_text(name: str) -> str:
    values = VALUES[name]
    result = run_helm("template", "jobsight", str(CHART), "--namespace", "monitoring",
                      *(["-f", str(values)] if values else []))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(name)) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"]
    found: dict[str, Any] = next(
        c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name
    )
    return found


@pytest.mark.parametrize("name", sorted(VALUES))
def test_helm_lint(name: str) -> None:
    values = VALUES[name]
    result = run_helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr


@cache
def _newest_bundled() -> str:
    from kubernetes_validate.utils import all_versions  # type: ignore[import-untyped]

    versions: list[str] = all_versions()
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_object_validates_strictly(name: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(name))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    for version in ("1.29.0", _newest_bundled()):
        result = subprocess.run([str(validate), "--strict", "--quiet", "-k", version, str(rendered)],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        # Only the Prometheus Operator's kinds lack a bundled schema (checked below, otherwise).
        for line in output.splitlines():
            if "Couldn't find schema" in line:
                assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
    kinds = {o["kind"] for o in render(name)}
    assert {"DaemonSet", "Deployment", "Service", "ClusterRole", "PrometheusRule", "PodMonitor"} <= kinds


def test_agent_privileges_mounts_and_no_gpu_request() -> None:
    objects = render("defaults")
    agent = one(objects, "DaemonSet", "jobsight-agent")
    spec = agent["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    c = container(agent, "agent")
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    security = c["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/host/proc", "/host/sys", "/var/lib/kubelet/pod-resources"):
        assert mounts[path]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["pod-resources"]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    port = c["ports"][0]["containerPort"]
    assert port != 9400 and f"--web.listen-address=:{port}" in c["args"]  # beside dcgm-exporter
    assert "--kubelet.pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock" in c["args"]
    assert mounts["/run/jobsight/pods"].get("readOnly") is not True  # it writes <pod UID> → job files
    rules = one(objects, "ClusterRole", "jobsight-agent")["rules"]
    # get and list (pods bound to the node), metadata only: no watch, no writes
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]


def test_cpu_only_nodes_get_an_agent_without_gpu() -> None:
    objects = render("cpu-only")
    cpu = one(objects, "DaemonSet", "jobsight-agent-cpu")
    spec = cpu["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec
    assert "--no-collector.gpu" in container(cpu, "agent")["args"]
    assert not any(a.startswith("--kubelet.") for a in container(cpu, "agent")["args"])
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms[0]["matchExpressions"][0] == {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}
    gpu = one(objects, "DaemonSet", "jobsight-agent")
    assert gpu["spec"]["selector"] != cpu["spec"]["selector"]  # two DaemonSets never fight over pods


def test_collector_with_elasticsearch_credentials_and_state_on_the_host() -> None:
    objects = render("elasticsearch")
    collector = one(objects, "DaemonSet", "jobsight-collector")
    spec = collector["spec"]["template"]["spec"]
    config = yaml.safe_load(one(objects, "ConfigMap", "jobsight-collector")["data"]["collector.yaml"])
    assert config["elasticsearch"]["hosts"] == ["https://jobsight-es-http.elastic-system.svc:9200"]
    assert config["elasticsearch"]["ca_certs"] == "/etc/jobsight/es-ca/ca.crt"
    assert "password" not in json.dumps(config)  # credentials only from the Secret, at start
    assert {s["type"] for s in config["sources"]} == {"cri", "kmsg"}
    init = container(collector, "config")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"]}
    assert refs["ES_PASSWORD"] == {"name": "jobsight-es-credentials", "key": "password", "optional": True}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["hostPath"] == {
        "path": "/var/lib/jobsight/collector",
        "type": "DirectoryOrCreate",
    }
    assert volumes["kmsg"]["hostPath"] == {"path": "/dev/kmsg", "type": "CharDevice"}
    assert volumes["es-ca"]["secret"]["secretName"] == "jobsight-es-http-certs-public"
    mounts = {m["mountPath"]: m for m in container(collector, "collector")["volumeMounts"]}
    assert (
        mounts["/var/log/pods"]["readOnly"] is True
        and "readOnly" not in mounts["/var/lib/jobsight/collector"]
    )
    api = container(one(objects, "Deployment", "jobsight-api"), "api")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in api["env"]}
    assert env == {
        "JOBSIGHT_API_STORE_URL": "jobsight-postgres", "JOBSIGHT_API_TOKENS": "jobsight-api-tokens",
        "JOBSIGHT_API_WEBHOOK_TOKEN": "jobsight-webhook-token", "JOBSIGHT_API_LOG_STORE": "jobsight-es-url",
    }  # fmt: skip
    watcher = container(one(objects, "Deployment", "jobsight-watcher"), "watcher")
    assert "--kinds=pytorchjobs.kubeflow.org" in watcher["args"] and "--cluster=gpu-prod-1" in watcher["args"]
    tenants = yaml.safe_load(one(objects, "ConfigMap", "jobsight-watcher")["data"]["tenants.yaml"])
    assert tenants == {"team-a": "research", "team-b": "research"}


def test_collector_without_kmsg_is_unprivileged() -> None:
    result = run_helm("template", "jobsight", str(CHART), "--set", "collector.kmsg.enabled=false")
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    security = container(one(objects, "DaemonSet", "jobsight-collector"), "collector")["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]}


def test_tls_web_config_and_scraping_over_tls() -> None:
    objects = render("tls")
    for name in ("jobsight-agent", "jobsight-collector"):
        ds = one(objects, "DaemonSet", name)
        c = container(ds, name.removeprefix("jobsight-"))
        assert "--web.config.file=/etc/jobsight/web/web-config.yml" in c["args"]
        assert "tcpSocket" in c["readinessProbe"]  # /healthz needs the credentials now
        monitor = one(objects, "PodMonitor", name)
        endpoint = monitor["spec"]["podMetricsEndpoints"][0]
        assert endpoint["scheme"] == "https" and endpoint["basicAuth"]["password"]["key"] == "password"


def test_node_and_rdma_series_get_the_node_name_as_hostname() -> None:
    # The rules join RDMA and node series on Hostname, which only the GPU series carry themselves.
    monitor = one(render("defaults"), "PodMonitor", "jobsight-agent")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["honorLabels"] is True  # the GPU series' own Hostname wins
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "Hostname"}]


def test_watcher_runs_unprivileged_with_read_only_rbac() -> None:
    objects = render("defaults")
    watcher = one(objects, "Deployment", "jobsight-watcher")
    assert watcher["spec"]["replicas"] == 1 and watcher["spec"]["strategy"]["type"] == "Recreate"
    c = container(watcher, "watcher")
    assert c["args"][:2] == ["kube", "watch"]
    assert "--api.url=http://jobsight-api.monitoring.svc:8000" in c["args"]
    verbs = {v for rule in one(objects, "ClusterRole", "jobsight-watcher")["rules"] for v in rule["verbs"]}
    assert verbs == {"list", "watch"}
    assert watcher["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def _rule_files() -> list[Path]:
    return sorted((REPO_ROOT / "alerts" / "rules").glob("*.yaml"))


def test_prometheus_rule_is_alerts_rules(tmp_path: Path) -> None:
    rule = one(render("defaults"), "PrometheusRule", "jobsight")
    expected = [group for path in _rule_files() for group in yaml.safe_load(path.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    extracted = tmp_path / "rules.yaml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_are_dashboards_json() -> None:
    objects = render("defaults")
    boards = sorted((REPO_ROOT / "dashboards" / "json").glob("*.json"))
    assert boards
    for path in boards:
        name = f"jobsight-dashboard-{path.stem.removeprefix('jobsight-')}"
        cm = one(objects, "ConfigMap", name)
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"][path.name] == path.read_text()


def test_alertmanager_config_routes_to_the_api_webhook() -> None:
    amc = one(render("elasticsearch"), "AlertmanagerConfig", "jobsight")
    hook = amc["spec"]["receivers"][0]["webhookConfigs"][0]
    assert hook["url"] == "http://jobsight-api.monitoring.svc:8000/v1/alerts/webhook"
    assert hook["httpConfig"]["authorization"]["credentials"] == {
        "name": "jobsight-webhook-token",
        "key": "token",
    }
    assert amc["spec"]["route"]["receiver"] == "jobsight-api"


def test_values_schema_refuses_wrong_values() -> None:
    for setting in (
        "agent.port=abc",
        "agent.capabilities[0]=SYS_ADMIN",
        "nosuchkey=1",
        "watcher.kinds[0]=Pods",
    ):
        result = run_helm("template", "jobsight", str(CHART), "--set", setting)
        assert result.returncode != 0 and "schema" in result.stderr, setting


def test_the_packaged_chart_carries_the_rules_and_dashboards(tmp_path: Path) -> None:
    """`helm package` resolves files/alerts and files/dashboards (links into the repository) into
    the archive: a chart installed from it has the same rules."""
    packaged = run_helm("package", str(CHART), "-d", str(tmp_path))
    assert packaged.returncode == 0, packaged.stderr
    archive = next(tmp_path.glob("jobsight-*.tgz"))
    result = run_helm("template", "jobsight", str(archive), "--namespace", "monitoring")
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    expected = [group for path in _rule_files() for group in yaml.safe_load(path.read_text())["groups"]]
    assert one(objects, "PrometheusRule", "jobsight")["spec"]["groups"] == expected
    boards = sorted((REPO_ROOT / "dashboards" / "json").glob("*.json"))
    assert len([o for o in objects if o["metadata"]["name"].startswith("jobsight-dashboard-")]) == len(boards)


def test_rendered_collector_config_is_one_the_collector_accepts(tmp_path: Path) -> None:
    """The collector's own loader reads the chart's config, and its path pattern gives a pod's log
    lines the job the agent wrote for the pod (not the pod UID)."""
    from collectors.logs.config import load_config
    from jobsight.identity import JobAliasDir, PathJobMatcher

    for name in ("defaults", "elasticsearch"):
        data = one(render(name), "ConfigMap", "jobsight-collector")["data"]["collector.yaml"]
        path = tmp_path / f"{name}.yaml"
        path.write_text(data)
        config = load_config(path)
        pods = next(s for s in config.sources if s.type == "cri")
        assert pods.job_alias_dir == "/run/jobsight/pods"
    aliases = tmp_path / "pods"
    aliases.mkdir()
    uid = "6f1c2e4a-1111-4222-8333-444455556666"
    (aliases / uid).write_text("team-a:llama\n")
    matcher = PathJobMatcher(pods.path_patterns(), JobAliasDir(aliases))
    ref = matcher.job_of(f"/var/log/pods/team-a_llama-worker-0_{uid}/pytorch/0.log")
    assert ref is not None and ref.job_id == "team-a:llama"
    assert matcher.job_of(f"/var/log/pods/kube-system_kube-proxy-x_{uid[:-1]}7/kube-proxy/0.log") is None
