# SegFormer on Triton — see README.md. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,rtx,deploy,perf
REPO ?= model_repository
HOST ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
VARIANTS ?=
PRECISIONS ?=
IMAGE ?= samples/camvid_0001TP_008550.jpg
MODEL ?= auto
OUT ?= out
CALIB ?=
CHECKPOINT ?=
NAME ?=
PRESET ?=
CLASSES ?=
SIZE ?=
DYNAMIC ?=
FORCE ?=
KEEP_VERSIONS ?=
LOGITS ?=
HOLDOUT ?=
USERS ?= 1,2,4
LOAD_USERS ?= 4
DURATION ?= 20
SLO_MS ?= 10000
LOAD_MODEL ?= segformer_b1
SOAK_S ?= 600
SOAK_LOAD ?= 0.8
BENCH_IMAGES ?=
EVAL_IMAGES ?=
EVAL_LABELS ?=
LABEL_FORMAT ?= auto
EVAL_MODELS ?=
REFERENCE ?= segformer_b1
THRESHOLD ?=
CUDA_ARCH ?=

.PHONY: help venv repo serve stop reload demo test perf tune evaluate loadtest sweep soak bench-build bench bench-cpu plugins clean deploy-manifests cluster cluster-status cluster-stop cluster-reload
help:
	@echo "make demo     build the default model, start Triton, segment $(IMAGE), stop"
	@echo "make test     run the test suite"
	@echo "make repo CHECKPOINT=your.pth [NAME=city_b1 PRESET=cityscapes|ade20k|camvid CLASSES=classes.json SIZE=1024x2048 DYNAMIC=512x512:1024x2048]"
	@echo "              import your trained SegFormer (NVlabs, mmsegmentation, Hugging Face) and build every row for it"
	@echo "make repo     write $(REPO)/ (VARIANTS=\"segformer_b1 ...\" PRECISIONS=\"fp32 fp16\", NAME=entry)"
	@echo "make serve    start Triton on $(REPO)/ in the background (127.0.0.1; HOST=0.0.0.0 opens it); make stop ends it"
	@echo "make repo CALIB=DIR   also build the int8 / best rows (calibration images)"
	@echo "              a rebuilt row is a new version folder (2/, 3/ ...); the latest KEEP_VERSIONS (default 2) are kept"
	@echo "make reload [MODEL=name]  swap the new versions into the running server (old ones serve meanwhile)"
	@echo "make evaluate EVAL_IMAGES=DIR [EVAL_LABELS=DIR LABEL_FORMAT=camvid EVAL_MODELS=a,b]  accuracy of the served"
	@echo "              $(REFERENCE)_* rows (or EVAL_MODELS) vs $(REFERENCE)"
	@echo "make perf      perf_analyzer beside loadtest.closed_loop on a served PERF_MODEL=$(PERF_MODEL), HTTP and gRPC -> $(PERF_OUT).md"
	@echo "make tune      Model Analyzer over TUNE_CONFIG=$(TUNE_CONFIG) -> $(TUNE_OUT)/chosen.json (make repo TUNED=... applies it)"
	@echo "make loadtest  headless locust run against the served LOAD_MODEL=$(LOAD_MODEL) (LOAD_USERS=$(LOAD_USERS), DURATION=$(DURATION))"
	@echo "make sweep     concurrency sweep of LOAD_MODEL (USERS=$(USERS), DURATION=$(DURATION)) with knee under SLO_MS=$(SLO_MS)"
	@echo "make soak      SOAK_S seconds at SOAK_LOAD x the probed rate: failures, p99 over time, server RSS drift"
	@echo "make bench-build  build time and engine size of every TensorRT variant -> results/"
	@echo "make bench     GPU, one results file per call -> $(BENCH_OUT).{json,md,png} (BENCH_IMAGES=DIR: agreement, served frames):"
	@echo "               model only (BENCH_SIZES=\"$(BENCH_SIZES)\" BENCH_VARIANTS=\"$(BENCH_VARIANTS)\" BENCH_PATHS=names):"
	@echo "               ours 30-60 s and HF torch.compile 15-25 s per model and size (HF_MAX_AUTOTUNE=1: +6 min, first"
	@echo "               size only), kernels ~30 s, served BENCH_SCENARIOS=$(BENCH_SCENARIOS) ~2 min (BENCH_SECTIONS=\"$(BENCH_SECTIONS)\""
	@echo "               mixffn: +1.5 min, video: +1 min); about 7 min of one H100 in all"
	@echo "make bench-cpu  CPU: ONNX Runtime FP32 / best_cpu vs OpenVINO f32 / bf16, speed + accuracy (BENCH_DATA=camvid) -> results/"
	@echo "make cluster [REPLICAS=3]  N Triton replicas behind HAProxy on $(HTTP_PORT)/$(GRPC_PORT) (a cluster Service on one host); cluster-status, cluster-stop"
	@echo "make cluster-reload [MODEL=name]  rolling update: one replica at a time drained, reloaded, back in"
	@echo "make deploy-manifests  Kubernetes (kustomize) + KServe manifests for the built $(REPO)/ -> deploy/k8s/, validated"
	@echo "make plugins   build the LayerNorm kernels and TensorRT plugin (plugins/build/), run the CPU field test"

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	ln -sfn "$$(realpath --relative-to=$(BIN) server/tritonserver)" $(BIN)/tritonserver
	touch $@

