"""The two N_once / N_rec conventions the joint law can be fitted with.

"literal": N_once and N_rec as the accounting reports them. N_once is the prelude, the
coda and the once-run model norms. N_rec is the shared block (counted once), its closing
norm and the injection layer.

"least-squares": per width, the non-embedding count of every available r is fitted by
N(s, r) = N_once(s) + (recur_layers / r) n_block(s), where recur_layers / r is the number
of unique layers in the shared block. The fit then uses the fitted split itself,
N_once = N_once(s) and N_rec = (recur_layers / r) n_block(s), so the injection layer and
the norms are spread over the intercept and the slope. This split reproduces the study's
effective-parameter ratios 0.75 / 0.58 / 0.47 (r = 2 / 4 / 8 at phi = 0.46), where the
literal split gives 0.76 / 0.59 / 0.48. Using the residual N(s, r) - N_once(s) as N_rec
instead gives 0.76 at r = 2, so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .io import RunTableError

LITERAL = "literal"
LEAST_SQUARES = "least-squares"
CONVENTIONS = (LITERAL, LEAST_SQUARES)


@dataclass(frozen=True)
class ParamSplit:
    """N_once and N_rec per run under one convention, with the per-width fit for least-squares."""

    convention: str
    n_once: np.ndarray
    n_rec: np.ndarray
    per_width: dict  # width -> {"n_once", "n_block", "max_abs_error", "recurrences"}; empty for literal

    def describe(self) -> dict:
        """JSON-ready description of the convention, named in every fit output."""
        return {"convention": self.convention, "per_width": self.per_width}


def check_convention(name: str) -> str:
    normal = name.replace("_", "-").lower()
    if normal not in CONVENTIONS:
        raise ValueError(f"unknown N_once/N_rec convention {name!r}; choose one of {CONVENTIONS}")
    return normal


def fit_block_split(unique_layers: np.ndarray, n_total: np.ndarray) -> tuple[float, float]:
    """Least-squares N_once and n_block in n_total = N_once + unique_layers * n_block.

    unique_layers is the number of distinct layers in the shared block (recur_layers / r),
    one value per distinct architecture at a single width.
    """
    unique_layers = np.asarray(unique_layers, dtype=float)
    n_total = np.asarray(n_total, dtype=float)
    if np.unique(unique_layers).size < 2:
        raise ValueError("the least-squares split needs at least two recurrence counts at one width")
    design = np.column_stack([np.ones_like(unique_layers), unique_layers])
    (n_once, n_block), *_ = np.linalg.lstsq(design, n_total, rcond=None)
    return float(n_once), float(n_block)


def split_params(frame: pd.DataFrame, convention: str = LITERAL) -> ParamSplit:
    """Return N_once and N_rec for every run of a checked run table under the named convention."""
    convention = check_convention(convention)
    if convention == LITERAL:
        return ParamSplit(LITERAL, frame["n_once"].to_numpy(float), frame["n_rec"].to_numpy(float), {})

    width_column = None
    if "d_model" in frame.columns:
        width_column = "d_model"
    elif "size" in frame.columns:
        width_column = "size"
    if width_column is None or "recur_layers" not in frame.columns:
        raise RunTableError("the least-squares N_once/N_rec split needs the columns recur_layers and d_model "
                            f"(or size) to group runs by width; the table has {list(frame.columns)}. "
                            "Use --convention literal, or fit data/derived/runs.csv, which has them")
    unique_layers = frame["recur_layers"].to_numpy(float) / frame["r"].to_numpy(float)
    n_total = (frame["n_once"] + frame["n_rec"]).to_numpy(float)
    widths = frame[width_column].to_numpy()
    n_once = np.empty(len(frame))
    n_rec = np.empty(len(frame))
    per_width = {}
    for width in sorted(set(widths)):
        rows = np.flatnonzero(widths == width)
        architectures = pd.DataFrame({"r": frame["r"].to_numpy()[rows], "layers": unique_layers[rows],
                                      "n_total": n_total[rows]}).drop_duplicates()
        if architectures["r"].duplicated().any():
            raise RunTableError(f"runs at {width_column} = {width:g} disagree on n_once + n_rec for one r: "
                                f"{architectures.to_dict('records')}; fix the parameter counts")
        if len(architectures) < 2:
            labels = ", ".join(frame["label"].to_numpy()[rows][:5])
            raise RunTableError(f"the least-squares split needs runs at two or more r for every width, but "
                                f"{width_column} = {width:g} has only r = {architectures['r'].tolist()} ({labels}); "
                                "use --convention literal or drop those runs")
        once, block = fit_block_split(architectures["layers"].to_numpy(), architectures["n_total"].to_numpy())
        predicted = once + architectures["layers"].to_numpy() * block
        n_once[rows] = once
        n_rec[rows] = unique_layers[rows] * block
        per_width[f"{width:g}"] = {
            "width_column": width_column, "n_once": once, "n_block": block,
            "recurrences": sorted(int(r) for r in architectures["r"]),
            "max_abs_error": float(np.max(np.abs(predicted - architectures["n_total"].to_numpy()))),
        }
    if np.any(n_once < 0) or np.any(n_rec <= 0):
        raise RunTableError("the least-squares split gave a negative N_once or a non-positive N_rec; "
                            "check the parameter counts, or use --convention literal")
    return ParamSplit(LEAST_SQUARES, n_once, n_rec, per_width)
