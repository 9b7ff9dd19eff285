"""The one safe character set of job ids.

Every job id is checked against it wherever it enters (a map file, a process, a log path, a
request, a scheduler hook), so that no id can carry PromQL or query syntax. Its own module, with
nothing but ``re`` to import: a Slurm Prolog validates the job's id on every job's start.
"""

from __future__ import annotations

import re

from jobsight.errors import InvalidInput

# Letters, digits and ._:@- ; starts with a letter or digit; at most 128 characters. Slurm ids
# (``4711``, ``4711_3`` for arrays, ``4711+1`` is not used in cgroups), Kubernetes UIDs and
# names, and most schedulers' ids fit; quotes, braces, spaces, ``=~`` and backslashes do not.
JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
_JOB_ID_RE = re.compile(rf"^{JOB_ID_PATTERN}$")


def is_valid_job_id(value: str) -> bool:
    """True when ``value`` is in the safe job-id character set and length."""
    return bool(_JOB_ID_RE.match(value))


def validate_job_id(value: str) -> str:
    """Return ``value`` unchanged if it is a safe job id, else raise :class:`InvalidInput`."""
    if not is_valid_job_id(value):
        shown = value if len(value) <= 64 else value[:61] + "..."
        raise InvalidInput(
            f"invalid job id {shown!r}: use 1-128 letters, digits or ._:@- starting with a letter or digit"
        )
    return value
