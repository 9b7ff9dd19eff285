"""The Prometheus collector: turns the sampler's latest readings into fresh metric families on
every scrape. It never calls the backend, so a scrape costs the same whatever NVML is doing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporters.gpu.attribution import GpuJobs
from exporters.gpu.fields import FIELDS
from exporters.gpu.model import BackendInfo, GpuIdentity, MigInstance
from exporters.gpu.sampler import GpuView, Sampler
from exporters.gpu.waiting import backend_up
from exporters.gpu.xid import XidLedger
from jobsight.serving import Collector

# dcgm-exporter's host label: "Hostname" up to 4.5.3-4.8.2, "hostname" from 4.6.0-4.8.3 on.
DEFAULT_HOST_LABEL = "Hostname"
HOST_LABELS = ("Hostname", "hostname")
# dcgm-exporter's default counters make the driver version a label of every DCGM series
# (DCGM_FI_DRIVER_VERSION, type "label" in default-counters.csv).
DRIVER_VERSION_LABEL = "DCGM_FI_DRIVER_VERSION"
HPC_JOB_LABEL = "hpc_job"
# Device (GPU or MIG) UUID → (the job id of the pod holding it, the pod's namespace/pod/container).
PodLabelsSource = Callable[[], Mapping[str, tuple[str, Mapping[str, str]]]]
_PROM_TYPES = {"gauge": "gauge", "dcgm_counter": "unknown", "counter": "counter"}


def _mig_labels(instance: MigInstance) -> dict[str, str]:
    """dcgm-exporter's labels of a MIG instance's series (next to the physical GPU's labels)."""
    return {"GPU_I_PROFILE": instance.profile, "GPU_I_ID": str(instance.gi_id)}


def gpu_labels(host_label: str = DEFAULT_HOST_LABEL) -> list[str]:
    return ["gpu", "UUID", "pci_bus_id", "device", "modelName", host_label]


GPU_LABELS = gpu_labels()


class GpuCollector:
    """``host_label`` names the host label (``Hostname`` or ``hostname``, dcgm-exporter's spelling
    before and after 4.8.3). ``hpc_job`` copies every DCGM series once per job holding the GPU
    with an ``hpc_job`` label, as dcgm-exporter's ``--hpc-job-mapping-dir`` does: off by default,
    because it multiplies series by jobs; ``jobsight_gpu_job_info`` is the join that does not."""

    def __init__(
        self,
        sampler: Sampler,
        ledger: XidLedger,
        info: BackendInfo | Callable[[], BackendInfo],
        hostname: str,
        extra: Sequence[Collector] = (),
        host_label: str = DEFAULT_HOST_LABEL,
        hpc_job: bool = False,
        pod_labels: PodLabelsSource | None = None,
    ) -> None:
        if host_label not in HOST_LABELS:
            raise ValueError(f"host label must be one of {', '.join(HOST_LABELS)}, not {host_label!r}")
        self.sampler = sampler
        self.ledger = ledger
        # A callable is asked on every scrape: the NVML backend reads the driver version again
        # when it initialises NVML again (a driver reload), and the labels must follow.
        self._info_source: Callable[[], BackendInfo] = info if callable(info) else (lambda: info)
        self.info = self._info_source()
        self.hostname = hostname
        self.extra = tuple(extra)
        self.host_label = host_label
        self.hpc_job = hpc_job
        # Kubernetes: dcgm-exporter's namespace/pod/container of the pod holding a GPU (or MIG
        # device), by UUID, on jobsight_gpu_job_info only (not on every series), and only on the
        # series of the pod's own job: a GPU's jobs come from the sampler's last attribution, the
        # labels from the latest kubelet read, and between two samples they can disagree.
        self.pod_labels = pod_labels
        self.gpu_labels = gpu_labels(host_label)
        self.dcgm_labels = [*self.gpu_labels, DRIVER_VERSION_LABEL]
        self.job_labels = [host_label, "gpu", "UUID", "job_id"]
        self.self_labels = [host_label, "gpu"]

    def _labels(self, ident: GpuIdentity) -> list[str]:
        return [str(ident.index), ident.uuid, ident.pci_bus_id, ident.device, ident.model_name, self.hostname]

    def _dcgm_label_sets(self, view: GpuView, instance: MigInstance | None = None) -> list[dict[str, str]]:
        """The label sets of one GPU's (or MIG instance's) DCGM series: one, or one per job with
        ``hpc_job``."""
        base = dict(zip(self.dcgm_labels, [*self._labels(view.identity), self.info.driver_version],
                        strict=True))
        jobs = view.jobs.jobs
        if instance is not None:
            base.update(_mig_labels(instance))
            jobs = view.jobs.instances.get(instance.gi_id, GpuJobs()).jobs
        if not self.hpc_job or not jobs:
            return [base]
        return [{**base, HPC_JOB_LABEL: job_id} for job_id in jobs]

    def _rows(self, views: Sequence[GpuView]) -> list[tuple[list[dict[str, str]], dict[str, str],
                                                            Mapping[str, float]]]:
        """(DCGM label sets, jobsight label set, values) for every GPU that is up and every MIG
        instance of it."""
        rows: list[tuple[list[dict[str, str]], dict[str, str], Mapping[str, float]]] = []
        for view in views:
            if view.reading is None:
                continue
            own = dict(zip(self.gpu_labels, self._labels(view.identity), strict=True))
            rows.append((self._dcgm_label_sets(view), own, view.reading.values))
            for inst in view.reading.instances:
                mig = _mig_labels(inst.instance)
                rows.append((self._dcgm_label_sets(view, inst.instance), {**own, **mig}, inst.values))
        return rows

    def collect(self) -> Iterator[Metric]:
        self.info = self._info_source()
        views = self.sampler.views()
        yield from self._values(views)
        yield from self._xids(views)
        yield from self._state(views)
        yield from self._jobs(views)
        yield from self._self_metrics(views)
        for collector in self.extra:
            yield from collector.collect()

    def _values(self, views: Sequence[GpuView]) -> Iterable[Metric]:
        # Label dicts per GPU, shared by all its samples (the renderer only reads them): this
        # loop is most of the collector's cost on a scrape. DCGM series carry dcgm-exporter's
        # label set (with the driver version, and hpc_job when asked); jobsight_* series the GPU
        # labels only.
        read = self._rows(views)
        for spec in FIELDS:
            family = Metric(spec.name, spec.help, _PROM_TYPES[spec.kind])
            name = spec.name
            sample_name = f"{name}_total" if spec.kind == "counter" else name
            dcgm = name.startswith("DCGM_")
            for dcgm_sets, own, values in read:
                value = values.get(name)
                if value is None:
                    continue
                for labels in dcgm_sets if dcgm else (own,):
                    family.add_sample(sample_name, labels, float(value))
            if family.samples:
                yield family

    def _xids(self, views: Sequence[GpuView]) -> Iterable[Metric]:
        xids = self.ledger.view()
        last = Metric(
            "DCGM_FI_DEV_XID_ERRORS",
            "Value of the last XID error encountered (0: none since the exporter started).",
            "gauge",
        )
        total = CounterMetricFamily(
            "jobsight_gpu_xid_errors",
            "jobsight: critical XID events per GPU and XID code since the exporter started.",
            labels=[*self.gpu_labels, "xid"],
        )
        # A counter series is born at 1 with its first event, which increase() cannot see; the
        # last-seen time lets a rule catch that first XID too (time() - ts < window).
        seen = GaugeMetricFamily(
            "jobsight_gpu_xid_last_seen_timestamp_seconds",
            "jobsight: when the last critical XID event of this code was seen on the GPU (Unix time).",
            labels=[*self.gpu_labels, "xid"],
        )
        by_index = {view.identity.index: view.identity for view in views}
        for view in views:
            xid = float(xids.last.get(view.identity.index, 0))
            for labels in self._dcgm_label_sets(view):
                last.add_sample("DCGM_FI_DEV_XID_ERRORS", labels, xid)
        for (index, xid), count in sorted(xids.counts.items()):
            ident = by_index.get(index)
            if ident is not None:
                total.add_metric([*self._labels(ident), str(xid)], float(count))
                seen.add_metric([*self._labels(ident), str(xid)], xids.seen_at[(index, xid)])
        yield last
        yield total
        yield seen

    def _state(self, views: Sequence[GpuView]) -> Iterable[Metric]:
        yield backend_up(1.0, self.host_label, self.hostname)
        up = GaugeMetricFamily(
            "jobsight_gpu_up",
            "jobsight: 1 if the GPU answered its last read within the staleness bound, else 0.",
            labels=self.gpu_labels,
        )
        info = GaugeMetricFamily(
            "jobsight_gpu_info",
            "jobsight: static facts about the GPU and the backend reading it.",
            labels=[*self.gpu_labels, "driver_version", "cuda_version", "backend"],
        )
        for view in views:
            labels = self._labels(view.identity)
            if view.age_s is not None:  # not before the first read: "down" would be a guess
                up.add_metric(labels, 1.0 if view.up else 0.0)
            facts = [self.info.driver_version, self.info.cuda_version, self.info.backend]
            info.add_metric([*labels, *facts], 1.0)
        yield up
        yield info

    def _jobs(self, views: Sequence[GpuView]) -> Iterable[Metric]:
        job_info = GaugeMetricFamily(
            "jobsight_gpu_job_info",
            "jobsight: 1 for each job holding the GPU (job map directory, else the processes on it).",
            labels=self.job_labels,
        )
        memory = GaugeMetricFamily(
            "jobsight_gpu_job_memory_used_bytes",
            "jobsight: GPU memory used by the job's processes on the GPU.",
            labels=self.job_labels,
        )
        pods = self.pod_labels() if self.pod_labels is not None else {}

        def pod_of(device: str, job_id: str) -> Mapping[str, str]:
            owner = pods.get(device)
            return owner[1] if owner is not None and owner[0] == job_id else {}

        for view in views:
            ident = view.identity
            for job_id in view.jobs.jobs:
                gpu_keys = [self.hostname, str(ident.index), ident.uuid, job_id]
                pod = pod_of(ident.uuid, job_id)
                if pod:
                    job_info.add_sample(job_info.name, {**dict(zip(self.job_labels, gpu_keys, strict=True)),
                                                        **pod}, 1.0)
                else:
                    job_info.add_metric(gpu_keys, 1.0)
            for job_id, used in sorted(view.jobs.memory_bytes.items()):
                memory.add_metric([self.hostname, str(ident.index), ident.uuid, job_id], float(used))
            # A MIG instance's jobs: the same series with the instance's GPU_I_ID (and profile).
            instances = {inst.instance.gi_id: inst.instance
                         for inst in (view.reading.instances if view.reading else ())}
            for gi_id, jobs in sorted(view.jobs.instances.items()):
                instance = instances.get(gi_id)
                if instance is None:
                    continue
                base = {**dict(zip(self.job_labels[:3], [self.hostname, str(ident.index), ident.uuid],
                                   strict=True)), **_mig_labels(instance)}
                for job_id in jobs.jobs:
                    job_info.add_sample(job_info.name, {**base, "job_id": job_id,
                                                        **pod_of(instance.uuid or "", job_id)}, 1.0)
                for job_id, used in sorted(jobs.memory_bytes.items()):
                    memory.add_sample(memory.name, {**base, "job_id": job_id}, float(used))
        yield job_info
        yield memory

    def _self_metrics(self, views: Sequence[GpuView]) -> Iterable[Metric]:
        errors = CounterMetricFamily(
            "jobsight_gpu_collect_errors",
            "jobsight: errors met while collecting, by GPU and reason (gpu=\"\" for host-wide ones).",
            labels=[*self.self_labels, "reason"],
        )
        duration = GaugeMetricFamily(
            "jobsight_gpu_collect_duration_seconds",
            "jobsight: how long the last background read of the GPU took.",
            labels=self.self_labels,
        )
        age = GaugeMetricFamily(
            "jobsight_gpu_collect_age_seconds",
            "jobsight: age of the GPU's last completed read at scrape time.",
            labels=self.self_labels,
        )
        for view in views:
            labels = [self.hostname, str(view.identity.index)]
            for reason, count in sorted(view.errors.items()):
                errors.add_metric([*labels, reason], float(count))
            if view.duration_s is not None:
                duration.add_metric(labels, view.duration_s)
            if view.age_s is not None:
                age.add_metric(labels, view.age_s)
        for reason, count in sorted(self.sampler.other_errors().items()):
            errors.add_metric([self.hostname, "", reason], float(count))
        yield errors
        yield duration
        yield age
