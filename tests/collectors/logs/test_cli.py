"""The commands as processes: `jobsight collector logs` (config, /metrics, SIGTERM) and
`jobsight logs export`."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collectors.logs.config import CollectorConfig, load_config
from jobsight.errors import ConfigError
from tests.support import Proc, free_port, jobsight_command, promtool_check_metrics, wait_for_http, wait_until

MINIMAL = """\
sources:
  - type: file
    paths: ["/data/jobs/*/*.log"]
    job_id_pattern: "/data/jobs/(?P<job_id>[^/]+)/"
store: {path: /var/lib/jobsight/logs}
"""


def test_minimal_config_from_the_issue_is_valid_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(MINIMAL)
    config = load_config(path)
    assert isinstance(config, CollectorConfig)
    assert config.store.path == Path("/var/lib/jobsight/logs") and config.listen == "127.0.0.1:9404"
    assert config.sources[0].path_patterns() == ["/data/jobs/(?P<job_id>[^/]+)/"]


@pytest.mark.parametrize(("change", "field"), [
    ({"sources": [{"type": "file"}]}, "sources.0.file.paths"),
    ({"sources": [{"type": "syslog", "paths": ["/x"]}]}, "sources.0"),
    ({"sources": [{"type": "file", "paths": ["relative/*.log"]}]}, "sources.0.file.paths"),
    ({"sources": [{"type": "file", "paths": ["/x"], "job_id_pattern": "(unclosed"}]},
     "sources.0.file.job_id_pattern"),
    ({"sources": [{"type": "file", "paths": ["/x"], "max_line_bytes": 10}]}, "sources.0.file.max_line_bytes"),
    ({"store": {}}, "store.path"),
    ({"elasticsearch": {"hosts": ["http://es:9200"], "namespace": "my-ns"}}, "elasticsearch.namespace"),
    ({"sources": [{"type": "file", "paths": ["/x"], "job_id": "bad id!"}]}, "sources.0.file.job_id"),
    ({"unknown_key": 1}, "unknown_key"),
])
def test_config_errors_name_the_field(tmp_path: Path, change: dict[str, object], field: str) -> None:
    data = yaml.safe_load(MINIMAL)
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: {field}" in str(info.value)


def test_bad_config_exits_2_with_a_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sources: []\nstore: {path: /tmp/x}\n")
    result = subprocess.run(jobsight_command("collector", "logs", "--config", str(path)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sources" in result.stderr and "bad.yaml" in result.stderr


def test_collector_process_metrics_sigterm_and_export(tmp_path: Path,
                                                      spawn: Callable[..., Proc]) -> None:
    jobs = tmp_path / "data" / "jobs"
    (jobs / "4711").mkdir(parents=True)
    log = jobs / "4711" / "train.log"
    log.write_text(
        "2026-11-29T05:00:00Z INFO step 1 loss 0.5\n"
        "NVRM: Xid (PCI:0000:cb:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008\n"
        "[rank3]: Traceback (most recent call last):\n"
        '[rank3]:   File "train.py", line 3, in <module>\n'
        "[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 3 has\n"
        "[rank3]: INFO step 2\n"  # ends rank 3's traceback (blocks are kept per rank) ...
        "INFO step 3\n"  # ... and this one ends the Xid line's; both are held as open blocks
    )
    port = free_port()
    config = tmp_path / "collector.yaml"
    text = MINIMAL.replace("/data/jobs", str(jobs)).replace("/var/lib/jobsight/logs", str(tmp_path / "store"))
    # A long flush timeout holds the last line deterministically: SIGTERM must not emit it.
    text = text.replace("store:", "    multiline: {flush_timeout: 600}\nstore:")
    config.write_text(text + f"listen: 127.0.0.1:{port}\npoll_interval: 0.05\nglob_interval: 0.2\n")
    proc = spawn(jobsight_command("collector", "logs", "--config", str(config)), name="collector")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)

    def stored() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "jobsight_log_records_stored_total" and sample.labels == {"source": "file"}:
                    return sample.value if sample.value >= 3 else None
        return None

    wait_until(stored, timeout=30, message="3 records stored")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    promtool_check_metrics(text)
    # An XID in a job's own log file is not believed (a user can write it): no hardware event, counted.
    assert 'kind="gpu_xid"' not in text.split("jobsight_log_refused_events_total")[0]
    assert 'jobsight_log_refused_events_total{kind="gpu_xid",source_type="file"} 1.0' in text
    assert "jobsight_log_stalled 0.0" in text and "jobsight_log_loop_last_progress_timestamp_seconds" in text
    assert 'jobsight_log_events_total{job_id="4711",kind="cuda_oom"} 1.0' in text
    assert 'jobsight_log_job_last_record_timestamp_seconds{job_id="4711"}' in text
    assert "jobsight_log_backlog_bytes" in text and "jobsight_log_delivery_lag_seconds" in text
    assert 'jobsight_scrape_collector_success{collector="logs"} 1.0' in text
    assert 'jobsight_scrape_collector_success{collector="logs_loop"} 1.0' in text
    proc.kill(signal.SIGTERM)
    assert proc.popen.wait(timeout=30) == 0, proc.output()

    result = subprocess.run(jobsight_command("logs", "export", "--store", str(tmp_path / "store"),
                                             "--job-id", "4711"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3  # the two last lines are open blocks: SIGTERM does not emit them
    by_message = {row["message"].split("\n")[0]: row for row in rows}
    xid = by_message["NVRM: Xid (PCI:0000:cb:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008"]
    assert "event_kind" not in xid  # stored, searchable, but no hardware event from a user's file
    assert xid["offset"] == len("2026-11-29T05:00:00Z INFO step 1 loss 0.5\n")
    oom = by_message["Traceback (most recent call last):"]
    assert oom["event_kind"] == "cuda_oom" and oom["rank"] == 3
    for row in rows:
        assert {"job_id", "host", "path", "offset", "message", "@timestamp"} <= set(row)
        assert row["job_id"] == "4711" and row["path"] == str(log)
    first = by_message["2026-11-29T05:00:00Z INFO step 1 loss 0.5"]
    assert first["@timestamp"] == "2026-11-29T05:00:00.000000Z" and "event_kind" not in first

    other = subprocess.run(jobsight_command("logs", "export", "--store", str(tmp_path / "store"),
                                            "--job-id", "9999"), capture_output=True, text=True, timeout=60)
    assert other.returncode == 0 and other.stdout == ""


def test_export_rejects_bad_input(tmp_path: Path) -> None:
    bad_id = subprocess.run(jobsight_command("logs", "export", "--store", str(tmp_path), "--job-id", 'x"}'),
                            capture_output=True, text=True, timeout=60)
    assert bad_id.returncode == 2 and "invalid job id" in bad_id.stderr
    missing = subprocess.run(jobsight_command("logs", "export", "--store", str(tmp_path / "nope")),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "log store" in missing.stderr
