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

.PHONY: install test lint strip-notebooks demo bench bench-gpu tables tables-multi-interest tables-crossing tables-crossing-synthetic tables-conditional tables-synergised tables-remi tables-synthetic-interests synthetic-regime tables-multi-interest-users dcm-gap clean

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
	cd benchmarks && PEERS_PYTHON=$(CURDIR)/$(PEERS_VENV)/bin/python ../$(VENV)/bin/python training_throughput.py --rounds 5
	cd benchmarks && ../$(VENV)/bin/python training_step_parts.py
	cd benchmarks && ../$(VENV)/bin/python index_comparison.py
	cd benchmarks && ../$(VENV)/bin/python eval_throughput.py
	cd benchmarks && ../$(VENV)/bin/python hnsw_sweep.py --items 1000000 --queries 2000 --ef 100,128 --build-threads 2 --name hnsw_target
	cd benchmarks && ../$(VENV)/bin/python preclustering_speed.py --batches 6 --threads 1
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
MULTI_INTEREST_MODELS ?= two_tower dcm dcm_k7 multihead_attention dynamic_routing preclustering
MULTI_INTEREST_CONFIGS ?= $(MULTI_INTEREST_MODELS:%=configs/%.yaml)
CROSSING_CONFIGS ?= configs/mlp_features.yaml configs/masknet.yaml configs/dhen.yaml configs/transformer.yaml \
  configs/dcnv2.yaml configs/popularity.yaml
CONDITIONAL_CONFIGS ?= configs/conditional/index.yaml configs/conditional/lr.yaml configs/conditional/lr_filter.yaml \
  configs/conditional/cr.yaml configs/conditional/cr_filter.yaml
COMPARE = $(TABLES_ENV) $(VENV)/bin/python -m lightning_retrieval compare

tables: tables-multi-interest tables-crossing tables-conditional tables-synergised

tables-multi-interest: install
	$(COMPARE) $(MULTI_INTEREST_CONFIGS) --seeds $(SEEDS) --reference two_tower \
	  --output $(TABLES_DIR)/multi_interest_results.md -- $(TABLES_ARGS)

