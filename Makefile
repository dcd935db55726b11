# isodepth: `make all` rebuilds paper/paper.pdf from the committed run records;
# `make test` runs the test suite. Both set up what they need first.

SHELL := /bin/bash
.DELETE_ON_ERROR:

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ISODEPTH := $(VENV)/bin/isodepth
STAMPS := .stamps
GRID ?= micro
WORKERS ?= 2
# Split of the parameters into N_once and N_rec for every joint fit (literal or least-squares).
CONVENTION ?= literal

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

TEX_PACKAGES := latexmk texlive-latex-base texlive-latex-recommended texlive-latex-extra \
	texlive-science texlive-fonts-recommended poppler-utils

RUN_RECORDS := $(sort $(wildcard data/runs/micro/*/record.json))
LR_RECORDS := $(sort $(wildcard data/runs/micro-lr/*/record.json))
RUNS_CSV := data/derived/runs.csv
LR_CSV := data/derived/runs-micro-lr.csv
LR_FIG := figures/lr_sweep.pdf
LR_NUMBERS := paper/generated/lr_numbers.tex
JOINT_JSON := data/derived/fits/joint.json
NUMBERS := paper/generated/numbers.tex
ISOFLOPS_FIG := figures/isoflops.pdf
JOINT_TABLE := paper/generated/tables/joint_fit.tex
CO_FIGS := figures/compute_optimal_loss.pdf figures/allocation.pdf
FIT_TABLES := paper/generated/tables/per_r_fits.tex paper/generated/tables/residuals.tex \
	paper/generated/tables/headline.tex
NOTEBOOK := $(PY) -m isodepth.notebooks

.PHONY: all setup test runs sweep plan download bench-fit bench-train bench-loss gpu-check clean distclean help

all: paper/paper.pdf

help:
	@echo "make all           rebuild paper/paper.pdf from the committed run records (never trains)"
	@echo "make test          run the test suite"
	@echo "make runs GRID=g   train the unfinished runs of data/grids/g.yaml (default micro)"
	@echo "make plan GRID=g   print the runs of a grid with their accounting"
	@echo "make download      fetch and verify released artifacts (KIND=run-records|checkpoint|data-shard|eval-results, RUN=run_id)"
	@echo "make eval-micro    evaluate the finished micro checkpoints downstream (EVAL_LIMIT=500 examples per task)"
	@echo "make setup         build .venv and check for LaTeX"
	@echo "make bench-fit     time the joint fit and its bootstrap against a plain scipy fit"
	@echo "make bench-train   training throughput as a fraction of dense-matmul throughput (or MFU on GPU)"
	@echo "make bench-loss    the fused output projection + soft-cap + cross-entropy against the plain ops"
	@echo "make gpu-check     bf16 training, torchrun and bench-train on a CUDA machine (under 8 minutes)"
	@echo "make clean         delete generated tables, figures and the PDF"

# ---- setup -------------------------------------------------------------------------------

setup: $(STAMPS)/venv $(STAMPS)/tex

$(STAMPS)/venv: requirements.txt code/pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e code
	$(PY) -m ipykernel install --sys-prefix --name isodepth --display-name "isodepth (.venv)" >/dev/null
	touch $@

$(STAMPS)/tex:
	@mkdir -p $(STAMPS)
	@if ! command -v latexmk >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "latexmk not found: installing TeX Live with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); \
	  else \
	    echo "latexmk not found. Install TeX Live, then rerun make:"; \
	    echo "  sudo apt-get install --no-install-recommends $(TEX_PACKAGES)"; \
	    exit 1; \
	  fi; \
	fi
	touch $@

# ---- training (never part of `make all`) ------------------------------------------------

runs sweep: $(STAMPS)/venv
	$(ISODEPTH) sweep $(GRID) --workers $(WORKERS)

plan: $(STAMPS)/venv
	$(ISODEPTH) plan $(GRID)

# Released artifacts listed in data/manifest.json, verified by sha256
# (KIND=run-records|checkpoint|data-shard|eval-results, RUN=a run id of a released checkpoint).
download: $(STAMPS)/venv
	HF_HUB_OFFLINE=0 $(ISODEPTH) download $(if $(KIND),--kind $(KIND)) $(if $(RUN),--run $(RUN))

# ---- analysis: run records -> table -> fits -> figures, tables and numbers --------------

$(RUNS_CSV): $(RUN_RECORDS) code/isodepth/collect.py | $(STAMPS)/venv
	$(ISODEPTH) collect micro --out $@

$(LR_CSV): $(LR_RECORDS) code/isodepth/collect.py | $(STAMPS)/venv
	$(ISODEPTH) collect micro-lr --out $@

$(LR_FIG) $(LR_NUMBERS) &: notebooks/lr_sweep.ipynb $(LR_CSV) data/grids/micro.yaml code/isodepth/lr_analysis.py code/isodepth/style.py | $(STAMPS)/venv
	@mkdir -p $(dir $(LR_FIG)) $(dir $(LR_NUMBERS))
	$(NOTEBOOK) notebooks/lr_sweep.ipynb -p runs_csv $(LR_CSV) -p figure_pdf $(LR_FIG) \
	  -p numbers_tex $(LR_NUMBERS) -o $(LR_FIG) -o $(LR_NUMBERS)

