"""Fixtures the attacks share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def base() -> Iterator[Path]:
    """A tree ``nobody`` (the attacker) can reach: pytest's tmp_path is private to root."""
    path = Path(tempfile.mkdtemp(prefix="jobsight-sec-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
