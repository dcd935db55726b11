"""Parameter and FLOPs accounting against the published numbers, the model and a FLOP counter."""

import csv
import io
import json
import math
import subprocess
import sys
from argparse import Namespace
from contextlib import redirect_stdout
from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from isodepth import cli, paths
from isodepth.accounting import (ceil_half, forward_flops_per_token, param_counts, run_length,
                                 train_flops_per_token)
from isodepth.config import iso_depth_config
from isodepth.grids import PLAN_COLUMNS, load_grid
from isodepth.model import LoopedLM

PUBLISHED = json.loads((paths.REFERENCE / "published.json").read_text())
TOKENS_PER_STEP = 262_144  # the study's batch: 128 rows of 2048 tokens
TABLE6 = [(int(size), int(r[1:]), millions)
          for size, row in PUBLISHED["table6_params_millions"].items()
          for r, millions in row.items()]


def study_config(size: int, r: int, **overrides):
    """The study's architecture at width 64 s: depth 20 = 2 + 16 + 2, head 128, Llama-2 vocab."""
    return iso_depth_config(d_model=64 * size, recurrences=r, effective_depth=20, n_prelude=2,
                            n_coda=2, head_dim=128, vocab_size=32001, seq_len=2048, **overrides)


def small_iso_config(r: int, **overrides):
    """Depth 10 = 1 + 8 + 1 at d = 32, so r = 1, 2, 4 and 8 all divide the recurrent depth."""
    return iso_depth_config(d_model=32, recurrences=r, effective_depth=10, n_prelude=1, n_coda=1,
                            head_dim=8, vocab_size=100, seq_len=16, **overrides)


@pytest.fixture(scope="module")
def paper_runs():
    return load_grid("paper").runs()


@pytest.fixture(scope="module")
def paper_by_size_r(paper_runs):
    return {(run.size, run.r): run for run in paper_runs}


# ---- published numbers ---------------------------------------------------------------------


def test_table6_has_all_pairs():
    assert len(TABLE6) == 44


