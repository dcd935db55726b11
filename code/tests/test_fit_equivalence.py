"""Equivalence calculator: the study's Figure 1 ratios and its worked example at phi = 0.46."""

import json

import pytest

from isodepth import paths
from isodepth.accounting import param_counts
from isodepth.fit.equivalence import Architecture, equivalence, figure1_ratios, plain_params, plain_width_for

PUBLISHED = json.loads((paths.REFERENCE / "published.json").read_text())["figure1_ratios"]
LITERAL = {"r2": 0.76, "r4": 0.59, "r8": 0.48}


@pytest.mark.parametrize("size", [6, 16, 34])
def test_figure1_ratios(size):
    ratios = figure1_ratios(phi=0.46, size=size)
    for key in ("r2", "r4", "r8"):
        assert ratios["unique_params"][key] == pytest.approx(PUBLISHED["unique_params"][key], abs=0.005)
        assert ratios["literal"][key] == pytest.approx(LITERAL[key], abs=0.005)
        assert ratios["least-squares"][key] == pytest.approx(PUBLISHED["effective_params_phi_0.46"][key], abs=0.005)


def test_worked_example():
    result = equivalence(4, 10, phi=0.46)
    assert result["unique_param_ratio"] == pytest.approx(98 / 240, abs=5e-4)
    assert round(result["unique_param_ratio"], 3) == 0.408
    assert result["layer_view"]["ratio"] == pytest.approx((4 + 4 * 4 ** 0.46) / 20, rel=1e-12)
    assert round(result["layer_view"]["ratio"], 3) == 0.578
    # Same layers per token, so the r = 1 model of equal width costs the same up to the injection layer.
    assert result["pays_for"]["train_flops_ratio"] == pytest.approx(1.0, abs=0.03)


def test_plain_width_inverts_accounting():
    arch = Architecture()
    for size in (6, 12):
        cfg = arch.config(1, size)
        n = param_counts(cfg).n_total
        assert plain_params(cfg.d_model, arch.effective_depth) == n
        assert plain_width_for(n, arch.effective_depth) == pytest.approx(cfg.d_model, rel=1e-9)


def test_r1_is_its_own_equivalent():
    result = equivalence(1, 8, phi=0.46)
    assert result["unique_param_ratio"] == 1.0
    assert result["behaves_like"]["literal"]["ratio_to_r1_same_width"] == pytest.approx(1.0)
    assert result["behaves_like"]["least-squares"]["ratio_to_r1_same_width"] == pytest.approx(1.0)


def test_phi_one_and_zero_limits():
    one = equivalence(4, 8, phi=1.0)
    zero = equivalence(4, 8, phi=0.0)
    assert one["layer_view"]["ratio"] == pytest.approx(1.0)
    assert zero["layer_view"]["ratio"] == pytest.approx(zero["layer_view"]["unique_layer_ratio"])
    assert zero["behaves_like"]["literal"]["n_eff"] == one["looped"]["n_total"]


def test_micro_architecture():
    micro = Architecture(width_per_size=4, effective_depth=10, n_prelude=1, n_coda=1, head_dim=8,
                         vocab_size=1024, seq_len=64)
    result = equivalence(8, 12, phi=0.5, arch=micro)
    assert result["looped"]["unique_block_layers"] == 1
    assert result["behaves_like"]["least-squares"]["split_recurrences"] == [1, 2, 4, 8]


def test_invalid_r_rejected():
    with pytest.raises(ValueError, match="not a positive multiple of r=3"):
        equivalence(3, 8)
