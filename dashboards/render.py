"""Turn the dashboard definitions in :mod:`dashboards.boards` into Grafana JSON, deterministically,
and write or compare the committed copies under ``dashboards/json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.boards import gpu, job, node, overview, rdma
from dashboards.panels import Board

COMMITTED_DIR = Path(__file__).resolve().parent / "json"

# uid -> definition; the order is the order of the files and of `jobsight dashboards push`.
BOARDS: dict[str, Callable[[], Board]] = {
    overview.UID: overview.build,
    node.UID: node.build,
    gpu.UID: gpu.build,
    rdma.UID: rdma.build,
    job.UID: job.build,
}


def to_json(board: Board) -> dict[str, Any]:
    """The Grafana JSON model of ``board``: panel ids numbered in order (Grafana needs them unique),
    annotation query fields the SDK has no setter for merged in."""
    model: dict[str, Any] = json.loads(json.dumps(board.builder.build(), cls=JSONEncoder))
    # Grafana expects these lists even when empty.
    model.setdefault("templating", {}).setdefault("list", [])
    model.setdefault("annotations", {}).setdefault("list", [])
    next_id = 1
    for panel in model.get("panels", []):
        panel["id"] = next_id
        next_id += 1
        for inner in panel.get("panels", []):
            inner["id"] = next_id
            next_id += 1
    for annotation in model.get("annotations", {}).get("list", []):
        annotation.update(board.annotation_fields.get(annotation.get("name", ""), {}))
    return model


def build_all() -> dict[str, dict[str, Any]]:
    """uid -> Grafana JSON of every jobsight dashboard."""
    return {uid: to_json(build()) for uid, build in BOARDS.items()}


def dumps(model: dict[str, Any]) -> str:
    """Stable text form: sorted keys, two-space indent, trailing newline (diff-friendly)."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def file_name(uid: str) -> str:
    return f"{uid}.json"


def write_all(out_dir: Path) -> list[Path]:
    """Write every dashboard as ``<uid>.json`` into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, model in build_all().items():
        path = out_dir / file_name(uid)
        path.write_text(dumps(model), encoding="utf-8")
        written.append(path)
    return written


def load_committed(directory: Path = COMMITTED_DIR) -> dict[str, dict[str, Any]]:
    """uid -> JSON of the committed dashboards (what `jobsight dashboards push` installs)."""
    models: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        model = json.loads(path.read_text(encoding="utf-8"))
        models[str(model["uid"])] = model
    return models
