# The two commands of README.md: `make demo` and `make test`. Both create .venv on first use.
# HOST=cpu (default) installs CPU builds; HOST=gpu installs the CUDA builds of torch/fbgemm and faiss-gpu.
PYTHON ?= python3
HOST ?= cpu
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
LOCK := requirements/$(HOST).txt
ifeq ($(HOST),gpu)
  NATIVE := torch==2.13.0 fbgemm-gpu==1.8.0 faiss-gpu==1.15.1
else
  NATIVE := torch==2.13.0 fbgemm-gpu-cpu==1.8.0 faiss-cpu==1.15.1
endif
export WANDB_MODE ?= offline
export WANDB_DIR ?= $(CURDIR)/runs
export WANDB_CACHE_DIR ?= $(CURDIR)/runs/.wandb-cache

.PHONY: install test demo bench clean

$(VENV)/.installed-$(HOST): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch, fbgemm and faiss by exact pin (a range would pull a multi-GB CUDA torch on a CPU host)
	$(PIP) install -q -c $(LOCK) $(NATIVE) tensordict tqdm pyre-extensions -e '.[dev]'
	# torchrec without its declared deps: they name the CUDA fbgemm-gpu and pin an old torchmetrics
	$(PIP) install -q -c $(LOCK) --no-deps torchrec==1.8.0
	$(VENV)/bin/python -c "import torch, torchrec, faiss, lightning; print('installed torch', torch.__version__, '| torchrec', torchrec.__version__, '| faiss', faiss.__version__, 'gpus', faiss.get_num_gpus(), '| lightning', lightning.__version__)"
	touch $@

install: $(VENV)/.installed-$(HOST)

test: install
	$(VENV)/bin/python -m pytest -q

demo: install
	$(VENV)/bin/python -m lightning_retrieval.demo

PEERS_VENV ?= .venv-peers

$(PEERS_VENV)/.installed: requirements/peers.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -r requirements/peers.txt
	touch $@

# the peer benchmarks (about 30 min on 2 CPU cores); results land in benchmarks/results/
bench: install $(PEERS_VENV)/.installed
	cd benchmarks && PEERS_PYTHON=$(CURDIR)/$(PEERS_VENV)/bin/python ../$(VENV)/bin/python peer_comparison.py
	cd benchmarks && ../$(VENV)/bin/python index_comparison.py
	$(VENV)/bin/python benchmarks/eval_throughput.py --users 20000
	$(VENV)/bin/python benchmarks/prepare_throughput.py

clean:
	rm -rf runs lightning_logs wandb .pytest_cache
