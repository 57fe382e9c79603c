# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= train,convert,serve,dev
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean protos

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

# The gRPC stubs in slimyolo/rpc/gen, from protos/ (committed; tests/test_rpc_protos.py fails when stale).
protos: $(STAMP)
	$(BIN)/python -m slimyolo.rpc.protogen

lint: $(STAMP)
	$(BIN)/ruff check slimyolo tests services benchmarks

clean:
	rm -rf $(VENV) runs .slimyolo .pytest_cache
