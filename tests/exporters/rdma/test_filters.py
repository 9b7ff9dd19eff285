from __future__ import annotations

import pytest

from exporters.rdma.filters import DeviceFilter
from jobsight.errors import ConfigError


def test_no_filter_allows_everything() -> None:
    assert DeviceFilter().allows("mlx5_0")
    assert DeviceFilter("", "").allows("anything")


def test_include_is_an_unanchored_search_like_go() -> None:
    only_mlx5 = DeviceFilter(include="mlx5")
    assert only_mlx5.allows("mlx5_0")
    assert only_mlx5.allows("xmlx5")
    assert not only_mlx5.allows("hfi1_0")
    exact = DeviceFilter(include="^mlx5_1$")
    assert exact.allows("mlx5_1")
    assert not exact.allows("mlx5_10")


def test_exclude() -> None:
    no_iwarp = DeviceFilter(exclude="^i40iw|^irdma")
    assert no_iwarp.allows("mlx5_0")
    assert not no_iwarp.allows("i40iw0")
    assert not no_iwarp.allows("irdma1")


def test_include_and_exclude_are_mutually_exclusive() -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        DeviceFilter(include="mlx5", exclude="hfi1")


def test_invalid_regex_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--collector\.infiniband\.device-exclude='\(' is not a valid"):
        DeviceFilter(exclude="(")
