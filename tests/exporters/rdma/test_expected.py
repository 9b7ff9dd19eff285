"""``--collector.infiniband.expected-rate``: parsing, first match wins, and the published series."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporters.rdma import names
from exporters.rdma.collector import RdmaCollector
from exporters.rdma.expected import expected_rate, parse_expected_rates
from exporters.rdma.sysfs import InfinibandReader
from jobsight.errors import ConfigError


def test_rules_in_gbps_first_match_wins() -> None:
    rules = parse_expected_rates(["mlx5_[0-3]=400", "mlx5=200", "2.5"])
    assert expected_rate(rules, "mlx5_2") == 50_000_000_000  # 400 Gb/s as procfs converts it
    assert expected_rate(rules, "mlx5_7") == 25_000_000_000
    assert expected_rate(rules, "hfi1_0") == 312_500_000
    assert expected_rate(parse_expected_rates(["^mlx5_0$=400"]), "mlx5_01") is None
    assert parse_expected_rates(None) == ()


@pytest.mark.parametrize(("value", "message"), [
    ("400Gb", "'400Gb' is not a rate in Gb/s"),
    ("mlx5=", "'' is not a rate in Gb/s"),
    ("=400", "empty device expression"),
    ("mlx5=0", "0 Gb/s is outside"),
    ("mlx5=-100", "-100 Gb/s is outside"),
    ("mlx5=1e9", "1e+09 Gb/s is outside"),
    ("mlx5=nan", "nan Gb/s is outside"),
    ("(mlx5=400", "is not a valid regular expression"),
])
def test_bad_rules_name_the_flag_and_the_value(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_expected_rates([value])
    assert str(caught.value).startswith(f"--collector.infiniband.expected-rate={value!r}")
    assert message in str(caught.value)


def test_only_ports_of_named_devices_get_an_expected_rate(good_root: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    rules = parse_expected_rates(["^mlx5_=200"])
    registry.register(RdmaCollector(InfinibandReader(good_root), expected_rates=rules))
    get = registry.get_sample_value
    assert get(names.EXPECTED_RATE_METRIC, {"device": "mlx5_0", "port": "1"}) == 200 * 125_000_000
    assert get(names.EXPECTED_RATE_METRIC, {"device": "mlx5_1", "port": "2"}) == 200 * 125_000_000
    assert get(names.EXPECTED_RATE_METRIC, {"device": "hfi1_0", "port": "1"}) is None
    without = CollectorRegistry(auto_describe=False)
    without.register(RdmaCollector(InfinibandReader(good_root)))
    assert all(m.name != names.EXPECTED_RATE_METRIC for m in without.collect())  # nothing configured
