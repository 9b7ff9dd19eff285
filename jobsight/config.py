"""Reading configuration files into typed models, with errors that name the file, the field and
the problem. Components define their own pydantic models; this module is the one place that turns
YAML and validation failures into :class:`~jobsight.errors.ConfigError`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from jobsight.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

# pydantic is imported where a model is validated, not here: a Slurm hook reads its YAML through
# load_yaml_file on every job's start and has no time for pydantic's import.
ModelT = TypeVar("ModelT", bound="BaseModel")

_MAX_CONFIG_BYTES = 4 * 1024 * 1024


def load_yaml_file(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; an empty file is an empty mapping."""
    file = Path(path)
    try:
        with open(file, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: config is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping, not {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError) -> str:
    """``field.sub[0]: message`` for each problem, one per line."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{loc}: {err['msg']}")
    return "\n".join(lines)


def parse_model(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate ``data`` as ``model``; ``source`` (a file name, "flags", "environment") prefixes
    every problem reported."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc).replace("\n", f"\n{source}: ")
        raise ConfigError(f"{source}: {problems}") from exc


def load_model(model: type[ModelT], path: Path | str) -> ModelT:
    """Read and validate a YAML config file as ``model``."""
    return parse_model(model, load_yaml_file(path), str(path))
