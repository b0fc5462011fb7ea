# The two commands of README.md: `make demo` and `make test`. Both create the host's venv on first use.
#   HOST=cpu (default): CPU builds of torch/fbgemm and faiss-cpu, in .venv
#   HOST=gpu:           CUDA 12 builds of torch/fbgemm and faiss-gpu, in .venv-gpu (never mixed with the CPU venv)
# torch comes from the PyTorch wheel index of the host (TORCH_INDEX_URL) when it is reachable; for HOST=cpu
# without it, pip takes what its configured indexes offer (a CUDA torch on plain PyPI: see README "Install").
PYTHON ?= python3
PYTHON_MIN ?= 3.11
HOST ?= cpu
ifeq ($(HOST),gpu)
  VENV ?= .venv-gpu
  OTHER_HOST := cpu
  TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cu128
  TORCH_PINS := torch==2.13.0 fbgemm-gpu==1.8.0
  TORCH_UNREACHABLE := echo "$$TORCH_INDEX_URL is not reachable: the CUDA 12 builds of torch and fbgemm-gpu that match \
    faiss-gpu are only there (plain PyPI has CUDA 13 torch). Set TORCH_INDEX_URL to a mirror of it." >&2; exit 1
else ifeq ($(HOST),cpu)
  VENV ?= .venv
  OTHER_HOST := gpu
  TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
  TORCH_PINS := torch==2.13.0
  TORCH_UNREACHABLE := echo "$$TORCH_INDEX_URL is not reachable: torch from pip's configured indexes instead \
    (on plain PyPI that is the CUDA build, about 3 GB more; see README Install)"
else
  $(error HOST=$(HOST): choose HOST=cpu or HOST=gpu)
endif
PIP := $(VENV)/bin/python -m pip
LOCK := requirements/$(HOST).txt
export WANDB_MODE ?= offline
export WANDB_DIR ?= $(CURDIR)/runs
export WANDB_CACHE_DIR ?= $(CURDIR)/runs/.wandb-cache

.PHONY: install test lint strip-notebooks demo bench bench-gpu tables tables-multi-interest tables-crossing tables-conditional tables-synergised clean

$(VENV)/.installed-$(HOST): pyproject.toml $(LOCK)
	@if [ -e $(VENV)/.installed-$(OTHER_HOST) ]; then \
	  echo "$(VENV) holds the HOST=$(OTHER_HOST) install; CPU and CUDA builds of torch/fbgemm/faiss must not share a venv." >&2; \
	  echo "Use the default venv of HOST=$(HOST) (leave VENV unset) or remove $(VENV)." >&2; exit 1; fi
	@$(PYTHON) -c "import sys; need = tuple(map(int, '$(PYTHON_MIN)'.split('.'))); v = sys.version_info[:2]; \
	  sys.exit(0 if v >= need else f'$(PYTHON) is Python {v[0]}.{v[1]}; lightning-retrieval needs Python >= $(PYTHON_MIN). ' \
	  'Install it (e.g. python.org, pyenv, uv python install $(PYTHON_MIN)) and run: make $(MAKECMDGOALS) PYTHON=python$(PYTHON_MIN)')"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch (and for HOST=gpu fbgemm-gpu) from the PyTorch index of this host, when it answers within 5 s
	@if $(VENV)/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=5)" \
	    "$(TORCH_INDEX_URL)" 2>/dev/null; then \
	  echo "torch from $(TORCH_INDEX_URL)"; $(PIP) install -q --index-url "$(TORCH_INDEX_URL)" $(TORCH_PINS); \
	else TORCH_INDEX_URL="$(TORCH_INDEX_URL)"; $(TORCH_UNREACHABLE); fi
	# everything else by exact pin; the native extra ([cpu] or [gpu]) names faiss and the fbgemm build
	$(PIP) install -q -c $(LOCK) -e '.[dev,$(HOST)]'
	# torchrec without its declared deps: they name the CUDA fbgemm-gpu and pin an old torchmetrics
	$(PIP) install -q -c $(LOCK) --no-deps torchrec==1.8.0
	$(VENV)/bin/python -c "import torch, torchrec, faiss, lightning; print('installed torch', torch.__version__, '| torchrec', torchrec.__version__, '| faiss', faiss.__version__, 'gpus', faiss.get_num_gpus(), '| lightning', lightning.__version__)"
	touch $@

install: $(VENV)/.installed-$(HOST)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# notebooks are committed without outputs (tests/test_notebooks.py checks it)
strip-notebooks: install
	$(VENV)/bin/python notebooks/strip_outputs.py

