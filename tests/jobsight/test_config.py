from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from jobsight.config import load_model, load_yaml_file
from jobsight.errors import ConfigError


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    inner: _Inner


def test_load_model_reads_valid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner: {port: 9}\n")
    assert load_model(_Settings, path) == _Settings(name="x", inner=_Inner(port=9))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("name: x\ninner: {port: nine}\n", "inner.port: Input should be a valid integer"),
        ("name: x\ninner: {port: 1, extra: 2}\n", "inner.extra: Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_file_field_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_model(_Settings, path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml_file(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml_file(tmp_path / "empty.yaml") == {}