FIT_CODE := $(wildcard code/isodepth/fit/*.py) code/isodepth/paper_numbers.py code/isodepth/report.py

$(JOINT_JSON) $(NUMBERS) &: notebooks/fit.ipynb $(RUNS_CSV) $(FIT_CODE) data/grids/micro.yaml data/grids/paper.yaml | $(STAMPS)/venv
	@mkdir -p $(dir $(JOINT_JSON)) $(dir $(NUMBERS))
	$(NOTEBOOK) notebooks/fit.ipynb -p runs_csv $(RUNS_CSV) -p joint_json $(JOINT_JSON) \
	  -p numbers_tex $(NUMBERS) -p convention $(CONVENTION) -o $(JOINT_JSON) -o $(NUMBERS)

$(ISOFLOPS_FIG) $(JOINT_TABLE) &: notebooks/isoflops.ipynb $(RUNS_CSV) $(JOINT_JSON) code/isodepth/style.py | $(STAMPS)/venv
	@mkdir -p $(dir $(ISOFLOPS_FIG)) $(dir $(JOINT_TABLE))
	$(NOTEBOOK) notebooks/isoflops.ipynb -p runs_csv $(RUNS_CSV) -p joint_json $(JOINT_JSON) \
	  -p figure_pdf $(ISOFLOPS_FIG) -p table_tex $(JOINT_TABLE) -o $(ISOFLOPS_FIG) -o $(JOINT_TABLE)

$(CO_FIGS) &: notebooks/compute_optimal.ipynb $(JOINT_JSON) data/grids/micro.yaml code/isodepth/style.py | $(STAMPS)/venv
	@mkdir -p figures
	$(NOTEBOOK) notebooks/compute_optimal.ipynb -p joint_json $(JOINT_JSON) \
	  -p figure1_pdf figures/compute_optimal_loss.pdf -p figure3_pdf figures/allocation.pdf \
	  $(foreach f,$(CO_FIGS),-o $(f))

$(FIT_TABLES) &: notebooks/tables.ipynb $(JOINT_JSON) data/grids/paper.yaml | $(STAMPS)/venv
	@mkdir -p paper/generated/tables
	$(NOTEBOOK) notebooks/tables.ipynb -p joint_json $(JOINT_JSON) \
	  -p per_r_tex paper/generated/tables/per_r_fits.tex -p residuals_tex paper/generated/tables/residuals.tex \
	  -p headline_tex paper/generated/tables/headline.tex $(foreach t,$(FIT_TABLES),-o $(t))

# ---- one fragment per topic: each adds its rules, PAPER_INPUTS and GENERATED ------------

PAPER_INPUTS := paper/paper.tex paper/references.bib $(NUMBERS) $(JOINT_TABLE) $(ISOFLOPS_FIG) \
	$(LR_FIG) $(LR_NUMBERS) $(FIT_TABLES) $(CO_FIGS)
GENERATED :=
include $(sort $(wildcard make/*.mk))

# ---- paper ------------------------------------------------------------------------------

paper/paper.pdf: $(PAPER_INPUTS) | $(STAMPS)/tex
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -file-line-error -quiet paper.tex
	@if grep -qE "There were undefined (references|citations)|Citation .* undefined|Reference .* undefined" paper/paper.log; then \
	  echo "paper/paper.log reports undefined references:"; grep -E "undefined" paper/paper.log; rm -f $@; exit 1; fi
	@touch $@

# ---- benchmarks (print figures; never part of `make test`) ------------------------------

bench-fit: $(STAMPS)/venv
	$(PY) code/benchmarks/bench_fit.py

# One torch thread on CPU, as each run of a CPU sweep trains; BENCH_DEVICE=cuda on a GPU.
BENCH_DEVICE ?= cpu
bench-train: $(STAMPS)/venv
	OMP_NUM_THREADS=1 $(PY) code/benchmarks/bench_train.py --device $(BENCH_DEVICE) --threads 1 --loss both

# The GPU path in one pass (bf16 runs, torchrun, the multi-gpu launcher, bench-train); needs CUDA.
gpu-check: $(STAMPS)/venv
	PY=$(PY) code/benchmarks/gpu_check.sh logs/gpu-check

bench-loss: $(STAMPS)/venv
	$(PY) code/benchmarks/bench_loss.py

# ---- tests ------------------------------------------------------------------------------

test: $(STAMPS)/venv $(STAMPS)/tex
	cd code && ../$(PY) -m pytest -q

clean:
	rm -rf data/derived/runs.csv data/derived/runs-micro-lr.csv data/derived/fits paper/generated \
	  figures/*.pdf notebooks/executed $(GENERATED)
	cd paper && latexmk -C -quiet paper.tex 2>/dev/null || true

distclean: clean
	rm -rf $(VENV) $(STAMPS) data/derived
