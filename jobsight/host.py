"""The host key every exporter of one node publishes, so node, RDMA and GPU series join by host.

One setting for the whole node: the agent, the collector and the Slurm hook must name a node the
same way, and that name must be the scheduler's (Slurm's NodeName, Kubernetes' node name), since
jobs list their nodes by it. ``socket.gethostname()`` can be a fully qualified name where Slurm's
NodeName is the short one, so the default is the short host name.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

HOSTNAME_ENV_VAR = "JOBSIGHT_HOSTNAME"


def host_key(override: str | None = None, environ: Mapping[str, str] | None = None,
             hostname: str | None = None) -> str:
    """Return the node's name: an explicit override (a flag or config field), else
    $JOBSIGHT_HOSTNAME, else $NODE_NAME (Kubernetes downward API, as dcgm-exporter reads it),
    else the machine's host name up to its first dot."""
    if override:
        return override
    env = os.environ if environ is None else environ
    named = env.get(HOSTNAME_ENV_VAR) or env.get("NODE_NAME")
    if named:
        return named
    machine = hostname if hostname is not None else socket.gethostname()
    return machine.split(".", 1)[0] or machine
