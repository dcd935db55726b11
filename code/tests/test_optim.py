"""Polar Express, MuonH, the optimiser groups, the learning-rate transfer rules and the schedule."""

import math

import pytest
import torch

from isodepth.model import LoopedLM
from isodepth.optim import (MuonH, Recipe, build_optimizers, lr_multiplier, parameter_groups,
                            polar_express)

# Five Polar Express steps leave every singular value of a well-conditioned matrix within about
# 0.141 of 1: measured 0.859 to 1.141 over 20 Gaussian 32 x 64 matrices (torch 2.13, CPU, fp32).
# The coefficients keep singular values in a band around 1 instead of converging to 1: a 32 x 64
# matrix with all singular values equal comes out at 1.068. A square Gaussian matrix is left out
# because its smallest singular value is near 0, and five steps leave that direction short of 1.
POLAR_BAND = 0.16


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (16, 256)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polar_singular_values(shape, seed):
    values = torch.linalg.svdvals(polar_express(gaussian(*shape, seed=seed)))
    assert (values - 1).abs().max().item() < POLAR_BAND


def test_polar_direction():
    """The result points along the exact polar factor U V^T."""
    G = gaussian(32, 64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    exact = U @ Vh
    approx = polar_express(G)
    cosine = (approx * exact).sum() / (approx.norm() * exact.norm())
    assert cosine.item() > 0.99


def test_polar_batched():
    stack = torch.stack([gaussian(32, 64, seed=s) for s in range(3)])
    batched = polar_express(stack)
    for i in range(3):
        torch.testing.assert_close(batched[i], polar_express(stack[i]), rtol=1e-5, atol=1e-5)


def test_polar_scale_invariant():
    G = gaussian(32, 64)
    torch.testing.assert_close(polar_express(1000.0 * G), polar_express(G), rtol=1e-4, atol=1e-5)


def test_polar_keeps_dtype():
    assert polar_express(gaussian(8, 16).double()).dtype == torch.float64


# ---- MuonH -----------------------------------------------------------------------------------


def muon_params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(gaussian(16, 32, seed=s) * (s + 1)) for s in range(3)] + [
        torch.nn.Parameter(gaussian(24, 8, seed=9))]


def test_muonh_stays_on_sphere():
    params = muon_params()
    radii = [p.detach().norm().item() for p in params]
    optimizer = MuonH(params, lr=0.05)
    for step in range(5):
        for i, p in enumerate(params):
            p.grad = gaussian(*p.shape, seed=100 * step + i)
        optimizer.step()
    for p, radius in zip(params, radii):
        assert math.isclose(p.detach().norm().item(), radius, rel_tol=1e-5)


def test_muonh_moves_weights():
    params = muon_params()
    before = [p.detach().clone() for p in params]
    optimizer = MuonH(params, lr=0.05)
    for i, p in enumerate(params):
        p.grad = gaussian(*p.shape, seed=i)
    optimizer.step()
    for p, old in zip(params, before):
        assert not torch.allclose(p.detach(), old)


def test_muonh_relative_step():
    """The update is rescaled to the weight's norm, so one step moves W by about lr * ||W||."""
    p = torch.nn.Parameter(gaussian(32, 64) * 7.0)
    before = p.detach().clone()
    radius = before.norm().item()
    lr = 0.01
    optimizer = MuonH([p], lr=lr)
    p.grad = gaussian(32, 64, seed=5)
    optimizer.step()
    moved = (p.detach() - before).norm().item()
    # The re-projection onto the sphere changes the step by O(lr^2) relative to ||W||.
    assert math.isclose(moved, lr * radius, rel_tol=0.01)


def test_muonh_first_step_direction():
    """With an empty momentum buffer the Nesterov direction is (1 + mu) g, whose polar factor
    is that of g."""
    p = torch.nn.Parameter(gaussian(32, 64))
    before = p.detach().clone()
    radius = before.norm()
    grad = gaussian(32, 64, seed=5)
    optimizer = MuonH([p], lr=0.02)
    p.grad = grad.clone()
    optimizer.step()
    update = polar_express(grad)
    update = update * (radius / update.norm())
    expected = before - 0.02 * update
    expected = expected * (radius / expected.norm())
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_muonh_rejects_vectors():
    with pytest.raises(ValueError, match="2-D matrices only"):
        MuonH([torch.nn.Parameter(torch.ones(4))], lr=0.01)


# ---- parameter groups ------------------------------------------------------------------------

MUON_SUFFIXES = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.out.weight",
                 "mlp.up.weight", "mlp.down.weight")


def expected_muon_names(model: LoopedLM) -> set[str]:
    names = {name for name, _ in model.named_parameters()
             if name.startswith(("prelude.", "recur.", "coda.")) and name.endswith(MUON_SUFFIXES)}
    if model.inject is not None:
        names.add("inject.weight")
    return names


GROUP_CASES = [(1, "linear"), (3, "linear"), (3, "additive"), (3, "hyperconnections")]


