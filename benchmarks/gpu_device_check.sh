#!/usr/bin/env bash
# The GPU checks of issue 10 in one go, for a short loan of a GPU machine (docs/benchmarks/gpu.md,
# "On real GPUs"):
#   1. the GPU, driver and nvidia-ml-py there;
#   2. pytest -m gpu tests/exporters/gpu (tests/exporters/gpu/test_real_nvml.py: values against
#      nvidia-smi --query-gpu, 60 s of serving without a read error, promtool on the exposition);
#   3. benchmarks/gpu_scrape.py --nvml (exporter scrape vs nvidia-smi vs raw nvidia-ml-py).
# Everything lands in $OUT (summary.txt, pytest-gpu.txt, gpu_scrape.txt).
#
# Two steps, because the GPU machine reaches no package registry and its python3 (3.12, with
# httpx, prometheus-client, pytest, pyyaml, hypothesis) lacks pydantic and pydantic-settings:
#
#   benchmarks/gpu_device_check.sh prepare   # here: wheels for CPython 3.12 x86-64 and promtool
#                                            # into .device/ (ignored by git; carried to the machine)
#   benchmarks/gpu_device_check.sh           # there, from the repository root, with carry [".device"]
#
# device.run: command "bash benchmarks/gpu_device_check.sh", carry [".device"], timeout_s 420.
# It needs about 3 minutes there. Without a GPU it stops at step 1 and says so.
set -uo pipefail

cd "$(dirname "$0")/.."
DEVICE_DIR=.device
WHEELS="$DEVICE_DIR/wheels"
# nvidia-ml-py pinned to the version tests/exporters/gpu/fake_nvml.py is checked against.
PACKAGES=(pydantic pydantic-settings "nvidia-ml-py==13.615.71")

if [[ "${1:-}" == "prepare" ]]; then
    mkdir -p "$WHEELS" "$DEVICE_DIR/bin"
    grep -qx "/$DEVICE_DIR/" .git/info/exclude 2>/dev/null || echo "/$DEVICE_DIR/" >> .git/info/exclude
    .venv/bin/python -m pip download --quiet --dest "$WHEELS" --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 "${PACKAGES[@]}" || exit 1
    if command -v promtool >/dev/null; then
        cp "$(command -v promtool)" "$DEVICE_DIR/bin/promtool"
    fi
    du -sh "$DEVICE_DIR"
    echo "ready: carry [\"$DEVICE_DIR\"] (the working tree and carried paths travel within 64 MiB)"
    exit 0
fi

OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

say "# jobsight GPU device check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    say "no GPU here (nvidia-smi missing or failing): nothing to check"
    exit 2
fi
say "## GPUs"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id --format=csv | tee -a "$SUMMARY"
nvidia-smi -q | grep -iE "^ *(MIG Mode|Current|Pending) *:|CUDA Version" | head -6 | tee -a "$SUMMARY"

# A venv over the machine's python3 (which has httpx, prometheus-client, pytest, pyyaml), plus the
# carried wheels. jobsight itself runs from this checkout through PYTHONPATH.
VENV=/tmp/jobsight-venv
python3 -m venv --system-site-packages "$VENV" || { say "could not make a venv"; exit 1; }
if [[ -d "$WHEELS" ]]; then
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" "${PACKAGES[@]}" \
        || say "warning: installing the carried wheels failed"
else
    say "warning: no $WHEELS (run 'benchmarks/gpu_device_check.sh prepare' here and carry $DEVICE_DIR)"
fi
export PATH="$PWD/$DEVICE_DIR/bin:$VENV/bin:$PATH" PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
say "python: $(python --version 2>&1); nvidia-ml-py: $(python -c 'import importlib.metadata as m; print(m.version("nvidia-ml-py"))' 2>&1)"

deselect=()
if ! command -v promtool >/dev/null; then
    say "warning: no promtool here: the promtool test is left out"
    deselect=(-k "not promtool")
fi

say "## pytest -m gpu tests/exporters/gpu"
timeout 240 python -m pytest -m gpu tests/exporters/gpu -v -p no:cacheprovider "${deselect[@]}" 2>&1 \
    | tee "$OUT/pytest-gpu.txt"
pytest_rc=${PIPESTATUS[0]}
say "pytest exit code: $pytest_rc ($(tail -1 "$OUT/pytest-gpu.txt"))"

say "## benchmarks/gpu_scrape.py --nvml"
timeout 240 python benchmarks/gpu_scrape.py --nvml --scrapes 300 2>&1 | tee "$OUT/gpu_scrape.txt"
bench_rc=${PIPESTATUS[0]}
say "benchmark exit code: $bench_rc"
exit $(( pytest_rc != 0 || bench_rc != 0 ))
