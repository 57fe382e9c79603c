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

demo: $(STAMP)
	@mkdir -p demo
	@for name in yolov3 yolov3-spp yolov3-tiny yolov4 yolov4-tiny; do \
		$(BIN)/slimyolo zoo $$name --classes 2 --size 416 --out demo/$$name.cfg 2>/dev/null && \
		$(BIN)/slimyolo info demo/$$name.cfg || exit 1; \
	done

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The gRPC stubs in slimyolo/rpc/gen, from protos/ (committed; tests/test_rpc_protos.py fails when stale).
protos: $(STAMP)
	$(BIN)/python -m slimyolo.rpc.protogen

lint: $(STAMP)
	$(BIN)/ruff check slimyolo tests

clean:
	rm -rf $(VENV) demo .pytest_cache
