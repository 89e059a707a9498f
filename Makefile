# The two set-up commands of the README: `make demo` (train a short GMP-DQN on Breakout) and `make test`.
# Each creates .venv and installs what it needs. Without an NVIDIA GPU it installs the CPU build of
# PyTorch (no CUDA wheels): from PyTorch's CPU index when it can be reached, else the pinned CPU release.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TRITON36_DIR ?= $(VENV)/triton-3.6

.PHONY: install demo test test-gpu bench pong-check gpu-wheels gpu-proof gpu-proof-dry-run gpu-tune gpu-image-rehearsal triton36 lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing PyTorch with CUDA"; \
		$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"; \
	elif $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
		echo "no GPU: installing the CPU build of PyTorch"; \
		$(BIN)/python -m pip install "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	else \
		echo "no GPU and no PyTorch CPU index: installing torch==$(TORCH_VERSION) from the configured indexes"; \
		$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $@

# Ray (about 70 MB) only for the tests: the Ray sweep test starts a local cluster (pip install 'prunerl[ray]').
$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[ray]"
	@touch $@

install: $(VENV)/.installed

demo: install  ## a few CPU minutes of GMP-DQN (Impala x1, 95% sparsity) on Breakout; writes runs/<name>/
	$(BIN)/python -m agents.train --preset demo

# The suite runs on TEST_WORKERS processes (pytest-xdist): CI's 2 cores take ~11 minutes instead of ~18.
# worksteal: a worker that runs out of tests takes pending ones from the other, so the end of the run is not one
# worker finishing a long queue of slow tests alone.
TEST_WORKERS ?= 2
test: install $(VENV)/.installed-ray  ## the CPU test suite (Triton kernels run under TRITON_INTERPRET=1)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test-gpu: install  ## GPU-only tests (needs CUDA)
	$(BIN)/python -m pytest -m gpu

bench: install  ## the kernel bench suite (needs CUDA); JSON lands in bench/results/
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make bench needs a CUDA GPU (every benchmark would be skipped); on a CPU: PRUNERL_BENCH_SUBSET=rehearsal pytest bench/bench_kernels.py, or make gpu-proof-dry-run')"
	$(BIN)/python -m pytest bench/ --benchmark-enable --benchmark-json=bench/results/$$(date +%Y%m%d-%H%M%S).json

pong-check: install  ## the learning check: DQN-Impala x1 on Pong for 8 minutes (meant for a GPU)
	$(BIN)/python bench/pong_check.py --minutes 8

gpu-wheels:  ## download into .whl/ the wheels the GPU machine lacks (cp312, x86-64; fails above 60 MiB)
	$(PYTHON) bench/gpu_wheels.py

gpu-proof:  ## on the GPU machine (its python3, no .venv): every GPU claim measured in 9 minutes (bench/README.md)
	$(PYTHON) bench/gpu_proof.py $(PROOF_ARGS)

gpu-tune:  ## on the GPU machine (its python3): the kernels' launch knobs, one at a time (150 s budget)
	$(PYTHON) bench/tune_kernels.py $(TUNE_ARGS)

gpu-proof-dry-run: install  ## the GPU proof rehearsed on the CPU: every step, tiny sizes, 340 s budget
	$(BIN)/python bench/gpu_proof.py --dry-run $(PROOF_ARGS)

# The dry run on the GPU image's versions (Python 3.12, torch 2.11.0, triton 3.6.0) with the carried wheels
# installed as the proof installs them: catches what the CI versions hide. torch 2.11 from PyPI is a CUDA build
# (~5 GB in $(GPU_IMAGE_VENV)); it runs on the CPU.
GPU_IMAGE_PYTHON ?= python3.12
GPU_IMAGE_VENV ?= .venv-gpu-image
gpu-image-rehearsal:  ## the dry runs of the GPU proof and the knob sweep on the GPU machine's Python, torch, triton
	@ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run make gpu-wheels first"; exit 2; }
	test -x $(GPU_IMAGE_VENV)/bin/python || $(GPU_IMAGE_PYTHON) -m venv $(GPU_IMAGE_VENV)
	$(GPU_IMAGE_VENV)/bin/python -m pip install -q "torch==2.11.0" "triton==3.6.0" numpy matplotlib tqdm \
		tensorboard cloudpickle pytest pytest-benchmark hypothesis scipy
	rm -rf $(GPU_IMAGE_VENV)/carried
	$(GPU_IMAGE_VENV)/bin/python bench/gpu_wheels.py --install-into $(GPU_IMAGE_VENV)/carried
	PYTHONPATH=$(GPU_IMAGE_VENV)/carried $(GPU_IMAGE_VENV)/bin/python bench/gpu_proof.py --dry-run $(PROOF_ARGS)
	$(GPU_IMAGE_VENV)/bin/python bench/tune_kernels.py --dry-run  # torch and triton only, as it runs there

# triton 3.6.0 (the GPU image's version) in a folder of its own, for tests/kernels/test_gpu_compile_triton36.py.
$(TRITON36_DIR)/.installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps --target $(TRITON36_DIR) "triton==3.6.0"
	@touch $@

triton36: $(TRITON36_DIR)/.installed

lint: install
	$(BIN)/ruff check agents kernels bench tests

clean:
	rm -rf $(VENV) .pytest_cache
