# kubeling — see README.md. `make test` is the test command CI runs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: install proto images lint lock test unit integration bench bench-proxy up down demo clean

# Every install comes from requirements.lock (exact versions, hashes checked): runtime,
# dev and build requirements alike, so a fresh clone builds and tests what was tested.
# The project itself is built without isolation, with the locked setuptools/grpcio-tools.
$(VENV)/.installed: requirements.lock pyproject.toml setup.py $(wildcard protos/kubeling/*/*.proto)
	python3 -m venv $(VENV)
	$(PIP) install --quiet --require-hashes --no-deps -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

proto: install
	$(PY) setup.py -q build_protos

# The images kubeling provides (busybox, debian:bookworm-slim, python:3.11-slim, redis:7,
# postgres:15, kubeling) as OCI archives in /var/cache/kubeling/images
# ($KUBELING_IMAGE_CACHE). Needs root, mmdebstrap and deb.debian.org the first time;
# cached by their inputs afterwards, so a repeat takes a second.
images: install proto
	$(PY) -m kubeling.cli.main image build --provided

lint: install proto
	$(VENV)/bin/ruff check services tests bench setup.py
	$(VENV)/bin/ruff format --check services tests bench setup.py
	$(VENV)/bin/mypy

# Refresh the lock deliberately (newest versions within pyproject.toml's ranges);
# commit it with the code it was tested with.
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --upgrade \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

unit: install proto
	$(VENV)/bin/pytest -q tests/unit

integration: install proto
	$(VENV)/bin/pytest -q tests/integration

# `timeout` guards CI against a run that hangs at exit (grpc threads).
test: lint images
	timeout --kill-after=30 3000 $(VENV)/bin/pytest -q tests

bench: install proto
	$(PY) bench/api.py

# Needs root: runs in its own network namespace (unshare --net), never the host's nftables.
bench-proxy: install proto
	$(PY) bench/proxy.py

up:
	bash deploy/local/up.sh

down:
	bash deploy/local/down.sh

# The three-tier application (deploy/examples/three-tier.yaml, README there) on the
# lab of `make up`, which it starts when none is up.
demo:
	bash deploy/local/demo.sh

clean:
	rm -rf build dist services/*.egg-info services/kubeling/v1 .mypy_cache .ruff_cache .pytest_cache
