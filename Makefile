# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= train,convert,serve,dev
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean protos images test-images certs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The whole method on the synthetic data set, in process with the local store (configs/demo.yaml):
# train, sparsify, sweep, prune, fine-tune, convert (FP32, INT8), evaluate, then the table.
demo: $(STAMP)
	$(BIN)/slimyolo pipeline run configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# A private CA and a certificate per service (certs/<service>/{tls.crt,tls.key,ca.crt}, their Kubernetes
# names, localhost and 127.0.0.1) for TLS without cert-manager: README "Security". Kept if certs/ca.key exists.
certs: $(STAMP)
	$(BIN)/python deploy/certs.py services certs

# The gRPC stubs in slimyolo/rpc/gen, from protos/ (committed; tests/test_rpc_protos.py fails when stale).
protos: $(STAMP)
	$(BIN)/python -m slimyolo.rpc.protogen

lint: $(STAMP)
	$(BIN)/ruff check slimyolo tests benchmarks deploy

# Container images (README, Deployment; needs Docker, not part of `make test`). `make images` builds
# slimyolo/{trainer,converter,inference}:0.1.0 (the pruner runs the trainer image) on BASE_IMAGE;
# TORCH_WHEELS=DIR installs PyTorch from DIR's wheels instead of its CPU index (air-gapped sites).
# `make test-images` also builds the stand-ins of deploy/, runs each image hardened with one real job,
# then the compose file with `pipeline run --remote`, and prints the table.
BASE_IMAGE    ?= python:3.11.11-slim-bookworm
TORCH_WHEELS  ?=
BUILD_NETWORK ?= host
IMAGE_ARGS     = --base-image '$(BASE_IMAGE)' --build-network '$(BUILD_NETWORK)' $(if $(TORCH_WHEELS),--torch-wheels '$(TORCH_WHEELS)')

images:
	$(PYTHON) deploy/images.py build $(IMAGE_ARGS)

test-images: $(STAMP)
	$(BIN)/python deploy/images.py test $(IMAGE_ARGS)

clean:
	rm -rf $(VENV) runs .slimyolo .pytest_cache
