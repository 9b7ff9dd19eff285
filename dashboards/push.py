"""Install the jobsight dashboards into a Grafana: into a folder (created if missing), pointing at
the given Prometheus datasource uid, overwriting earlier versions."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from dashboards.panels import DATASOURCE_UID
from jobsight.grafana import call

DEFAULT_FOLDER = "jobsight"


@dataclass(frozen=True)
class Pushed:
    uid: str
    url: str
    version: int


def with_datasource(model: Mapping[str, Any], datasource_uid: str) -> dict[str, Any]:
    """A copy of ``model`` whose Prometheus datasource is ``datasource_uid``: the ``$datasource``
    variable's default, and every reference that names a fixed uid. References through the variable
    (``${datasource}``) stay, so the picker keeps working. Other datasources (e.g. Grafana's own
    annotations) are left alone."""
    result: dict[str, Any] = copy.deepcopy(dict(model))
    for variable in result.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource" and variable.get("query") == "prometheus":
            variable["current"] = {"selected": True, "text": datasource_uid, "value": datasource_uid}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if (
                isinstance(source, dict)
                and source.get("type") == "prometheus"
                and not str(source.get("uid", "")).startswith("$")
            ):
                source["uid"] = datasource_uid
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(result)
    return result


def ensure_folder(client: Any, title: str) -> str:
    """The uid of the folder titled ``title``, creating it when there is none."""
    for folder in call("list folders", client.folder.get_all_folders) or []:
        if folder.get("title") == title:
            return str(folder["uid"])
    created = call(f"create folder {title!r}", lambda: client.folder.create_folder(title))
    return str(created["uid"])


def push_dashboards(
    client: Any,
    dashboards: Mapping[str, Mapping[str, Any]],
    *,
    folder: str = DEFAULT_FOLDER,
    datasource_uid: str = DATASOURCE_UID,
    message: str = "jobsight dashboards push",
) -> list[Pushed]:
    """Install every dashboard of ``dashboards`` (uid -> Grafana JSON) into ``folder``; returns what
    Grafana answered for each, in order."""
    folder_uid = ensure_folder(client, folder)
    pushed: list[Pushed] = []
    for uid, model in dashboards.items():
        dashboard = with_datasource(model, datasource_uid)
        dashboard["id"] = None  # matched by uid; a numeric id from another Grafana would conflict
        payload = {"dashboard": dashboard, "folderUid": folder_uid, "overwrite": True, "message": message}
        answer: dict[str, Any] = call(
            f"save dashboard {uid}", partial(client.dashboard.update_dashboard, payload)
        )
        pushed.append(
            Pushed(
                uid=str(answer.get("uid", uid)),
                url=str(answer.get("url", "")),
                version=int(answer.get("version", 0)),
            )
        )
    return pushed