@pytest.mark.parametrize("r,mode", GROUP_CASES)
def test_groups_cover_once(make_config, r, mode):
    model = LoopedLM(make_config(recurrences=r, injection=mode))
    grouped = [id(p) for params in parameter_groups(model).values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("r,mode", GROUP_CASES)
def test_groups_muon_matrices(make_config, r, mode):
    model = LoopedLM(make_config(recurrences=r, injection=mode))
    names = {id(p): name for name, p in model.named_parameters()}
    muon = {names[id(p)] for p in parameter_groups(model)["muon"]}
    assert muon == expected_muon_names(model)


@pytest.mark.parametrize("r,mode", GROUP_CASES)
def test_groups_adamw(make_config, r, mode):
    model = LoopedLM(make_config(recurrences=r, injection=mode))
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {key: sorted(names[id(p)] for p in params)
              for key, params in parameter_groups(model).items()}
    assert groups["embed"] == ["embed.weight"]
    assert groups["head"] == ["lm_head.weight"]
    assert all(name.endswith("weight") and "norm" in name for name in groups["norm"])
    expected_scalars = ["hyper.mix", "hyper.read", "hyper.write"] if mode == "hyperconnections" else []
    assert groups["scalar"] == expected_scalars


def test_build_optimizers_settings(make_config):
    recipe = Recipe()
    model = LoopedLM(make_config(recurrences=3, injection="hyperconnections"))
    peak = recipe.learning_rates(32, 262_144, 10**9, looped=True)
    optimizers = build_optimizers(model, recipe, peak)
    adam = optimizers.adam
    assert {group["name"] for group in adam.param_groups} == {"embed", "head", "norm", "scalar"}
    for group in adam.param_groups:
        assert group["betas"] == (0.8, 0.95)
        assert group["eps"] == 1e-10
        assert group["weight_decay"] == 0.0
    assert optimizers.muon.param_groups[0]["momentum"] == 0.95


def test_set_lr_scales_peak(make_config):
    recipe = Recipe()
    model = LoopedLM(make_config(recurrences=3, injection="hyperconnections"))
    peak = recipe.learning_rates(32, 262_144, 10**9, looped=True)
    optimizers = build_optimizers(model, recipe, peak)
    optimizers.set_lr(0.25)
    for group in optimizers.muon.param_groups + optimizers.adam.param_groups:
        assert group["lr"] == peak[group["name"]] * 0.25


# ---- transfer rules --------------------------------------------------------------------------


def test_reference_rates():
    """At the reference width, batch and token count every rate is the recipe's base rate."""
    rates = Recipe().learning_rates(640, 262_144, 1_016_083_200, looped=True)
    assert rates == pytest.approx({"muon": 0.014, "embed": 0.3, "head": 0.004, "norm": 0.005,
                                   "scalar": 0.01}, rel=1e-12)


def test_width_rule():
    d = 1280
    rates = Recipe().learning_rates(d, 262_144, 1_016_083_200, looped=True)
    factor = (d / 640) ** -0.5
    assert rates["embed"] == pytest.approx(0.3 * factor, rel=1e-12)
    assert rates["head"] == pytest.approx(0.004 * factor, rel=1e-12)
    assert rates["norm"] == pytest.approx(0.005 * factor, rel=1e-12)
    assert rates["scalar"] == pytest.approx(0.01 * factor, rel=1e-12)
    assert rates["muon"] == pytest.approx(0.014, rel=1e-12)  # MuonH does not follow width


def test_batch_rule():
    batch = 524_288
    rates = Recipe().learning_rates(640, batch, 1_016_083_200, looped=True)
    factor = 2.0 ** 0.558
    expected = {"muon": 0.014, "embed": 0.3, "head": 0.004, "norm": 0.005, "scalar": 0.01}
    assert rates == pytest.approx({k: v * factor for k, v in expected.items()}, rel=1e-12)


@pytest.mark.parametrize("looped,reference", [(True, 1_016_083_200), (False, 983_315_200)])
def test_token_rule(looped, reference):
    tokens = 4 * reference
    rates = Recipe().learning_rates(640, 262_144, tokens, looped=looped)
    assert rates["muon"] == pytest.approx(0.014 * 4.0 ** -0.32, rel=1e-12)
    assert rates["embed"] == pytest.approx(0.3, rel=1e-12)  # AdamW rates do not follow tokens


def test_combined_rules():
    d, batch, tokens = 384, 131_072, 2_000_000_000
    rates = Recipe().learning_rates(d, batch, tokens, looped=False)
    batch_factor = 0.5 ** 0.558
    assert rates["muon"] == pytest.approx(
        0.014 * (tokens / 983_315_200) ** -0.32 * batch_factor, rel=1e-12)
    assert rates["head"] == pytest.approx(0.004 * (d / 640) ** -0.5 * batch_factor, rel=1e-12)


def test_recipe_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({"muon_learning_rate": 0.01})


# ---- schedule --------------------------------------------------------------------------------


def test_schedule_starts_at_peak():
    assert lr_multiplier(0, 100, 0.1) == 1.0


def test_schedule_ends_at_tenth():
    assert lr_multiplier(99, 100, 0.1) == pytest.approx(0.1, rel=1e-12)


def test_schedule_linear():
    steps = 11
    values = [lr_multiplier(s, steps, 0.1) for s in range(steps)]
    expected = [1.0 - 0.9 * s / (steps - 1) for s in range(steps)]
    assert values == pytest.approx(expected, rel=1e-12)


def test_schedule_no_warmup_default():
    assert Recipe().warmup_steps == 0
    assert lr_multiplier(0, 1000, 0.1) > lr_multiplier(1, 1000, 0.1)


def test_schedule_single_step():
    assert lr_multiplier(0, 1, 0.1) == 1.0


def test_recipe_defaults():
    recipe = Recipe()
    assert recipe.final_lr_fraction == 0.1
    assert recipe.adam_betas == (0.8, 0.95)
    assert recipe.adam_eps == 1e-10
    assert recipe.momentum == 0.95
