# The two commands a newcomer needs (both run the idempotent setup first):
#   make demo   a voice call through the XDP relay, in namespaces, on the embedded defaults
#   make test   every test tier: unit, then root/BPF, then whole-chain namespaces
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast bench lint clean image

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/voxrelay demo $(ARGS)

test: setup
	@bash scripts/test.sh

test-fast: setup
	@bash scripts/test.sh fast

# The [bench] extra (matplotlib) comes with setup; bench.run holds itself to
# 575 s (--total), so that make bench stays under 10 minutes on 2 cores.
bench: setup
	$(PY) -m bench.run $(ARGS)

# OCI images voxrelay-{relay,transceiver,model}:VERSION in podman's storage,
# from Debian packages and this checkout's wheel (scripts/image.sh --help);
# ARGS="--save DIR" also writes OCI archives, ARGS=relay builds one image.
image: setup
	@bash scripts/image.sh $(ARGS)

lint: setup
	$(VENV)/bin/ruff check voxrelay orchestrator transceiver lab tests bench
	$(VENV)/bin/mypy --strict voxrelay orchestrator transceiver
	$(VENV)/bin/mypy lab
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) build *.egg-info
