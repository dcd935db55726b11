"""Scaling-law fits of the iso-depth study: the joint law with phi, per-r Chinchilla laws, and their uses.

Start with read_runs (a checked run table), then fit_joint, fit_per_r or fit_restricted;
block_bootstrap and stability_split give uncertainties, isoflops_profiles the empirical
optima, allocation_per_r the compute-optimal N*(C) and D*(C), and equivalence what one
looped model is worth in non-looped parameters.
"""

from .allocation import (Allocation, allocation_per_r, closed_form_exponents, compute_optimal_allocation,
                         fit_flops_power_law, flops_table_from_grid, flops_table_from_runs)
from .bootstrap import BootstrapResult, block_bootstrap, stability_split
from .conventions import CONVENTIONS, LEAST_SQUARES, LITERAL, ParamSplit, split_params
from .equivalence import Architecture, equivalence, figure1_ratios
from .fits import (count_cells, fit_chinchilla, fit_joint, fit_per_r, fit_restricted, joint_residuals,
                   subset_runs)
from .io import RunTableError, read_runs, validate_runs, write_json
from .isoflops import IsoFlopsCell, isoflops_profiles, optimum_gaps, profile_optima
from .laws import LawParams, effective_params
from .objective import HUBER_DELTA, PARAM_NAMES, BatchObjective, FitData
from .optimize import DEFAULT_BOX, OptimizerSettings, StartSet, draw_starts, run_multistart
from .result import FitResult

__all__ = [
    "Allocation", "Architecture", "BatchObjective", "BootstrapResult", "CONVENTIONS", "DEFAULT_BOX", "FitData",
    "FitResult", "HUBER_DELTA", "IsoFlopsCell", "LEAST_SQUARES", "LITERAL", "LawParams", "OptimizerSettings",
    "PARAM_NAMES", "ParamSplit", "RunTableError", "StartSet", "allocation_per_r", "block_bootstrap",
    "closed_form_exponents", "compute_optimal_allocation", "count_cells", "draw_starts", "effective_params",
    "equivalence", "figure1_ratios", "fit_chinchilla", "fit_flops_power_law", "fit_joint", "fit_per_r",
    "fit_restricted", "flops_table_from_grid", "flops_table_from_runs", "isoflops_profiles", "joint_residuals",
    "optimum_gaps", "profile_optima", "read_runs", "run_multistart", "split_params", "stability_split",
    "subset_runs", "validate_runs", "write_json",
]
