"""Which job held the node at a record's own time (issue 10, defect 10).

A source with ``job_map_dir`` (a node whose GPUs all hold one job) used to read the map once, when
it opened its input: an XID written during job 2002 was stored under job 1001, and on a first
start the whole kernel ring buffer was stamped with the current job. :class:`JobTimeline` re-reads
the map (at most every ``min_interval`` seconds; it is a handful of tiny files), keeps a short
history of its changes, and answers "which job at time t":

- a change is dated by the map's own modification times (the prolog writes the file when the job
  starts), not by when the collector noticed it, so a line read late still gets the job that held
  the node when the line was written;
- a record older than the collector's start gets no job from the map: what held the node before
  is unknown (the kernel's ring buffer reaches back to boot);
- the history is bounded (``max_changes``); a record older than the oldest change kept gets none.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from jobsight.identity import JobMapDir

DEFAULT_MIN_INTERVAL_S = 1.0
DEFAULT_MAX_CHANGES = 256


class JobTimeline:
    def __init__(self, map_dir: Path | str, *, clock: Callable[[], float] = time.time,
                 min_interval: float = DEFAULT_MIN_INTERVAL_S,
                 max_changes: int = DEFAULT_MAX_CHANGES) -> None:
        self.map = JobMapDir(map_dir)
        self.path = Path(map_dir)
        self.clock = clock
        self.min_interval = min_interval
        self.start = clock()
        self._last_read = -1e18
        # (since, job): the job (None: none, or several) that held the node from `since` on.
        self.changes: deque[tuple[float, str | None]] = deque(maxlen=max_changes)
        self.changes.append((self.start, self._current()))
        self._last_read = self.start

    def _current(self) -> str | None:
        jobs = {job for held in self.map.read().jobs_by_key.values() for job in held}
        return jobs.pop() if len(jobs) == 1 else None

    def _changed_at(self) -> float:
        """The newest modification time in the map (the directory for a file removed, a file for
        one written or truncated)."""
        newest = 0.0
        try:
            newest = os.stat(self.path).st_mtime
            with os.scandir(self.path) as entries:
                for entry in entries:
                    try:
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        continue
        except OSError:
            pass
        return newest

    def refresh(self, force: bool = False) -> None:
        """Re-read the map if ``min_interval`` has passed; record a change."""
        now = self.clock()
        if not force and now - self._last_read < self.min_interval:
            return
        self._last_read = now
        job = self._current()
        last_since, last_job = self.changes[-1]
        if job == last_job:
            return
        # Dated by the map's own times, within (previous change, now].
        since = min(now, max(self._changed_at(), last_since))
        self.changes.append((since, job))

    @property
    def current(self) -> str | None:
        return self.changes[-1][1]

    def job_at(self, timestamp: float) -> str | None:
        """The job that held the node at ``timestamp`` (unix seconds), or None when unknown."""
        if timestamp < self.start:
            return None
        for since, job in reversed(self.changes):
            if since <= timestamp:
                return job
        return None