repo: venv
	$(PY) -m build.repository --out $(REPO) $(if $(VARIANTS),--variants $(VARIANTS)) $(if $(PRECISIONS),--precisions $(PRECISIONS)) \
	  $(if $(CALIB),--calib $(CALIB)) $(if $(HOLDOUT),--holdout $(HOLDOUT)) \
	  $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(NAME),--name $(NAME)) $(if $(PRESET),--preset $(PRESET)) \
	  $(if $(CLASSES),--classes "$(CLASSES)") $(if $(SIZE),--size $(SIZE)) $(if $(DYNAMIC),--dynamic $(DYNAMIC)) \
	  $(if $(LOGITS),--logits) $(if $(FORCE),--force) $(if $(KEEP_VERSIONS),--keep-versions $(KEEP_VERSIONS)) \
	  $(if $(LICENSE),--licence "$(LICENSE)")
	$(if $(TUNED),$(PY) -m loadtest.perf.tune apply --chosen $(TUNED) --repo $(REPO))

serve: venv
	@test -n "$$(ls $(REPO)/*/config.pbtxt 2>/dev/null)" || $(MAKE) repo
	$(PY) -m server.serve start --repo $(REPO) --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

stop: venv
	$(PY) -m server.serve stop

# MODEL=auto (the demo's default) means every loaded model
RELOAD_MODELS = $(filter-out auto,$(MODEL))
reload: venv
	$(PY) -m server.serve reload $(if $(RELOAD_MODELS),--model $(RELOAD_MODELS))

demo: venv
	$(PY) -m server.demo --image $(IMAGE) --model $(MODEL) --repo $(REPO) --out $(OUT) \
	  --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

evaluate: venv
	@test -n "$(EVAL_IMAGES)" || { echo "error: set EVAL_IMAGES=DIR (a folder of images to evaluate on)"; exit 2; }
	$(PY) -m client.evaluate --images $(EVAL_IMAGES) $(if $(EVAL_LABELS),--labels $(EVAL_LABELS) --label-format $(LABEL_FORMAT)) \
	  $(if $(EVAL_MODELS),--models $(EVAL_MODELS)) --reference $(REFERENCE) --url localhost:$(HTTP_PORT) --out $(OUT)/evaluate \
	  $(if $(THRESHOLD),--threshold $(THRESHOLD))

PERF_MODEL ?= segformer_null
PERF_CONCURRENCY ?= 1:4:1
PERF_PAYLOADS ?= raw raw-shm
PERF_OUT ?= results/perf_cpu
TUNE_CONFIG ?= loadtest/model_analyzer/cpu.yaml
TUNE_OUT ?= results/model_analyzer_cpu
TUNE_MODELS ?=
TUNED ?=
perf: venv
	$(PY) -m loadtest.perf fetch
	rc=0; for p in $(PERF_PAYLOADS); do \
	  $(PY) -m loadtest.perf --model $(PERF_MODEL) --protocol grpc --url $(HOST):$(GRPC_PORT) --metrics-url $(HOST):$(METRICS_PORT) \
	    --concurrency $(PERF_CONCURRENCY) --payload $$p $(if $(BENCH_IMAGES),--images $(BENCH_IMAGES)) --out $(PERF_OUT) || rc=1; \
	  $(PY) -m loadtest.perf --model $(PERF_MODEL) --protocol http --url $(HOST):$(HTTP_PORT) --metrics-url $(HOST):$(METRICS_PORT) \
	    --concurrency $(PERF_CONCURRENCY) --payload $$p $(if $(BENCH_IMAGES),--images $(BENCH_IMAGES)) --out $(PERF_OUT) || rc=1; \
	done; exit $$rc

