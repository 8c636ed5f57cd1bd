# eim-lightning: `make demo` (set up + main job) and `make test` (set up + full test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-gpu bench results reproduce clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Train SNIS on the checkerboard (about 3 minutes on 2 CPU cores), write images and TensorBoard logs.
demo: $(STAMP)
	$(VENV)/bin/eim-demo

## The whole test suite (6-8 minutes measured on 2 idle CPU cores, about 20 under load); CI runs exactly this.
test: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

## The fast tier (under 2 minutes measured on 2 idle CPU cores).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow"

## The GPU tier on a CUDA machine (every module in float32 and bf16-mixed, exact resume on CUDA); skips without one.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

## Ours beside the authors' TF1 code (installs it with ../shared/tfref/install.sh if missing; about 90 minutes):
## the 2-D step and whole process, where a 2-D step's and a whole 2-D fit's time goes, the VAE's step time and memory per prior,
## the VAE's training speed (float32 and bf16-mixed) beside the authors' MNIST code, and where the VAE's step time goes.
## Never run it while other jobs share the cores.
bench: $(STAMP)
	-[ -x "$${EIMREF:-$$HOME/.cache/eimref}/venv/bin/python" ] || bash ../shared/tfref/install.sh
	$(PY) bench/vs_tf.py --output docs/BENCHMARKS.md
	$(PY) bench/toy2d_steps.py --steps 300 --warmup 50 --repeats 5 --output docs/BENCHMARKS_BREAKDOWN.md
	$(PY) bench/process_breakdown.py --output docs/BENCHMARKS_PROCESS.md
	$(PY) bench/vae_steps.py --output docs/BENCHMARKS_IMAGES.md
	$(PY) bench/images_vs_tf.py --output docs/BENCHMARKS_IMAGES.md
	$(PY) bench/vae_step_profile.py --output docs/BENCHMARKS_IMAGES.md
	$(PY) bench/vae_compile.py --output docs/BENCHMARKS_IMAGES.md
	$(PY) bench/gpu_steps.py --output docs/BENCHMARKS_GPU.md

results: $(STAMP)
	$(PY) bench/toy2d_results.py --steps 20000 --jobs 2 --output docs/RESULTS.md

## Train, evaluate and record rows of the results pages (hours per row; resumable: run it again after a kill).
## ROWS: DATASET/ROW of configs/images/ or toy2d/ROW of configs/toy2d/; RUNS: run folders (~/.cache/eim-runs).
ROWS ?= static_mnist/vae_gaussian_prior static_mnist/vae_snis_prior static_mnist/vae_trs_prior static_mnist/vae_lars_prior
STEPS ?= 50000
SEED ?= 0
reproduce: $(STAMP)
	$(PY) bench/reproduce.py $(ROWS) --steps $(STEPS) --seed $(SEED) $(if $(RUNS),--runs $(RUNS))
	$(PY) bench/mnist_results.py

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