@pytest.mark.parametrize("size,r,millions", TABLE6)
def test_table6_params(paper_by_size_r, size, r, millions):
    run = paper_by_size_r[(size, r)]
    assert abs(run.n_total / 1e6 - millions) <= 0.05 + 1e-9


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_exact_params_s6(r):
    expected = PUBLISHED["exact_params_s6"][f"r{r}"]
    assert param_counts(study_config(6, r)).n_total == expected


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_exact_params_formula(r):
    """N = 20 (12 d^2 + 2d) + 3d for r = 1 and (4 + 16/r)(12 d^2 + 2d) + 2 d^2 + 3d for r > 1."""
    d = 64 * 6
    layer = 12 * d * d + 2 * d
    expected = 20 * layer + 3 * d if r == 1 else (4 + 16 // r) * layer + 2 * d * d + 3 * d
    assert param_counts(study_config(6, r)).n_total == expected


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_flops_per_token_s6(r):
    published = PUBLISHED["train_flops_per_token_s6"][f"r{r}"]
    computed = train_flops_per_token(study_config(6, r))
    assert float(f"{computed:.4e}") == published


def test_paper_grid_sizes(paper_runs):
    planned = {}
    for run in paper_runs:
        planned.setdefault(run.budget, set()).add(run.size)
    published = {float(budget): set(sizes) for budget, sizes in PUBLISHED["grid_sizes"].items()}
    assert planned == published


def test_paper_grid_runs_per_r(paper_runs):
    counts = {r: sum(run.r == r for run in paper_runs) for r in (1, 2, 4, 8)}
    assert counts == {1: 29, 2: 29, 4: 29, 8: 29}


@pytest.mark.parametrize("mode,published_mode", [
    ("linear", "linear"), ("additive", "additive"), ("passthrough", "passthrough"),
    ("hyperconnections", "hyperconnections_k2"),
])
def test_injection_ablation_tokens(mode, published_mode):
    """Table 5's token counts (s = 10, r = 4, C = 1e18) to three significant digits."""
    table = PUBLISHED["table5_injection_ablation"]
    rows = {row["mode"]: row for row in table["rows"]}
    cfg = study_config(table["s"], table["r"], injection=mode)
    tokens = run_length(table["C"], train_flops_per_token(cfg), TOKENS_PER_STEP).tokens
    assert float(f"{tokens:.3g}") == rows[published_mode]["tokens"]


# ---- plan command ----------------------------------------------------------------------------


def plan_csv_rows() -> list[dict]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        status = cli._plan(Namespace(grid="paper", format="csv"))
    assert status == 0
    return list(csv.DictReader(io.StringIO(buffer.getvalue())))


@pytest.fixture(scope="module")
def plan_rows():
    return plan_csv_rows()


def test_plan_csv_row_count(plan_rows):
    assert len(plan_rows) == 116


def test_plan_csv_columns(plan_rows):
    assert list(plan_rows[0]) == PLAN_COLUMNS
    assert PLAN_COLUMNS == ["run_id", "budget", "r", "size", "d_model", "n_once", "n_rec",
                            "n_total", "flops_per_token", "steps", "tokens"]


def test_plan_csv_unique_run_ids(plan_rows):
    assert len({row["run_id"] for row in plan_rows}) == 116


def test_plan_csv_steps(plan_rows):
    wrong = [row["run_id"] for row in plan_rows
             if int(row["steps"]) != round(float(row["budget"])
                                           / (float(row["flops_per_token"]) * TOKENS_PER_STEP))]
    assert wrong == []


def test_plan_csv_tokens(plan_rows):
    wrong = [row["run_id"] for row in plan_rows
             if int(row["tokens"]) != int(row["steps"]) * TOKENS_PER_STEP]
    assert wrong == []


def test_plan_csv_param_sum(plan_rows):
    wrong = [row["run_id"] for row in plan_rows
             if int(row["n_once"]) + int(row["n_rec"]) != int(row["n_total"])]
    assert wrong == []


def test_plan_csv_width(plan_rows):
    wrong = [row["run_id"] for row in plan_rows if int(row["d_model"]) != 64 * int(row["size"])]
    assert wrong == []


def test_plan_cli_subprocess(plan_rows):
    """The installed entry point prints the same table as the plan function."""
    result = subprocess.run([sys.executable, "-m", "isodepth.cli", "plan", "paper", "--format", "csv"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(csv.DictReader(io.StringIO(result.stdout))) == plan_rows


# ---- accounting against an instantiated model -----------------------------------------------


def model_counts(model: LoopedLM) -> dict:
    """Count the model's parameters per accounting section by module."""
    def size(modules) -> int:
        return sum(p.numel() for module in modules for p in module.parameters())

    counts = {
        "non_embedding": sum(p.numel() for name, p in model.named_parameters()
                             if not name.startswith(("embed.", "lm_head."))),
        "once": size([*model.prelude, *model.coda, model.norm_embed, model.norm_final]),
        "rec": size([*model.recur, model.norm_recur]),
    }
    for extra in (model.inject, model.hyper):
        if extra is not None:
            counts["rec"] += size([extra])
    return counts


MODEL_CASES = [
    (1, "linear"), (2, "linear"), (4, "linear"), (8, "linear"),
    (2, "hyperconnections"), (4, "hyperconnections"), (4, "additive"), (4, "passthrough"),
]


@pytest.mark.parametrize("r,mode", MODEL_CASES)
def test_model_params_total(r, mode):
    cfg = small_iso_config(r, injection=mode)
    assert model_counts(LoopedLM(cfg))["non_embedding"] == param_counts(cfg).n_total


@pytest.mark.parametrize("r,mode", MODEL_CASES)
def test_model_params_once(r, mode):
    cfg = small_iso_config(r, injection=mode)
    assert model_counts(LoopedLM(cfg))["once"] == param_counts(cfg).n_once


@pytest.mark.parametrize("r,mode", MODEL_CASES)
def test_model_params_rec(r, mode):
    cfg = small_iso_config(r, injection=mode)
    assert model_counts(LoopedLM(cfg))["rec"] == param_counts(cfg).n_rec


def test_model_embedding_params():
    cfg = small_iso_config(4)
    model = LoopedLM(cfg)
    counts = param_counts(cfg)
    assert model.embed.weight.numel() == counts.embedding
    assert model.lm_head.weight.numel() == counts.lm_head


# ---- FLOPs against torch's FLOP counter ------------------------------------------------------

FLOP_CASES = [(1, None), (2, None), (4, None), (8, None), (2, 1), (4, 2), (8, 4)]


def counted_flops_per_token(cfg) -> dict[str, float]:
    """Matmul FLOPs per token that FlopCounterMode counts in one forward+backward pass.

    SDPA runs on its math backend, because FlopCounterMode (torch 2.13) has no formula for the
    CPU flash-attention kernel and would count attention as zero. The math backend computes
    Q K^T and A V as bmm over the full T x T score matrix (the causal mask is applied to it),
    so the bmm count is attention at the full context. Elementwise work (norms, RoPE, softmax,
    squared ReLU, residual adds, the soft-cap) counts zero, and the embedding is a lookup.
    """
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    batch = 2
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    tokens = batch * cfg.seq_len
    return {"mm": counts.get("aten.mm", 0) / tokens, "bmm": counts.get("aten.bmm", 0) / tokens,
            "other": sum(v for k, v in counts.items() if k not in ("aten.mm", "aten.bmm")) / tokens}


def hand_flops_per_token(cfg) -> dict[str, float]:
    """Split the accounting's terms into the groups that the counter reports.

    dense: every weight matrix at 6 FLOPs per weight per token when its pass has a backward
    and 2 when forward only. The lm_head counts over the padded vocabulary, because the model
    multiplies by the full padded head and slices the logits afterwards.
    attention: 12 h q T per layer with a backward pass, 4 h q T forward only, T = full context.
    norm_scales: the layers' RMSNorm scale vectors, which the accounting counts as weights but
    which are elementwise products, so no matmul counter sees them.
    """
    d = cfg.d_model
    r, k = cfg.recurrences, cfg.k_grad
    f = r - k
    once_layers = cfg.n_prelude + cfg.n_coda
    inject = 2 * d * d if cfg.looped else 0
    hqT = cfg.n_head * cfg.head_dim * cfg.seq_len
    return {
        "dense": (6 * (12 * d * d * once_layers + cfg.padded_vocab_size * d)
                  + (2 * f + 6 * k) * (12 * d * d * cfg.n_recur_layers + inject)),
        "attention": 12 * hqT * once_layers + (4 * f + 12 * k) * hqT * cfg.n_recur_layers,
        "norm_scales": 6 * 2 * d * once_layers + (2 * f + 6 * k) * 2 * d * cfg.n_recur_layers,
    }


@pytest.fixture(scope="module")
def flop_counts():
    return {case: counted_flops_per_token(small_iso_config(case[0], grad_recurrences=case[1]))
            for case in FLOP_CASES}


@pytest.mark.parametrize("r,k", FLOP_CASES)
def test_counter_dense_flops(flop_counts, r, k):
    cfg = small_iso_config(r, grad_recurrences=k)
    assert flop_counts[(r, k)]["mm"] == hand_flops_per_token(cfg)["dense"]


@pytest.mark.parametrize("r,k", FLOP_CASES)
def test_counter_attention_flops(flop_counts, r, k):
    cfg = small_iso_config(r, grad_recurrences=k)
    assert flop_counts[(r, k)]["bmm"] == hand_flops_per_token(cfg)["attention"]


@pytest.mark.parametrize("r,k", FLOP_CASES)
def test_counter_no_other_ops(flop_counts, r, k):
    assert flop_counts[(r, k)]["other"] == 0


@pytest.mark.parametrize("r,k", FLOP_CASES)
def test_train_flops_decomposition(r, k):
    cfg = small_iso_config(r, grad_recurrences=k)
    assert train_flops_per_token(cfg) == sum(hand_flops_per_token(cfg).values())


def test_head_counted_padded():
    """The counted FLOPs change with the padded head size, not with the tokenizer's vocabulary."""
    cfg = small_iso_config(2)
    wider = replace(cfg, padded_vocab_size=cfg.padded_vocab_size + 64)
    difference = counted_flops_per_token(wider)["mm"] - counted_flops_per_token(cfg)["mm"]
    assert difference == 6 * 64 * cfg.d_model


# ---- truncated BPTT and hyperconnections -----------------------------------------------------


@pytest.mark.parametrize("r", [2, 4, 8])
def test_truncated_flops_by_hand(r):
    """F = 6 (P_prelude + P_coda + P_head) + (2f + 6k)(P_recur + P_inject) + attention terms."""
    k = ceil_half(r)
    f = r - k
    cfg = study_config(10, r, grad_recurrences=k)
    d, T, layer = 640, 2048, 12 * 640 * 640 + 2 * 640
    hqT = d * T  # h q = d
    expected = (6 * (4 * layer + 32_064 * d) + (2 * f + 6 * k) * ((16 // r) * layer + 2 * d * d)
                + 12 * hqT * 4 + (4 * f + 12 * k) * (16 // r) * hqT)
    assert train_flops_per_token(cfg) == expected


@pytest.mark.parametrize("r,k", [(1, 1), (2, 1), (3, 2), (4, 2), (8, 4)])
def test_ceil_half(r, k):
    assert ceil_half(r) == k


def test_truncated_token_gain():
    """Truncating to the last ceil(r/2) recurrences buys about 31.5% more tokens on average
    over the 69 looped runs of the truncated-BPTT case study."""
    sizes = {4.64e17: range(6, 13, 2), 1e18: range(6, 17, 2), 2.15e18: range(8, 19, 2),
             4.64e18: range(10, 23, 2)}
    gains = []
    for budget, widths in sizes.items():
        for r in (2, 4, 8):
            for size in widths:
                full = run_length(budget, train_flops_per_token(study_config(size, r)), TOKENS_PER_STEP)
                cut = study_config(size, r, grad_recurrences=ceil_half(r))
                truncated = run_length(budget, train_flops_per_token(cut), TOKENS_PER_STEP)
                gains.append(truncated.tokens / full.tokens - 1)
    assert len(gains) == 69
    assert abs(sum(gains) / len(gains) - 0.315) < 0.005


@pytest.mark.parametrize("r", [2, 4, 8])
def test_hyper_params(r):
    """Hyperconnections replace the injection matrix by r (K^2 + 2K) scalars in N_rec."""
    lanes = 2
    hyper = param_counts(study_config(6, r, injection="hyperconnections", hc_lanes=lanes))
    plain = param_counts(study_config(6, r, injection="passthrough"))
    assert hyper.n_rec - plain.n_rec == r * (lanes * lanes + 2 * lanes)
    assert hyper.n_once == plain.n_once


@pytest.mark.parametrize("r,lanes", [(2, 2), (4, 2), (8, 2), (4, 3)])
def test_hyper_flops(r, lanes):
    """Lane mixing adds 6 r (K^2 + 2K) d FLOPs per token to the injection-free model."""
    hyper = study_config(6, r, injection="hyperconnections", hc_lanes=lanes)
    plain = study_config(6, r, injection="passthrough")
    mixing = train_flops_per_token(hyper) - train_flops_per_token(plain)
    assert mixing == 6 * r * (lanes * lanes + 2 * lanes) * 384


def test_linear_injection_flops():
    """The linear injection costs 6 * 2 d^2 per recurrence over additive injection."""
    linear = train_flops_per_token(study_config(6, 4))
    additive = train_flops_per_token(study_config(6, 4, injection="additive"))
    assert linear - additive == 6 * 4 * 2 * 384 * 384


def test_run_length_rounds():
    assert run_length(3.4e6, 1000.0, 1000).steps == 3
    assert run_length(3.6e6, 1000.0, 1000).tokens == 4000


def test_run_length_too_small():
    with pytest.raises(ValueError, match="less than one step"):
        run_length(1.0, 1000.0, 1000)


def test_forward_flops_third():
    """Inference FLOPs are a third of full-backprop training FLOPs, also for truncated configs."""
    truncated = study_config(6, 4, grad_recurrences=2)
    full = study_config(6, 4)
    assert math.isclose(3 * forward_flops_per_token(truncated), train_flops_per_token(full))
