"""The host key every exporter of one node publishes, so node, RDMA and GPU series join by host."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def host_key(override: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Return the node's name: an explicit override, else $NODE_NAME (Kubernetes downward API, as
    dcgm-exporter reads it), else the machine's hostname."""
    if override:
        return override
    env = os.environ if environ is None else environ
    return env.get("NODE_NAME") or socket.gethostname()