# $(call fit_missing_seeds,CONFIGS,ARGS): fit + test (compare, with the fit/test arguments ARGS) each config once per
# seed of $(SEEDS) whose run directory runs/<config stem>/seed_N holds no test result card yet. Finished runs are kept
# (delete runs/<stem>/seed_N to fit it again), so a table target re-assembles from its runs without re-training.
define fit_missing_seeds
for c in $(1); do for s in $(SEEDS); do ls runs/$$(basename $$c .yaml)/seed_$$s/csv/*/result_card_test.json \
  >/dev/null 2>&1 || $(COMPARE) $$c --seeds $$s -- $(2) || exit 1; done; done
endef

# the same models under the user split (configs/user_split/: ComiRec's 8:1:1 held-out users), runs/<name>_users/:
# the seeds not yet run are fit, then the table is read from runs/<name>_users/seed_N
MULTI_INTEREST_USERS_CONFIGS = $(MULTI_INTEREST_MODELS:%=configs/user_split/%_users.yaml)
tables-multi-interest-users: install
	$(call fit_missing_seeds,$(MULTI_INTEREST_USERS_CONFIGS),$(TABLES_ARGS))
	$(COMPARE) --runs $(MULTI_INTEREST_MODELS:%=runs/%_users) --seeds $(SEEDS) --reference two_tower_users \
	  --output $(TABLES_DIR)/multi_interest_results_users.md

# where DCM's recall goes (docs/dcm_gap.md): per-slot, union-of-lists and merged recall of the multi-interest table's
# runs, then the one-seed variants (runs/dcm_gap/NAME/seed_0), each trained once and measured
DCM_GAP = $(TABLES_ENV) $(VENV)/bin/python benchmarks/dcm_gap.py
QUERIES_ARG = --model.init_args.queries.init_args
dcm-gap: install
	$(DCM_GAP) two_tower --config configs/two_tower.yaml --runs $(SEEDS:%=runs/two_tower/seed_%)
	$(DCM_GAP) multihead_attention --config configs/multihead_attention.yaml --runs $(SEEDS:%=runs/multihead_attention/seed_%)
	$(DCM_GAP) dynamic_routing --config configs/dynamic_routing.yaml --runs $(SEEDS:%=runs/dynamic_routing/seed_%)
	$(DCM_GAP) dcm_k4_keep --config configs/dcm.yaml --runs $(SEEDS:%=runs/dcm/seed_%)
	$(DCM_GAP) dcm_k4_replace --config configs/dcm.yaml --fit $(SEEDS) -- $(QUERIES_ARG).history_field=replace
	$(DCM_GAP) dcm_k7 --config configs/dcm_k7.yaml --fit 0
	$(DCM_GAP) dcm_k4_keep_soft --config configs/dcm.yaml --fit 0 -- $(QUERIES_ARG).selection=soft \
	  $(QUERIES_ARG).selection_power=20

# crossing blocks on the item side features (base/data_features.yaml) against the plain MLP on the same features
# (mlp_features: only the crossing differs); the IDs-only two-tower is the multi-interest table's runs, read back.
# 15 fits + 18 tests: roughly 20 min on an idle 2-core machine (from single-run fit times), 2-3 h when other
# training jobs share it.
tables-crossing: install
	$(COMPARE) $(CROSSING_CONFIGS) --runs runs/two_tower --seeds $(SEEDS) --reference mlp_features \
	  --output $(TABLES_DIR)/crossing_results.md -- $(TABLES_ARGS)

# crossing blocks vs the MLP on synthetic_crosses (docs/crossing_synthetic_results.md) at cross_strength 1, 0.5 and
# 0; the controls at 1 (wide MLP, IDs-only MLP) read the MLP and MaskNet runs back; the exact-loss diagnostics
# (benchmarks/crossing_diagnostics.py); sparse histories (3000 users x 4 interactions, cross_strength 1); the oracle
# and random reference points (benchmarks/crossing_oracle.py)
CROSS_SYN = configs/crossing_synthetic
CROSS_SYN_BLOCKS = mlp masknet dhen transformer dcnv2
tables-crossing-synthetic: install
	$(COMPARE) $(foreach b,$(CROSS_SYN_BLOCKS) dhen_branch_norm,$(CROSS_SYN)/$(b)_cross1.yaml) --seeds $(SEEDS) \
	  --reference mlp_cross1 --output $(TABLES_DIR)/crossing_synthetic/cross1.md -- $(TABLES_ARGS)
	$(COMPARE) $(CROSS_SYN)/mlp_wide_cross1.yaml $(CROSS_SYN)/mlp_ids_cross1.yaml --runs runs/mlp_cross1 \
	  runs/masknet_cross1 --seeds $(SEEDS) --reference mlp_cross1 --output $(TABLES_DIR)/crossing_synthetic/controls.md \
	  -- $(TABLES_ARGS)
	$(COMPARE) $(foreach b,$(CROSS_SYN_BLOCKS),$(CROSS_SYN)/$(b)_cross05.yaml) --seeds $(SEEDS) \
	  --reference mlp_cross05 --output $(TABLES_DIR)/crossing_synthetic/cross05.md -- $(TABLES_ARGS)
	$(COMPARE) $(foreach b,$(CROSS_SYN_BLOCKS),$(CROSS_SYN)/$(b)_cross0.yaml) --seeds $(SEEDS) \
	  --reference mlp_cross0 --output $(TABLES_DIR)/crossing_synthetic/cross0.md -- $(TABLES_ARGS)
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/crossing_diagnostics.py --seeds $(SEEDS) \
	  > $(TABLES_DIR)/crossing_synthetic/diagnostics.jsonl
	$(COMPARE) $(foreach b,$(CROSS_SYN_BLOCKS) mlp_ids,$(CROSS_SYN)/$(b)_sparse_cross1.yaml) --seeds $(SEEDS) \
	  --reference mlp_sparse_cross1 --output $(TABLES_DIR)/crossing_synthetic/sparse_cross1.md -- $(TABLES_ARGS)
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/crossing_oracle.py > $(TABLES_DIR)/crossing_synthetic/reference_points.jsonl
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/crossing_oracle.py --cross-strength 1 --num-users 3000 \
	  --interactions-per-user 4 >> $(TABLES_DIR)/crossing_synthetic/reference_points.jsonl

tables-conditional: install
	$(COMPARE) $(CONDITIONAL_CONFIGS) --seeds $(SEEDS) --reference lr \
	  --output $(TABLES_DIR)/conditional_results.md -- $(TABLES_ARGS)

# synergised (implicit + explicit queries) against the two-tower and DCM runs of the multi-interest table
tables-synergised: install
	$(COMPARE) configs/conditional/synergised.yaml --runs runs/two_tower runs/dcm --seeds $(SEEDS) --reference two_tower \
	  --output $(TABLES_DIR)/synergised_results.md -- $(TABLES_ARGS)

# REMI's training fixes on and off (docs/remi_results.md): each interest model plain (the reference), with routing
# regularisation (_rr) and with interest-aware hard negatives (_ihn), paired on the same users.
#   - a short schedule (REMI_ARGS: 100 training steps, one epoch; runs/remi_*): 18 runs in about 25 min of one core;
#   - the committed trainer's full budget (8 epochs; configs/remi/*_full.yaml, runs/remi_*_full): 5-7 min a run.
# Seeds already run are kept (fit_missing_seeds). Then the routing of the runs (benchmarks/results/remi_routing*.md).
REMI_ARGS ?= --trainer.max_epochs=1 --trainer.limit_train_batches=100
REMI_DCM = remi_dcm remi_dcm_rr remi_dcm_ihn
REMI_SA = remi_sa remi_sa_rr remi_sa_ihn
tables-remi: install
	$(call fit_missing_seeds,$(REMI_DCM:%=configs/remi/%.yaml) $(REMI_SA:%=configs/remi/%.yaml),\
	  $(REMI_ARGS) $(TABLES_ARGS))
	$(COMPARE) --runs $(REMI_DCM:%=runs/%) --seeds $(SEEDS) --reference remi_dcm \
	  --output $(TABLES_DIR)/remi_results_dcm.md
	$(COMPARE) --runs $(REMI_SA:%=runs/%) --seeds $(SEEDS) --reference remi_sa --output $(TABLES_DIR)/remi_results_sa.md
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/remi_routing.py $(REMI_DCM:%=configs/remi/%.yaml) \
	  $(REMI_SA:%=configs/remi/%.yaml) --seeds $(SEEDS)
	$(call fit_missing_seeds,$(REMI_DCM:%=configs/remi/%_full.yaml) $(REMI_SA:%=configs/remi/%_full.yaml),$(TABLES_ARGS))
	$(COMPARE) --runs $(REMI_DCM:%=runs/%_full) --seeds $(SEEDS) --reference remi_dcm_full \
	  --output $(TABLES_DIR)/remi_results_dcm_full.md
	$(COMPARE) --runs $(REMI_SA:%=runs/%_full) --seeds $(SEEDS) --reference remi_sa_full \
	  --output $(TABLES_DIR)/remi_results_sa_full.md
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/remi_routing.py $(REMI_DCM:%=configs/remi/%.yaml) \
	  --runs $(REMI_DCM:%=runs/%_full) --seeds $(SEEDS) --name remi_routing_dcm_full
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/remi_routing.py $(REMI_SA:%=configs/remi/%.yaml) \
	  --runs $(REMI_SA:%=runs/%_full) --seeds $(SEEDS) --name remi_routing_sa_full

# The synthetic multi-interest benchmark (docs/synthetic_interests_results*.md): the two-tower and the interest modules
# on configs/synthetic_interests/ under leave_last_out, then under the user split (seeds already run are kept:
# fit_missing_seeds; the tables are read from runs/ with compare --runs); then recall@50 by number of interests per
# model with intervals, paired tests, the share of the two-tower's drop closed, the curve's plot and the diagnostics.
# dcm_items is DCM as fixed by issue 12 (history_space: items, centroid_scale: unit, history_field: keep);
# multihead_attention_items is self-attention over the same item-tower history (history_space: items).
# $(call test_with_routing_mass,PREFIX,MODEL): test runs/PREFIX_MODEL/seed_N's newest epoch checkpoint (no re-training)
# with configs/synthetic_interests/PREFIX_MODEL_mass.yaml (the routing-mass serving budget), into
# runs/PREFIX_MODEL_mass/seed_N, for the seeds not tested yet
define test_with_routing_mass
for s in $(SEEDS); do ls runs/$(1)_$(2)_mass/seed_$$s/csv/*/result_card_test.json >/dev/null 2>&1 || \
  $(TABLES_ENV) $(VENV)/bin/python -m lightning_retrieval test \
  --config configs/synthetic_interests/$(1)_$(2)_mass.yaml --seed_everything=$$s \
  --ckpt_path $$(ls -t runs/$(1)_$(2)/seed_$$s/checkpoints/epoch=*.ckpt | head -1) \
  --trainer.default_root_dir=runs/$(1)_$(2)_mass/seed_$$s --trainer.enable_progress_bar=false $(TABLES_ARGS) \
  || exit 1; done
