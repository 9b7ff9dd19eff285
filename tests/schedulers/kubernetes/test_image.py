"""The container image definition. No container engine runs on the build machines, so the image is
not built here; what can drift is checked: every package the distribution ships is copied in."""

from __future__ import annotations

import re
import tomllib

from tests.support import REPO_ROOT

CONTAINERFILE = REPO_ROOT / "deploy" / "image" / "Containerfile"


def test_every_shipped_package_is_copied_into_the_image() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", CONTAINERFILE.read_text(), flags=re.MULTILINE))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_runtime_stage_is_non_root_and_runs_jobsight() -> None:
    text = CONTAINERFILE.read_text()
    runtime = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001$", runtime, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["jobsight"]' in runtime
    assert "COPY --from=build /opt/jobsight /opt/jobsight" in runtime
