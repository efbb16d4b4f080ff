# SegFormer on Triton — see README.md. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,rtx
REPO ?= model_repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
VARIANTS ?=
PRECISIONS ?=
IMAGE ?= samples/camvid_0001TP_008550.jpg
MODEL ?= segformer_b1
OUT ?= out

.PHONY: help venv repo serve stop demo test bench-build clean
help:
	@echo "make demo     build the default model, start Triton, segment $(IMAGE), stop"
	@echo "make test     run the test suite"
	@echo "make repo     write $(REPO)/ (VARIANTS=\"segformer_b1 ...\" PRECISIONS=\"fp32 fp16\")"
	@echo "make serve    start Triton on $(REPO)/ in the background; make stop ends it"

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	printf '#!/bin/sh\nexec "%s" -m build.serve exec -- "$$@"\n' "$(abspath $(PY))" > $(BIN)/tritonserver
	sed -i '2i export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"' $(BIN)/tritonserver
	chmod +x $(BIN)/tritonserver
	touch $@

repo: venv
	$(PY) -m build.repository --out $(REPO) $(if $(VARIANTS),--variants $(VARIANTS)) $(if $(PRECISIONS),--precisions $(PRECISIONS))

serve: venv
	@test -n "$$(ls $(REPO)/*/config.pbtxt 2>/dev/null)" || $(MAKE) repo
	$(PY) -m build.serve start --repo $(REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

stop: venv
	$(PY) -m build.serve stop

demo: venv
	$(PY) -m build.demo --image $(IMAGE) --model $(MODEL) --repo $(REPO) --out $(OUT) \
	  --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf $(REPO)/*/ .cache .triton $(OUT)