tune: venv
	$(PY) -m loadtest.perf fetch
	$(PY) -m loadtest.perf.tune profile --config $(TUNE_CONFIG) --repo $(REPO) $(if $(TUNE_MODELS),--models $(TUNE_MODELS)) --chosen $(TUNE_OUT)

loadtest: venv
	$(PY) -m loadtest.run --model $(LOAD_MODEL) --users $(LOAD_USERS) --duration $(DURATION) \
	  --url localhost:$(GRPC_PORT) --metrics-url localhost:$(METRICS_PORT) --out $(OUT)/loadtest

soak: venv
	$(PY) -m loadtest.soak --model $(LOAD_MODEL) --duration $(SOAK_S) --load $(SOAK_LOAD) \
	  --url localhost:$(GRPC_PORT) --out $(OUT)/soak/$(LOAD_MODEL)

sweep: venv
	$(PY) -m loadtest.sweep --model $(LOAD_MODEL) --users $(USERS) --duration $(DURATION) --slo-ms $(SLO_MS) \
	  --url localhost:$(GRPC_PORT) --metrics-url localhost:$(METRICS_PORT) --out $(OUT)/sweep --repo $(REPO)

bench-build: venv
	$(PY) -m bench.build_times --out results/build_bench $(if $(CALIB),--calib $(CALIB)) $(if $(HOLDOUT),--holdout $(HOLDOUT))

BENCH_OUT ?= results/bench_gpu
BENCH_SECTIONS ?= model kernels served
BENCH_SIZES ?= 1024x1024:1,8,16 1024x2048:1,8
BENCH_VARIANTS ?= b1 b2@1024x1024
BENCH_PATHS ?=
BENCH_SCENARIOS ?= quick
HF_MAX_AUTOTUNE ?=
bench: venv
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip install -q -e ".[gpu]"
	$(PY) -m bench.gpu --sections $(BENCH_SECTIONS) --sizes $(BENCH_SIZES) --variants $(BENCH_VARIANTS) --profile \
	  $(if $(BENCH_PATHS),--paths $(BENCH_PATHS)) $(if $(HF_MAX_AUTOTUNE),--hf-max-autotune) \
	  --served-scenarios $(BENCH_SCENARIOS) $(if $(BENCH_IMAGES),--images $(BENCH_IMAGES)) --out $(BENCH_OUT)

BENCH_DATA ?= ../shared/datasets/camvid
bench-cpu: venv
	$(PY) -m bench.cpu --data $(BENCH_DATA) --out results/bench_cpu_b1

REPLICAS ?= 3
cluster: venv
	@test -n "$$(ls $(REPO)/*/config.pbtxt 2>/dev/null)" || $(MAKE) repo
	$(PY) -m server.cluster start --repo $(REPO) --replicas $(REPLICAS) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

cluster-status: venv
	$(PY) -m server.cluster status

cluster-stop: venv
	$(PY) -m server.cluster stop

cluster-reload: venv
	$(PY) -m server.cluster reload $(if $(RELOAD_MODELS),--model $(RELOAD_MODELS))

DEPLOY_MODELS ?=
STORAGE_URI ?= s3://your-bucket/segformer/model_repository
deploy-manifests: venv
	$(PY) -m deploy.manifests --repo $(REPO) --out deploy/k8s --storage-uri $(STORAGE_URI) $(if $(DEPLOY_MODELS),--models $(DEPLOY_MODELS))
	$(PY) -m deploy.validate deploy/k8s

plugins: venv
	$(PY) -m plugins.layernorm $(if $(CUDA_ARCH),--cuda-arch $(CUDA_ARCH))
	cd plugins/build && ctest --output-on-failure

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean:
	@# a server still running would be orphaned (its pid file and admin key go with .triton): stop it first
	@if [ -x $(PY) ] && [ -d .triton ]; then $(PY) -m server.serve stop; $(PY) -m server.cluster stop; fi
	rm -rf $(REPO)/*/ .cache .triton $(OUT)
