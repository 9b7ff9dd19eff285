"""``--web.config.file`` (exporter-toolkit's format): loading, basic auth with bcrypt hashes as
htpasswd writes them, TLS with and without client certificates, and a real Prometheus scraping a
server that uses the config, over TLS with basic auth."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from jobsight.errors import ConfigError
from jobsight.webconfig import WebConfig, load_web_config
from tests.support import Proc, free_port, jobsight_command, require_binary, wait_for_http, wait_until

PASSWORD = "scrape-secret-1"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, by openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl = require_binary("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=jobsight test CA",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return d


def htpasswd_hash(password: str) -> str:
    """What `htpasswd -nBC 10` writes: bcrypt with the $2y$ prefix."""
    return "$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()[4:]


def write_config(d: Path, body: str) -> Path:
    path = d / f"web-{free_port()}.yml"
    path.write_text(body)
    return path


def test_basic_auth_with_htpasswd_hashes(tmp_path: Path) -> None:
    config = load_web_config(
        write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{htpasswd_hash(PASSWORD)}'\n")
    )
    assert not config.tls
    assert config.authorized(basic("prometheus", PASSWORD))
    assert config.authorized(basic("prometheus", PASSWORD))  # served from the cache the second time
    for header in (
        None,
        "",
        basic("prometheus", "wrong"),
        basic("nobody", PASSWORD),
        "Basic !!!",
        "Bearer x",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ):
        assert not config.authorized(header), header
    assert load_web_config(None).authorized(None)  # no file: no auth


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("nonsense: 1\n", "unknown keys"),
        ("basic_auth_users:\n  a: plaintext\n", "not a bcrypt hash"),
        (
            "tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n"
            "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "cipher_suites is not supported",
        ),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cannot load"),
        ("tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\n  min_version: SSL3\n", "min_version"),
        ("http_server_config:\n  http2: true\n", "http2"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_web_config(write_config(tmp_path, body))


class _Handler(BaseHTTPRequestHandler):
    config: WebConfig

    def do_GET(self) -> None:
        if not self.config.authorized(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="jobsight"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"# TYPE jobsight_test_up gauge\njobsight_test_up 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        for name, value in self.config.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(config: WebConfig) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"config": config})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = config.ssl_context()
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_tls_with_client_certificates(pki: Path) -> None:
    config = load_web_config(
        write_config(
            pki,
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
                "  min_version: TLS12\n"
            ),
        )
    )
    for url in serve(config):
        client = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        client.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        ok = httpx.get(f"{url}/metrics", verify=client)
        assert ok.status_code == 200 and "jobsight_test_up 1" in ok.text
        with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake is refused
            httpx.get(f"{url}/metrics", verify=ssl.create_default_context(cafile=str(pki / "ca.crt")))


@pytest.fixture
def tls_basic_server(pki: Path) -> Iterator[str]:
    config = load_web_config(
        write_config(
            pki,
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                f"basic_auth_users:\n  prometheus: '{htpasswd_hash(PASSWORD)}'\n"
                "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
            ),
        )
    )
    yield from serve(config)


def test_a_real_prometheus_scrapes_over_tls_with_basic_auth(
    pki: Path, tmp_path: Path, tls_basic_server: str
) -> None:
    target = urllib.parse.urlsplit(tls_basic_server).netloc
    jobs = []
    for job, password in (("good", PASSWORD), ("badpass", "wrong")):
        jobs.append(
            {
                "job_name": job,
                "scheme": "https",
                "scrape_interval": "1s",
                "static_configs": [{"targets": [target]}],
                "tls_config": {"ca_file": str(pki / "ca.crt"), "server_name": "localhost"},
                "basic_auth": {"username": "prometheus", "password": password},
            }
        )
    jobs.append(
        {
            "job_name": "plain",
            "scheme": "http",
            "scrape_interval": "1s",
            "static_configs": [{"targets": [target]}],
        }
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port()
    proc = Proc(
        [
            require_binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/-/ready", timeout=120, proc=proc)

        def targets() -> dict[str, dict[str, Any]] | None:
            active = httpx.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            found = {t["labels"]["job"]: t for t in active if t["health"] != "unknown"}
            return found if len(found) == 3 else None

        found = wait_until(targets, timeout=60, interval=0.5, message="three scraped targets")
        assert found["good"]["health"] == "up", found["good"]
        assert found["badpass"]["health"] == "down" and "401" in found["badpass"]["lastError"]
        assert found["plain"]["health"] == "down"  # plain HTTP to a TLS port
        value = wait_until(
            lambda: httpx.get(
                f"{base}/api/v1/query", params={"query": 'jobsight_test_up{job="good"}'}, timeout=5
            ).json()["data"]["result"],
            timeout=30,
            message="a sample",
        )
        assert value[0]["value"][1] == "1"
    finally:
        proc.stop()


def test_certificates_are_reloaded_when_renewed(pki: Path, tmp_path: Path) -> None:
    clock = [0.0]
    for name in ("server.crt", "server.key", "ca.crt"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    config = load_web_config(
        write_config(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"),
        clock=lambda: clock[0],
        reload_seconds=10,
    )
    context = config.ssl_context()
    assert context is not None
    (tmp_path / "server.crt").write_text("not a certificate")  # half-written renewal
    clock[0] = 11
    assert config.ssl_context() is context  # the old certificate stays in use
    for url in serve(config):
        assert (
            httpx.get(
                f"{url}/metrics", verify=ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ).status_code
            == 200
        )


def test_a_real_prometheus_scrapes_the_agent_over_tls_with_basic_auth(pki: Path, tmp_path: Path) -> None:
    """`jobsight agent --web.config.file`: Prometheus with the CA and the password scrapes it; one
    with a wrong password gets 401; plain HTTP gets nothing."""
    web = write_config(pki, (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: '{htpasswd_hash(PASSWORD)}'\n"
    ))  # fmt: skip
    agent_port = free_port()
    agent = Proc(
        jobsight_command("agent", "--simulate", "2", "--hostname", "gpu-node1", "--no-collector.rdma",
                         "--no-collector.node", "--no-collector.otlp",
                         "--web.listen-address", f"127.0.0.1:{agent_port}", "--web.config.file", str(web)),
        tmp_path / "agent.log",
    )  # fmt: skip
    target = f"127.0.0.1:{agent_port}"
    tls = {"ca_file": str(pki / "ca.crt"), "server_name": "localhost"}
    jobs: list[dict[str, Any]] = [
        {
            "job_name": name,
            "scheme": "https",
            "scrape_interval": "1s",
            "static_configs": [{"targets": [target]}],
            "tls_config": tls,
            "basic_auth": {"username": "prometheus", "password": password},
        }
        for name, password in (("good", PASSWORD), ("badpass", "wrong"))
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"scrape_configs": jobs}))
    port = free_port()
    args = [
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    prometheus = Proc([require_binary("prometheus"), *args], tmp_path / "prometheus.log")
    try:
        ca = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        wait_until(lambda: agent.alive() and httpx.get(f"https://{target}/healthz", verify=ca,
                                                        auth=("prometheus", PASSWORD)).status_code == 200,
                   timeout=60, message=f"the agent over TLS\n{agent.log_path.read_text()}")  # fmt: skip
        assert httpx.get(f"https://{target}/metrics", verify=ca).status_code == 401
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{target}/metrics")
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/-/ready", timeout=120, proc=prometheus)

        def query(q: str) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = httpx.get(
                f"{base}/api/v1/query", params={"query": q}, timeout=5
            ).json()["data"]["result"]
            return result

        def scraped() -> list[dict[str, Any]] | None:
            if not (query('up{job="good"} == 1') and query('up{job="badpass"} == 0')):
                return None
            return query('DCGM_FI_DEV_GPU_UTIL{job="good"}')

        found = wait_until(scraped, timeout=60, message="the scrape over TLS")
        assert {s["metric"]["Hostname"] for s in found} == {"gpu-node1"} and len(found) == 2
    finally:
        prometheus.stop()
        agent.stop()
