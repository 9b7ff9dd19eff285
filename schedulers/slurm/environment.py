"""What Slurm tells a hook about the job, read from the hook's environment.

Facts checked against Slurm 22.05 (see ../shared/research/schedulers.md): slurmd's Prolog/Epilog
get ``SLURM_JOB_GPUS`` (indices into the node's gres.conf ``File=`` list), ``SLURMD_NODENAME`` and
``SLURM_CONF``; PrologSlurmctld/EpilogSlurmctld get the job's name, account, partition and node
list but no GPU variables and no ``SLURM_CONF``. ``SLURM_JOB_EXIT_CODE`` and
``SLURM_JOB_DERIVED_EC`` are raw wait statuses (768 = exit 3); ``SLURM_JOB_EXIT_CODE2`` is ``3:0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from jobsight.errors import InvalidInput
from jobsight.jobid import validate_job_id
from schedulers.slurm import hostlist

CONTEXTS = ("prolog_slurmd", "epilog_slurmd", "prolog_slurmctld", "epilog_slurmctld")


class SlurmJob(NamedTuple):
    """A NamedTuple, not a dataclass, for the hook's start-up time (see config.SlurmHookConfig)."""

    context: str
    job_id: str
    user: str | None
    name: str | None
    account: str | None
    partition: str | None
    nodes: tuple[str, ...]
    node_name: str | None
    gpu_indices: tuple[int, ...]
    array_job_id: str | None
    array_task_id: str | None
    het_job_id: str | None
    het_job_offset: str | None
    exit_code: int | None
    exit_signal: int | None
    slurm_conf: str | None
    output_patterns: tuple[str, ...] = ()  # SLURM_JOB_STDOUT/STDERR, unexpanded (%A, %a, %j)

    @property
    def named_by_array_pair(self) -> bool:
        """Whether the job's output file names hold ``%A``/``%a`` (Slurm's default for arrays,
        ``slurm-%A_%a.out``), so the collector needs the alias to find the job's id."""
        return any("%A" in p or "%a" in p for p in self.output_patterns)

    @property
    def node_side(self) -> bool:
        return self.context.endswith("_slurmd")

    @property
    def labels(self) -> dict[str, str]:
        pairs = {
            "partition": self.partition, "account": self.account,
            "array_job_id": self.array_job_id, "array_task_id": self.array_task_id,
            "het_job_id": self.het_job_id, "het_job_offset": self.het_job_offset,
        }
        return {k: v for k, v in pairs.items() if v}


def _value(environ: Mapping[str, str], name: str) -> str | None:
    # Slurm prints unset strings as "(null)".
    value = environ.get(name, "").strip()
    return value if value and value != "(null)" else None


def _gpu_indices(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise InvalidInput(f"SLURM_JOB_GPUS: {part!r} is not a GPU index")
        out.append(int(part))
    return tuple(out)


def _exit_code(text: str | None) -> tuple[int | None, int | None]:
    """``SLURM_JOB_EXIT_CODE2`` = ``<exit code>:<signal>``."""
    if not text or ":" not in text:
        return None, None
    code, _, signal = text.partition(":")
    if not (code.isdigit() and signal.isdigit()):
        raise InvalidInput(f"SLURM_JOB_EXIT_CODE2: {text!r} is not <code>:<signal>")
    return int(code), int(signal)


def from_environ(environ: Mapping[str, str]) -> SlurmJob:
    context = _value(environ, "SLURM_SCRIPT_CONTEXT")
    if context not in CONTEXTS:
        raise InvalidInput(
            f"SLURM_SCRIPT_CONTEXT is {context!r}: run this as a Slurm Prolog, Epilog, "
            "PrologSlurmctld or EpilogSlurmctld"
        )
    raw_id = _value(environ, "SLURM_JOB_ID") or _value(environ, "SLURM_JOBID")
    if raw_id is None:
        raise InvalidInput("SLURM_JOB_ID is not set")
    nodelist = _value(environ, "SLURM_JOB_NODELIST") or _value(environ, "SLURM_NODELIST")
    code, signal = _exit_code(_value(environ, "SLURM_JOB_EXIT_CODE2"))
    return SlurmJob(
        context=context,
        job_id=validate_job_id(raw_id),
        user=_value(environ, "SLURM_JOB_USER"),
        name=_value(environ, "SLURM_JOB_NAME"),
        account=_value(environ, "SLURM_JOB_ACCOUNT"),
        partition=_value(environ, "SLURM_JOB_PARTITION"),
        nodes=tuple(hostlist.expand(nodelist)) if nodelist else (),
        node_name=_value(environ, "SLURMD_NODENAME"),
        gpu_indices=_gpu_indices(_value(environ, "SLURM_JOB_GPUS")),
        array_job_id=_value(environ, "SLURM_ARRAY_JOB_ID"),
        array_task_id=_value(environ, "SLURM_ARRAY_TASK_ID"),
        het_job_id=_value(environ, "SLURM_HET_JOB_ID"),
        het_job_offset=_value(environ, "SLURM_HET_JOB_OFFSET"),
        exit_code=code,
        exit_signal=signal,
        slurm_conf=_value(environ, "SLURM_CONF"),
        output_patterns=tuple(v for v in (_value(environ, "SLURM_JOB_STDOUT"),
                                          _value(environ, "SLURM_JOB_STDERR")) if v),
    )