test: install lint
	$(VENV)/bin/python -m pytest -q

demo: install
	$(VENV)/bin/python -m lightning_retrieval.demo

PEERS_VENV ?= .venv-peers
CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu

# the peers run on the CPU: their torch from the PyTorch CPU index too when it is reachable
$(PEERS_VENV)/.installed: requirements/peers.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	@if $(PEERS_VENV)/bin/python -c "import urllib.request; urllib.request.urlopen('$(CPU_INDEX_URL)/torch/', timeout=5)" \
	    2>/dev/null; then $(PEERS_VENV)/bin/python -m pip install -q --index-url "$(CPU_INDEX_URL)" torch==2.13.0; fi
	$(PEERS_VENV)/bin/python -m pip install -q -r requirements/peers.txt
	touch $@

# the peer benchmarks (about 30 min on 2 CPU cores); results land in benchmarks/results/
bench: install $(PEERS_VENV)/.installed
	cd benchmarks && PEERS_PYTHON=$(CURDIR)/$(PEERS_VENV)/bin/python ../$(VENV)/bin/python peer_comparison.py
	cd benchmarks && ../$(VENV)/bin/python index_comparison.py
	cd benchmarks && ../$(VENV)/bin/python eval_throughput.py
	cd benchmarks && ../$(VENV)/bin/python hnsw_sweep.py
	cd benchmarks && ../$(VENV)/bin/python preclustering_speed.py
	$(VENV)/bin/python benchmarks/prepare_throughput.py

# training examples/s and evaluation users/s on the GPU when torch sees one (CPU numbers otherwise, and it says so)
bench-gpu: install
	cd benchmarks && ../$(VENV)/bin/python gpu_throughput.py

# The README's result tables with 95% intervals: every config fit + tested once per seed (runs/<name>/seed_N),
# paired with the reference model. One torch thread per run (OMP_NUM_THREADS=1): the committed tables were made so,
# and a different thread count changes float summation order (results move within noise, not bit for bit).
# Three seeds: about 1.5 hours on 2 CPU cores (tables-multi-interest first: the others reuse its two_tower runs).
# TABLES_ARGS goes to every fit and test, e.g.
#   make tables SEEDS="0 1" TABLES_DIR=/tmp/t TABLES_ARGS="--trainer.max_epochs=1 --trainer.limit_train_batches=2"
SEEDS ?= 0 1 2
TABLES_DIR ?= docs
TABLES_ARGS ?=
TABLES_ENV = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MULTI_INTEREST_CONFIGS ?= configs/two_tower.yaml configs/dcm.yaml configs/multihead_attention.yaml \
  configs/dynamic_routing.yaml configs/preclustering.yaml
CROSSING_CONFIGS ?= configs/masknet.yaml configs/dhen.yaml configs/transformer.yaml configs/dcnv2.yaml \
  configs/popularity.yaml
CONDITIONAL_CONFIGS ?= configs/conditional/index.yaml configs/conditional/lr.yaml configs/conditional/lr_filter.yaml \
  configs/conditional/cr.yaml configs/conditional/cr_filter.yaml
COMPARE = $(TABLES_ENV) $(VENV)/bin/python -m lightning_retrieval compare

tables: tables-multi-interest tables-crossing tables-conditional tables-synergised

tables-multi-interest: install
	$(COMPARE) $(MULTI_INTEREST_CONFIGS) --seeds $(SEEDS) --reference two_tower \
	  --output $(TABLES_DIR)/multi_interest_results.md -- $(TABLES_ARGS)

# the two-tower reference: the multi-interest table's runs, read back (same seeds)
tables-crossing: install
	$(COMPARE) $(CROSSING_CONFIGS) --runs runs/two_tower --seeds $(SEEDS) --reference two_tower \
	  --output $(TABLES_DIR)/crossing_results.md -- $(TABLES_ARGS)

tables-conditional: install
	$(COMPARE) $(CONDITIONAL_CONFIGS) --seeds $(SEEDS) --reference lr \
	  --output $(TABLES_DIR)/conditional_results.md -- $(TABLES_ARGS)

# synergised (implicit + explicit queries) against the two-tower and DCM runs of the multi-interest table
tables-synergised: install
	$(COMPARE) configs/conditional/synergised.yaml --runs runs/two_tower runs/dcm --seeds $(SEEDS) --reference two_tower \
	  --output $(TABLES_DIR)/synergised_results.md -- $(TABLES_ARGS)

clean:
	rm -rf runs lightning_logs wandb .pytest_cache