endef
SYNTHETIC_MODELS = two_tower dcm dcm_items multihead_attention multihead_attention_items dynamic_routing preclustering
SYNTHETIC_USERS_MODELS ?= two_tower dcm dcm_items multihead_attention multihead_attention_items dynamic_routing \
  preclustering
SYNTHETIC_MASS = dcm dcm_items  # DCM rows also served with the routing-mass budget (runs/*_mass)
tables-synthetic-interests: install
	$(call fit_missing_seeds,$(SYNTHETIC_MODELS:%=configs/synthetic_interests/synthetic_%.yaml),$(TABLES_ARGS))
	$(foreach m,$(SYNTHETIC_MASS),$(call test_with_routing_mass,synthetic,$(m)) &&) true
	$(COMPARE) --runs $(SYNTHETIC_MODELS:%=runs/synthetic_%) $(SYNTHETIC_MASS:%=runs/synthetic_%_mass) --seeds $(SEEDS) \
	  --reference synthetic_two_tower --output $(TABLES_DIR)/synthetic_interests_results.md
	$(call fit_missing_seeds,$(SYNTHETIC_USERS_MODELS:%=configs/synthetic_interests/synthetic_users_%.yaml),$(TABLES_ARGS))
	$(foreach m,$(SYNTHETIC_MASS),$(call test_with_routing_mass,synthetic_users,$(m)) &&) true
	$(COMPARE) --runs $(SYNTHETIC_USERS_MODELS:%=runs/synthetic_users_%) $(SYNTHETIC_MASS:%=runs/synthetic_users_%_mass) \
	  --seeds $(SEEDS) --reference synthetic_users_two_tower --output $(TABLES_DIR)/synthetic_interests_results_users.md
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/synthetic_interests_curve.py --seeds $(SEEDS) --output-dir $(TABLES_DIR)
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/synthetic_interests_diagnostics.py --seed $(firstword $(SEEDS)) \
	  --output $(TABLES_DIR)/synthetic_interests_diagnostics.md

# how the synthetic benchmark's regime was chosen (docs/synthetic_interests_regime.md): the two-tower, one seed, a short
# budget, over a few data settings
synthetic-regime: install
	$(TABLES_ENV) $(VENV)/bin/python benchmarks/synthetic_regime.py --output docs/synthetic_interests_regime.md

clean:
	rm -rf runs lightning_logs wandb .pytest_cache
