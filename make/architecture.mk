# Setup and fit-quality exhibits that need no new training: the architecture schematic
# (Figure 5), the architecture-and-recipe table (Table 4) and the grid table (Table 6) from the
# micro grid's spec; the per-architecture fit quality (Figures 8 and 9) from the per-r fits.

ARCH_FIG := figures/architecture.pdf
ARCH_TABLES := paper/generated/tables/setup.tex paper/generated/tables/grid.tex
ARCH_NUMBERS := paper/generated/architecture_numbers.tex
ARCH_OUTPUTS := $(ARCH_FIG) $(ARCH_TABLES) $(ARCH_NUMBERS)
# The tables read the planner, the model configuration, the recipe and the model itself.
ARCH_CODE := code/isodepth/schematic.py code/isodepth/tables_setup.py code/isodepth/config.py \
	code/isodepth/accounting.py code/isodepth/grids.py code/isodepth/optim.py code/isodepth/model.py \
	code/isodepth/style.py code/isodepth/report.py

$(ARCH_OUTPUTS) &: notebooks/architecture.ipynb data/grids/micro.yaml data/grids/paper.yaml $(RUNS_CSV) \
		$(ARCH_CODE) | $(STAMPS)/venv
	@mkdir -p figures paper/generated/tables
	$(NOTEBOOK) notebooks/architecture.ipynb -p grid micro -p study_grid paper -p runs_csv $(RUNS_CSV) \
	  -p figure_pdf $(ARCH_FIG) -p setup_tex paper/generated/tables/setup.tex \
	  -p grid_tex paper/generated/tables/grid.tex -p numbers_tex $(ARCH_NUMBERS) \
	  $(foreach f,$(ARCH_OUTPUTS),-o $(f))

FITQ_FIGS := figures/fit_quality.pdf figures/fit_residuals.pdf
FITQ_NUMBERS := paper/generated/fit_quality_numbers.tex
FITQ_OUTPUTS := $(FITQ_FIGS) $(FITQ_NUMBERS)

$(FITQ_OUTPUTS) &: notebooks/fit_quality.ipynb $(RUNS_CSV) $(JOINT_JSON) data/grids/micro.yaml \
		code/isodepth/fit/laws.py code/isodepth/fit/io.py code/isodepth/grids.py code/isodepth/style.py \
		code/isodepth/report.py | $(STAMPS)/venv
	@mkdir -p figures paper/generated
	$(NOTEBOOK) notebooks/fit_quality.ipynb -p runs_csv $(RUNS_CSV) -p joint_json $(JOINT_JSON) -p grid micro \
	  -p predicted_pdf figures/fit_quality.pdf -p residuals_pdf figures/fit_residuals.pdf \
	  -p numbers_tex $(FITQ_NUMBERS) $(foreach f,$(FITQ_OUTPUTS),-o $(f))

PAPER_INPUTS += $(ARCH_OUTPUTS) $(FITQ_OUTPUTS) paper/sections/architecture.tex paper/sections/fit_quality.tex
GENERATED += $(ARCH_OUTPUTS) $(FITQ_OUTPUTS)
