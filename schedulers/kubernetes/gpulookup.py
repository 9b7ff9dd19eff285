"""A job's GPUs from Prometheus, for the watcher's job records.

The API server knows how many GPUs a pod asked for, not which: the kubelet hands them out. The
agents publish which GPU each job holds (``jobsight_gpu_job_info{Hostname, gpu, UUID, job_id}``,
from the kubelet's pod-resources API), so the watcher asks Prometheus and puts the GPUs (host, index,
UUID) into the record the API uses to select the job's series.
"""

from __future__ import annotations

from typing import Any

import httpx

from jobsight.errors import DependencyUnavailable

_MAX_GPUS = 65536


def _quote(value: str) -> str:
    # Job ids are in a safe character set already (JOB_ID_PATTERN); escape anyway, at the edge.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class PrometheusGpus:
    def __init__(self, url: str, timeout: float = 10.0, lookback: str = "10m",
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.lookback = lookback
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def gpus(self, job_id: str) -> list[dict[str, Any]]:
        """The job's GPUs seen in the last ``lookback``, sorted by host and index. Raises
        :class:`DependencyUnavailable` when Prometheus does not answer as documented."""
        query = ("max by (Hostname, gpu, UUID) "
                 f"(last_over_time(jobsight_gpu_job_info{{job_id={_quote(job_id)}}}[{self.lookback}]))")
        try:
            response = self._client.get(f"{self.url}/api/v1/query", params={"query": query})
            response.raise_for_status()
            result = response.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise DependencyUnavailable("prometheus", f"GPUs of {job_id}: {exc}") from exc
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for sample in result[:_MAX_GPUS] if isinstance(result, list) else []:
            labels = sample.get("metric") or {} if isinstance(sample, dict) else {}
            host = labels.get("Hostname")
            try:
                index = int(labels.get("gpu", ""))
            except ValueError:
                continue
            if not host:
                continue
            entry: dict[str, Any] = {"host": host, "gpu": index}
            if labels.get("UUID"):
                entry["uuid"] = labels["UUID"]
            found[(host, index)] = entry
        return [found[key] for key in sorted(found)]

    def close(self) -> None:
        self._client.close()
