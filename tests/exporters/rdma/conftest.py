from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import FIXTURES

GOOD = FIXTURES / "rdma" / "good" / "sys"
BROKEN = FIXTURES / "rdma" / "broken" / "sys"


@pytest.fixture
def good_root() -> Path:
    return GOOD


@pytest.fixture
def broken_root() -> Path:
    return BROKEN
