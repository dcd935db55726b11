# Case studies on the micro scale (truncated BPTT, hyperconnections, injection ablation):
# collect each grid with the runs it reuses, refit on the four lower budgets, then draw.
# A grid still in training collects what exists; the outputs say what is not trained yet.

CASE_GRIDS := micro-tbptt micro-hyper micro-ablation
CASE_CSV = data/derived/runs-$(1).csv
CASE_COVERAGE = data/derived/runs-$(1).coverage.json
# The records a case-study table reads: its own and those of every grid it reuses from.
CASE_RECORDS_micro-tbptt := $(sort $(wildcard data/runs/micro-tbptt/*/record.json)) $(RUN_RECORDS)
CASE_RECORDS_micro-hyper := $(sort $(wildcard data/runs/micro-hyper/*/record.json)) $(RUN_RECORDS)
CASE_RECORDS_micro-ablation := $(sort $(wildcard data/runs/micro-ablation/*/record.json)) $(RUN_RECORDS) \
	$(sort $(wildcard data/runs/micro-hyper/*/record.json))
# The grid specs a collection plans from: its own and those of the grids it reuses from.
CASE_SPECS_micro-tbptt := data/grids/micro-tbptt.yaml data/grids/micro.yaml
CASE_SPECS_micro-hyper := data/grids/micro-hyper.yaml data/grids/micro.yaml
CASE_SPECS_micro-ablation := data/grids/micro-ablation.yaml data/grids/micro.yaml data/grids/micro-hyper.yaml
CASE_COLLECT_CODE := code/isodepth/collect.py code/isodepth/grids.py
CASE_JSON := data/derived/fits/case_studies.json
CASE_FIGS := figures/case_studies_isoflops.pdf figures/case_studies_fit.pdf
CASE_TABLES := paper/generated/tables/case_studies.tex paper/generated/tables/ablation.tex
CASE_NUMBERS := paper/generated/case_numbers.tex
CASE_TABLE_INPUTS := $(foreach g,$(CASE_GRIDS),$(call CASE_CSV,$(g)) $(call CASE_COVERAGE,$(g)))

define CASE_COLLECT_RULE
$(call CASE_CSV,$(1)) $(call CASE_COVERAGE,$(1)) &: $$(CASE_RECORDS_$(1)) $$(CASE_SPECS_$(1)) \
		$(CASE_COLLECT_CODE) | $(STAMPS)/venv
	$(ISODEPTH) collect $(1) --out $(call CASE_CSV,$(1)) --coverage $(call CASE_COVERAGE,$(1))
endef
$(foreach g,$(CASE_GRIDS),$(eval $(call CASE_COLLECT_RULE,$(g))))

$(CASE_JSON) &: notebooks/case_studies.ipynb $(RUNS_CSV) $(CASE_TABLE_INPUTS) $(FIT_CODE) \
		$(foreach g,micro $(CASE_GRIDS),data/grids/$(g).yaml) | $(STAMPS)/venv
	@mkdir -p $(dir $(CASE_JSON))
	$(NOTEBOOK) notebooks/case_studies.ipynb -p runs_csv $(RUNS_CSV) \
	  -p tbptt_csv $(call CASE_CSV,micro-tbptt) -p tbptt_coverage $(call CASE_COVERAGE,micro-tbptt) \
	  -p hyper_csv $(call CASE_CSV,micro-hyper) -p hyper_coverage $(call CASE_COVERAGE,micro-hyper) \
	  -p ablation_csv $(call CASE_CSV,micro-ablation) -p ablation_coverage $(call CASE_COVERAGE,micro-ablation) \
	  -p case_json $(CASE_JSON) -p convention $(CONVENTION) -o $(CASE_JSON)

$(CASE_FIGS) $(CASE_TABLES) $(CASE_NUMBERS) &: notebooks/case_study_figures.ipynb $(CASE_JSON) \
		$(call CASE_CSV,micro-tbptt) $(call CASE_CSV,micro-hyper) data/reference/published.json \
		code/isodepth/style.py code/isodepth/report.py | $(STAMPS)/venv
	@mkdir -p figures paper/generated/tables
	$(NOTEBOOK) notebooks/case_study_figures.ipynb -p case_json $(CASE_JSON) \
	  -p tbptt_csv $(call CASE_CSV,micro-tbptt) -p hyper_csv $(call CASE_CSV,micro-hyper) \
	  -p isoflops_pdf figures/case_studies_isoflops.pdf -p fit_quality_pdf figures/case_studies_fit.pdf \
	  -p table_tex paper/generated/tables/case_studies.tex -p ablation_tex paper/generated/tables/ablation.tex \
	  -p numbers_tex $(CASE_NUMBERS) $(foreach f,$(CASE_FIGS) $(CASE_TABLES) $(CASE_NUMBERS),-o $(f))

PAPER_INPUTS += $(CASE_FIGS) $(CASE_TABLES) $(CASE_NUMBERS) paper/sections/case_studies.tex
GENERATED += $(CASE_TABLE_INPUTS) $(CASE_JSON) $(CASE_FIGS) $(CASE_TABLES) $(CASE_NUMBERS)
