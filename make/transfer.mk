# Learning-rate transfer (regret against the MuonH base rate across widths and token ratios) and
# the extrapolation pair (r = 1 against r = 4 at the widest micro width on one token budget).
# Both grids may still be in training: the collector writes a table with the runs that exist, and
# the notebooks mark the missing ones as not trained yet.

LRT_RECORDS := $(sort $(wildcard data/runs/micro-lr-transfer/*/record.json))
EXTRAP_RECORDS := $(sort $(wildcard data/runs/micro-extrapolation/*/record.json))
EXTRAP_DOWNSTREAM := $(sort $(wildcard data/runs/micro-extrapolation/*/downstream.json))
LRT_CSV := data/derived/runs-micro-lr-transfer.csv
EXTRAP_CSV := data/derived/runs-micro-extrapolation.csv
TRANSFER_JSON := data/derived/transfer.json
TRANSFER_NUMBERS := paper/generated/transfer_numbers.tex
LRT_FIG := figures/lr_transfer.pdf
EXTRAP_TABLE := paper/generated/tables/extrapolation.tex
# The grid specs that plan these runs, with the base grids they inherit from.
TRANSFER_GRIDS := data/grids/micro-lr-transfer.yaml data/grids/micro-extrapolation.yaml data/grids/micro.yaml \
	data/grids/paper-extrapolation.yaml data/grids/paper.yaml
TRANSFER_CODE := code/isodepth/lr_analysis.py code/isodepth/grids.py code/isodepth/accounting.py \
	code/isodepth/optim.py code/isodepth/report.py code/isodepth/evaluate/results.py

$(LRT_CSV): $(LRT_RECORDS) code/isodepth/collect.py code/isodepth/grids.py data/grids/micro-lr-transfer.yaml \
		data/grids/micro.yaml | $(STAMPS)/venv
	$(ISODEPTH) collect micro-lr-transfer --out $@

$(EXTRAP_CSV): $(EXTRAP_RECORDS) code/isodepth/collect.py code/isodepth/grids.py data/grids/micro-extrapolation.yaml \
		data/grids/micro.yaml | $(STAMPS)/venv
	$(ISODEPTH) collect micro-extrapolation --out $@

# The compute notebook also reads the records of the transfer runs (their peak MuonH rates) and
# the downstream results of the pair, next to the records.
$(TRANSFER_JSON) $(TRANSFER_NUMBERS) &: notebooks/transfer_extrapolation.ipynb $(LRT_CSV) $(EXTRAP_CSV) \
		$(LRT_RECORDS) $(EXTRAP_DOWNSTREAM) $(TRANSFER_GRIDS) $(TRANSFER_CODE) data/reference/published.json \
		| $(STAMPS)/venv
	@mkdir -p $(dir $(TRANSFER_JSON)) $(dir $(TRANSFER_NUMBERS))
	$(NOTEBOOK) notebooks/transfer_extrapolation.ipynb -p lr_runs_csv $(LRT_CSV) \
	  -p extrapolation_runs_csv $(EXTRAP_CSV) -p transfer_json $(TRANSFER_JSON) -p numbers_tex $(TRANSFER_NUMBERS) \
	  -o $(TRANSFER_JSON) -o $(TRANSFER_NUMBERS)

$(LRT_FIG) $(EXTRAP_TABLE) &: notebooks/transfer_figures.ipynb $(TRANSFER_JSON) code/isodepth/style.py \
		code/isodepth/report.py | $(STAMPS)/venv
	@mkdir -p $(dir $(LRT_FIG)) $(dir $(EXTRAP_TABLE))
	$(NOTEBOOK) notebooks/transfer_figures.ipynb -p transfer_json $(TRANSFER_JSON) -p figure_pdf $(LRT_FIG) \
	  -p table_tex $(EXTRAP_TABLE) -o $(LRT_FIG) -o $(EXTRAP_TABLE)

PAPER_INPUTS += $(TRANSFER_NUMBERS) $(LRT_FIG) $(EXTRAP_TABLE) paper/sections/transfer.tex
GENERATED += $(LRT_CSV) $(EXTRAP_CSV) $(TRANSFER_JSON) $(TRANSFER_NUMBERS) $(LRT_FIG) $(EXTRAP_TABLE)
