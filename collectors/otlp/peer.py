"""Which process sent a request: a TCP peer on this host, found through procfs.

The job id an OTLP sender claims is what any process on the node can write (DESIGN.md "Trust").
Its connection is not: for a sender on this host's network, ``/proc/net/tcp`` (and ``tcp6``) has
the socket (local address = the request's client address, remote = ours) with its owner's uid and
inode, and the process holding that inode has ``socket:[<inode>]`` among its ``/proc/<pid>/fd``
links — what ``ss -p`` reads. Only processes of the socket's uid are searched. The sender's job is
then its scheduler cgroup's (jobsight/identity.py, never its environment).

A sender in another network namespace (a pod without host networking) has no row in our table:
it is unknown, not refused here (the receiver's policy decides).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from jobsight.identity import ProcessJobResolver

log = logging.getLogger(__name__)

_ESTABLISHED = "01"
_MAX_TABLE_BYTES = 64 * 1024 * 1024  # a host with a million sockets stays below this


def _hex_address(text: str) -> tuple[str, int] | None:
    """``0100007F:1F90`` (IPv4) or 32 hex digits (IPv6), as the kernel prints them: each 32-bit
    word in host byte order (little endian here)."""
    host, _, port = text.partition(":")
    try:
        if len(host) == 8:
            packed = bytes.fromhex(host)[::-1]
        elif len(host) == 32:
            raw = bytes.fromhex(host)
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        else:
            return None
        address = ipaddress.ip_address(packed)
        return str(getattr(address, "ipv4_mapped", None) or address), int(port, 16)
    except ValueError:
        return None


def _plain(host: str) -> str:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    return str(getattr(address, "ipv4_mapped", None) or address)


class PeerProcesses:
    """Reading another user's ``/proc/<pid>/fd`` links takes ptrace access: root with
    ``CAP_SYS_PTRACE`` (not ``CAP_DAC_READ_SEARCH``). Without it the sockets of other users'
    processes are not found; :attr:`denied` counts the processes that could not be read."""

    def __init__(self, proc_root: Path | str = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self.denied = 0

    def pid_of(self, client: tuple[str, int], server: tuple[str, int]) -> int | None:
        """The process holding the client end of the TCP connection ``client`` → ``server`` on
        this host, or None (another network namespace, gone, or not readable)."""
        try:
            want_local, want_remote = (_plain(client[0]), client[1]), (_plain(server[0]), server[1])
        except ValueError:
            return None
        socket = self._socket(want_local, want_remote)
        if socket is None:
            return None
        uid, inode = socket
        return self._holder(uid, f"socket:[{inode}]")

    def _socket(self, local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, str] | None:
        # Only rows whose remote port is ours are decoded: a busy node has 100,000s of sockets.
        port = f":{remote[1]:04X}"
        for table in ("tcp", "tcp6"):
            try:
                with open(self.proc_root / "net" / table, encoding="ascii", errors="replace") as fh:
                    lines = fh.read(_MAX_TABLE_BYTES).splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) < 10 or fields[3] != _ESTABLISHED or not fields[2].endswith(port):
                    continue
                if _hex_address(fields[1]) == local and _hex_address(fields[2]) == remote:
                    try:
                        return int(fields[7]), fields[9]
                    except ValueError:
                        return None
        return None

    def _holder(self, uid: int, link: str) -> int | None:
        try:
            entries = list(os.scandir(self.proc_root))
        except OSError:
            return None
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                fds = self.proc_root / entry.name / "fd"
                with os.scandir(fds) as links:
                    for fd in links:
                        if os.readlink(fd.path) == link:
                            return int(entry.name)
            except PermissionError:
                self.denied += 1
                continue
            except OSError:  # exited meanwhile
                continue
        return None


class SenderJobs:
    """The job of the process behind a connection, by its scheduler cgroup (or, on Kubernetes,
    its pod's alias file), through ``resolver`` — a :class:`jobsight.identity.ProcessJobResolver`
    that never reads the environment."""

    def __init__(self, peers: PeerProcesses, resolver: ProcessJobResolver) -> None:
        if resolver.trust_environment:
            raise ValueError("a sender's job must not come from its environment")
        self.peers = peers
        self.resolver = resolver
        self._said_denied = False

    def job_of(self, client: tuple[str, int], server: tuple[str, int]) -> str | None:
        pid = self.peers.pid_of(client, server)
        if pid is None:
            if self.peers.denied and not self._said_denied:
                self._said_denied = True
                log.warning("otlp: other users' processes cannot be read (/proc/<pid>/fd needs "
                            "CAP_SYS_PTRACE): their steps are taken without checking their job")
            return None
        ref = self.resolver.job_of(pid, fresh=True)
        return ref.job_id if ref is not None else None
