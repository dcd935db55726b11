# Downstream evaluation: committed downstream.json files -> table and summary -> figures,
# tables and numbers. `make all` only reads the committed result files. Evaluating
# checkpoints is `make eval-micro` (CPU-heavy, never part of `make all`).

DOWNSTREAM_RESULTS := $(sort $(wildcard data/runs/micro/*/downstream.json))
DOWNSTREAM_CSV := data/derived/downstream-micro.csv
DOWNSTREAM_JSON := data/derived/downstream-micro.json
DOWNSTREAM_FIGS := figures/downstream_compute.pdf figures/downstream_val_loss.pdf figures/downstream_macro.pdf
DOWNSTREAM_TABLES := paper/generated/tables/downstream_settings.tex paper/generated/tables/downstream_per_task.tex
DOWNSTREAM_NUMBERS := paper/generated/downstream_numbers.tex
DOWNSTREAM_CODE := code/isodepth/evaluate/collect.py code/isodepth/evaluate/sweep.py \
	code/isodepth/evaluate/results.py code/isodepth/evaluate/sources.py
EVAL_LIMIT ?= 500

.PHONY: eval-micro

# The record files are inputs too: a result is checked against its run's validation loss.
$(DOWNSTREAM_CSV) $(DOWNSTREAM_JSON) &: $(DOWNSTREAM_RESULTS) $(RUN_RECORDS) $(DOWNSTREAM_CODE) \
		data/grids/micro.yaml | $(STAMPS)/venv
	@mkdir -p $(dir $(DOWNSTREAM_CSV))
	$(ISODEPTH) eval collect micro --csv $(DOWNSTREAM_CSV) --summary $(DOWNSTREAM_JSON)

$(DOWNSTREAM_FIGS) $(DOWNSTREAM_TABLES) $(DOWNSTREAM_NUMBERS) &: notebooks/downstream.ipynb $(DOWNSTREAM_JSON) \
		data/reference/published.json code/isodepth/style.py code/isodepth/report.py | $(STAMPS)/venv
	@mkdir -p figures paper/generated/tables
	$(NOTEBOOK) notebooks/downstream.ipynb -p summary_json $(DOWNSTREAM_JSON) -p published_json data/reference/published.json \
	  -p figure11_pdf figures/downstream_compute.pdf -p figure12_pdf figures/downstream_val_loss.pdf \
	  -p figure13_pdf figures/downstream_macro.pdf \
	  -p settings_tex paper/generated/tables/downstream_settings.tex \
	  -p per_task_tex paper/generated/tables/downstream_per_task.tex -p numbers_tex $(DOWNSTREAM_NUMBERS) \
	  $(foreach f,$(DOWNSTREAM_FIGS) $(DOWNSTREAM_TABLES) $(DOWNSTREAM_NUMBERS),-o $(f))

# Evaluate every finished micro run without a complete downstream.json (one CPU thread;
# about 25 s per checkpoint at 500 examples per task). Needs checkpoints/micro/*/final.
eval-micro: $(STAMPS)/venv
	OMP_NUM_THREADS=1 $(ISODEPTH) eval grid micro --tasks offline --limit $(EVAL_LIMIT) --threads 1

PAPER_INPUTS += $(DOWNSTREAM_FIGS) $(DOWNSTREAM_TABLES) $(DOWNSTREAM_NUMBERS) paper/sections/downstream.tex
GENERATED += $(DOWNSTREAM_CSV) $(DOWNSTREAM_JSON) $(DOWNSTREAM_FIGS) $(DOWNSTREAM_TABLES) $(DOWNSTREAM_NUMBERS)
