"""Slurm's GPU index → the GPU the exporter knows.

``SLURM_JOB_GPUS`` holds positions in the node's gres.conf ``File=`` list for ``Name=gpu``, not
device minors and not NVML indices (a node whose list is ``/dev/nvidia[4-7]`` reports ``0,1`` for
its first two). The hook turns a position into the device file, the file into its minor number
(``stat``), and the minor into the GPU's UUID from the driver's own listing,
``/proc/driver/nvidia/gpus/<bus>/information`` (``Device Minor:`` and ``GPU UUID:`` lines), so the
job map file is named by UUID, which the exporter matches whatever NVML's enumeration order is.

What we rely on where that chain breaks: with ``AutoDetect=nvml`` and no ``File=`` lines, Slurm
orders GPUs as NVML does, so the position is the NVML index; a device whose minor the driver does
not list (no driver loaded, or a test's fake device) is named by its minor number, which equals
the NVML index on nodes whose GPUs are all visible and ordered by PCI bus id (the default).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from jobsight.errors import InvalidInput
from schedulers.slurm import hostlist

_MAX_CONF_BYTES = 1024 * 1024
_WORD = re.compile(r"(\w+)=(\S+)")


def gpu_files(gres_conf_text: str, node: str) -> list[str]:
    """The ordered ``File=`` list of ``Name=gpu`` lines that apply to ``node``."""
    files: list[str] = []
    for raw_line in gres_conf_text.splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = {k.lower(): v for k, v in _WORD.findall(line)}
        if fields.get("name") != "gpu" or "file" not in fields:
            continue
        if "nodename" in fields and node not in hostlist.expand(fields["nodename"]):
            continue
        files.extend(hostlist.expand(fields["file"]))
    return files


def read_gres_conf(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(_MAX_CONF_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read gres.conf: {exc.strerror or exc}") from exc


def device_minor(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.minor(st.st_rdev) if stat.S_ISCHR(st.st_mode) else None


def uuids_by_minor(nvidia_procfs: Path) -> dict[int, str]:
    """``Device Minor`` → ``GPU UUID`` from the driver's per-GPU ``information`` files."""
    out: dict[int, str] = {}
    try:
        entries = sorted(os.listdir(nvidia_procfs))
    except OSError:
        return out
    for entry in entries:
        try:
            text = (nvidia_procfs / entry / "information").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        minor: int | None = None
        uuid: str | None = None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "Device Minor" and value.isdigit():
                minor = int(value)
            elif key == "GPU UUID" and value.startswith("GPU-"):
                uuid = value
        if minor is not None and uuid is not None:
            out[minor] = uuid
    return out


def map_keys(indices: Sequence[int], files: Sequence[str], uuids: dict[int, str]) -> list[str]:
    """The job map file names (UUID, else index) for Slurm's GPU positions ``indices``."""
    keys: list[str] = []
    for index in indices:
        if not files:
            keys.append(str(index))  # AutoDetect=nvml: Slurm's order is NVML's.
            continue
        if index >= len(files):
            raise InvalidInput(f"SLURM_JOB_GPUS index {index} is past gres.conf's {len(files)} GPU files")
        minor = device_minor(files[index])
        if minor is None:
            raise InvalidInput(f"{files[index]} (gres.conf) is not a character device")
        keys.append(uuids.get(minor, str(minor)))
    return keys
