"""Which log sources are believed about hardware: the one place that says so.

On a shared cluster every user can write log files where the collector looks (their job's
output, their home directory), print anything to a container's stdout (CRI and docker json-file
logs) and name files as they like. None of that may produce a *hardware* fault: a forged
``NVRM: Xid ... 79`` line would otherwise become the first cause of someone else's failed job,
or a job-less "host event" applied to every failed job on the node (issue 9, finding 2). Only
the kernel's own log (``/dev/kmsg``: mode 0644 root, so only root can add a line to it) is
believed for these kinds; the exporters' metrics (NVML, sysfs) are the other trusted witness, read
by the API, not here.

A user-writable source still produces every *application* event (NCCL timeouts, CUDA OOM,
tracebacks): those describe the job itself, and a user can only lie about their own job.

The collector applies it to each line it reads; the API applies it again to stored events (records
written by an older collector, or put into Elasticsearch by something else), so it lives in the
kernel, where both can import it.

Add a kind here when a rule reports something only the kernel or the hardware can know
(host EDAC, NVSwitch SXid, PCIe AER, ...): a rule of that kind then fires for kmsg only, whatever
its ``sources`` say.
"""

from __future__ import annotations

# Event kinds that claim a hardware or kernel fault. Believed only from TRUSTED_SOURCES.
HARDWARE_KINDS: frozenset[str] = frozenset({
    "gpu_xid",  # NVRM: Xid, printed by the NVIDIA kernel driver
    "gpu_fallen_off_bus",  # NVRM: GPU ... has fallen off the bus
    "gpu_lost",  # the exporters' jobsight_gpu_up == 0; never a log kind, listed so none claims it
    "ecc_error",  # EDAC / driver ECC reports
    "ib_link_down",  # mlx5_core / ib_core port state changes
    "kernel_oom_kill",  # the kernel's OOM killer (a job's process killed for the node's memory)
    "host_edac",  # EDAC MCn: CE/UE, the host's own memory controller (issue 16)
    "nvswitch_sxid",  # nvidia-nvswitch: SXid, the NVSwitch driver (issue 16)
    "ib_port_error",  # mlx5_core: Port module event (cable/transceiver), the NIC driver (issue 16)
})

# Sources whose text only the kernel writes.
TRUSTED_SOURCES: frozenset[str] = frozenset({"kmsg"})


def may_report(kind: str, source: str) -> bool:
    """Whether an event of ``kind`` read from a source of type ``source`` is believed."""
    return kind not in HARDWARE_KINDS or source in TRUSTED_SOURCES
