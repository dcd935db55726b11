"""Recurrence variants: truncated BPTT, additive and passthrough injection, hyperconnections.

Each variant is compared with a hand-written loop over the model's own modules that follows the
construction literally, so the test checks the wiring of the recurrence, not the layers.
"""

import pytest
import torch

from isodepth.config import ModelConfig, iso_depth_config
from isodepth.model import LoopedLM


def build(make_config, seed: int = 0, **overrides) -> LoopedLM:
    torch.manual_seed(seed)
    return LoopedLM(make_config(**overrides))


def tokens(cfg, rows: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (rows, cfg.seq_len + 1), generator=generator)
    return idx[:, :-1], idx[:, 1:]


def perturb_injection(model: LoopedLM, seed: int = 2) -> None:
    """Move W_inject away from [I | 0] so the recurrent state h reaches the block input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.inject.weight
        weight.add_(0.1 * torch.randn(weight.shape, generator=generator))


def run_layers(model: LoopedLM, layers, x: torch.Tensor) -> torch.Tensor:
    T = x.size(1)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    for layer in layers:
        x = layer(x, cos, sin)
    return x


def prelude(model: LoopedLM, idx: torch.Tensor) -> torch.Tensor:
    return run_layers(model, model.prelude, model.norm_embed(model.embed(idx)))


def block(model: LoopedLM, u: torch.Tensor) -> torch.Tensor:
    """One recurrence: the shared layers, then the recurrence norm."""
    return model.norm_recur(run_layers(model, model.recur, u))


def head(model: LoopedLM, h: torch.Tensor) -> torch.Tensor:
    h = model.norm_final(run_layers(model, model.coda, h))
    z = model.lm_head(h)[..., : model.cfg.vocab_size].float()
    return 15.0 * torch.tanh(z / 15.0)


def reference_logits(model: LoopedLM, idx: torch.Tensor, detach_after: int = 0) -> torch.Tensor:
    """Hand-written forward of the linear, additive and passthrough modes.

    detach_after cuts the graph after that many iterations (truncated BPTT).
    """
    cfg = model.cfg
    e = prelude(model, idx)
    h = torch.zeros_like(e) if cfg.injection == "additive" else e
    for i in range(cfg.recurrences):
        if cfg.injection == "linear":
            u = model.inject(torch.cat((e, h), dim=-1))
        elif cfg.injection == "additive":
            u = h + e
        else:
            u = h
        h = block(model, u)
        if i + 1 == detach_after:
            h = h.detach()
    return head(model, h)


def reference_hyper_logits(model: LoopedLM, idx: torch.Tensor) -> torch.Tensor:
    """Hand-written hyperconnections: K lanes start at e, u = sum_k alpha_ik lane_k,
    lane_j <- sum_k M_i[j, k] lane_k + beta_ij s, and the coda reads the lane sum."""
    cfg = model.cfg
    e = prelude(model, idx)
    lanes = [e for _ in range(cfg.hc_lanes)]
    for i in range(cfg.recurrences):
        alpha, mix, beta = model.hyper.read[i], model.hyper.mix[i], model.hyper.write[i]
        u = sum(alpha[k] * lanes[k] for k in range(cfg.hc_lanes))
        s = block(model, u)
        lanes = [sum(mix[j, k] * lanes[k] for k in range(cfg.hc_lanes)) + beta[j] * s
                 for j in range(cfg.hc_lanes)]
    return head(model, sum(lanes))


def gradients(model: LoopedLM, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def record_block_io(model: LoopedLM) -> dict[str, list[torch.Tensor]]:
    """Record each recurrence's block input u, output h and the prelude output e."""
    seen = {"u": [], "h": [], "e": []}
    model.recur[0].register_forward_pre_hook(lambda m, args: seen["u"].append(args[0]))
    model.norm_recur.register_forward_hook(lambda m, args, out: seen["h"].append(out))
    model.prelude[-1].register_forward_hook(lambda m, args, out: seen["e"].append(out))
    return seen


# ---- truncated BPTT --------------------------------------------------------------------------

TRUNCATED = [(2, 1), (3, 1), (4, 2), (4, 3)]


@pytest.mark.parametrize("r,k", TRUNCATED)
def test_truncated_matches_detached_loop(make_config, r, k):
    model = build(make_config, recurrences=r, grad_recurrences=k)
    perturb_injection(model)
    idx, targets = tokens(model.cfg)
    truncated = gradients(model, model(idx, targets))
    reference_loss = torch.nn.functional.cross_entropy(
        reference_logits(model, idx, detach_after=r - k).reshape(-1, model.cfg.vocab_size),
        targets.reshape(-1))
    manual = gradients(model, reference_loss)
    for name in truncated:
        torch.testing.assert_close(truncated[name], manual[name], msg=f"gradient of {name}")


@pytest.mark.parametrize("r,k", TRUNCATED)
def test_truncated_differs_from_full(make_config, r, k):
    """Truncation changes the block and injection gradients, so the test above can fail."""
    model = build(make_config, recurrences=r, grad_recurrences=k)
    perturb_injection(model)
    full = build(make_config, recurrences=r)
    full.load_state_dict(model.state_dict())
    idx, targets = tokens(model.cfg)
    cut = gradients(model, model(idx, targets))
    whole = gradients(full, full(idx, targets))
    assert not torch.allclose(cut["inject.weight"], whole["inject.weight"])
    assert not torch.allclose(cut["recur.0.mlp.up.weight"], whole["recur.0.mlp.up.weight"])


@pytest.mark.parametrize("r,k", TRUNCATED)
def test_truncated_same_forward(make_config, r, k):
    model = build(make_config, recurrences=r, grad_recurrences=k)
    perturb_injection(model)
    full = build(make_config, recurrences=r)
    full.load_state_dict(model.state_dict())
    idx, _ = tokens(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), full(idx), rtol=0, atol=0)


@pytest.mark.parametrize("r,k", TRUNCATED)
def test_truncated_graph_cut(make_config, r, k):
    """The first r - k recurrence outputs are built without a graph, the last k with one."""
    model = build(make_config, recurrences=r, grad_recurrences=k)
    seen = record_block_io(model)
    idx, targets = tokens(model.cfg)
    model(idx, targets)
    assert [h.requires_grad for h in seen["h"]] == [False] * (r - k) + [True] * k


@pytest.mark.parametrize("r,k", TRUNCATED)
def test_truncated_every_param_gradient(make_config, r, k):
    model = build(make_config, recurrences=r, grad_recurrences=k)
    idx, targets = tokens(model.cfg)
    grads = gradients(model, model(idx, targets))
    missing = [name for name, grad in grads.items() if grad is None or not torch.isfinite(grad).all()]
    assert missing == []


def test_truncated_eval_no_grad(make_config):
    """Under no_grad, truncation leaves every iteration without a graph."""
    model = build(make_config, recurrences=3, grad_recurrences=2)
    seen = record_block_io(model)
    with torch.no_grad():
        model(tokens(model.cfg)[0])
    assert [h.requires_grad for h in seen["h"]] == [False, False, False]


# ---- linear, additive and passthrough injection ----------------------------------------------

MODES = ["linear", "additive", "passthrough"]


@pytest.mark.parametrize("mode", MODES)
def test_mode_matches_reference(make_config, mode):
    model = build(make_config, recurrences=3, injection=mode)
    if mode == "linear":
        perturb_injection(model)
    idx, _ = tokens(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(model, idx))


def test_linear_init_feeds_e(make_config):
    """W_inject = [I | 0] gives u = e at every iteration."""
    model = build(make_config, recurrences=3)
    seen = record_block_io(model)
    with torch.no_grad():
        model(tokens(model.cfg)[0])
    for u in seen["u"]:
        torch.testing.assert_close(u, seen["e"][0], rtol=0, atol=1e-6)


def test_linear_init_independent_of_r(make_config):
    """Because u = e at every iteration at init, the output does not depend on r."""
    two = build(make_config, recurrences=2)
    three = build(make_config, recurrences=3)
    three.load_state_dict(two.state_dict())
    idx, _ = tokens(two.cfg)
    with torch.no_grad():
        torch.testing.assert_close(two(idx), three(idx), rtol=0, atol=1e-5)


def test_additive_inputs(make_config):
    """Additive: h0 = 0, so u_1 = e, and then u_i = h_{i-1} + e."""
    model = build(make_config, recurrences=3, injection="additive")
    seen = record_block_io(model)
    with torch.no_grad():
        model(tokens(model.cfg)[0])
    e = seen["e"][0]
    torch.testing.assert_close(seen["u"][0], e, rtol=0, atol=0)
    for i in (1, 2):
        torch.testing.assert_close(seen["u"][i], seen["h"][i - 1] + e, rtol=0, atol=0)


def test_passthrough_inputs(make_config):
    """Passthrough: h0 = e, u_i = h_{i-1}."""
    model = build(make_config, recurrences=3, injection="passthrough")
    seen = record_block_io(model)
    with torch.no_grad():
        model(tokens(model.cfg)[0])
    torch.testing.assert_close(seen["u"][0], seen["e"][0], rtol=0, atol=0)
    for i in (1, 2):
        torch.testing.assert_close(seen["u"][i], seen["h"][i - 1], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["additive", "passthrough"])
def test_first_iteration_matches_linear(make_config, mode):
    """At init all three modes feed u = e to the first iteration, so h_1 is the same."""
    linear = build(make_config, recurrences=3)
    other = build(make_config, recurrences=3, injection=mode)
    other.load_state_dict(linear.state_dict(), strict=False)
    seen_linear, seen_other = record_block_io(linear), record_block_io(other)
    idx, _ = tokens(linear.cfg)
    with torch.no_grad():
        linear(idx)
        other(idx)
    torch.testing.assert_close(seen_other["h"][0], seen_linear["h"][0], rtol=0, atol=1e-6)
    assert not torch.allclose(seen_other["h"][1], seen_linear["h"][1])


@pytest.mark.parametrize("mode", ["additive", "passthrough"])
def test_mode_no_injection_params(make_config, mode):
    model = build(make_config, injection=mode)
    assert model.inject is None
    assert model.hyper is None


# ---- hyperconnections ------------------------------------------------------------------------


@pytest.mark.parametrize("r,lanes", [(3, 2), (4, 3)])
def test_hyper_init_scalars(make_config, r, lanes):
    hyper = build(make_config, recurrences=r, injection="hyperconnections", hc_lanes=lanes).hyper
    expected_read = torch.zeros(r, lanes)
    for i in range(r):
        expected_read[i, i % lanes] = 1.0
    assert torch.equal(hyper.read, expected_read)
    assert torch.equal(hyper.mix, torch.eye(lanes).expand(r, lanes, lanes))
    assert torch.equal(hyper.write, torch.ones(r, lanes))


def test_hyper_init_forward(make_config):
    """At init: lanes start at e, iteration i reads lane i mod K, and s is added to every lane."""
    model = build(make_config, recurrences=3, injection="hyperconnections", hc_lanes=2)
    idx, _ = tokens(model.cfg)
    with torch.no_grad():
        e = prelude(model, idx)
        lanes = [e, e]
        for i in range(3):
            s = block(model, lanes[i % 2])
            lanes = [lane + s for lane in lanes]
        expected = head(model, lanes[0] + lanes[1])
        torch.testing.assert_close(model(idx), expected)


@pytest.mark.parametrize("r,lanes", [(3, 2), (4, 3)])
def test_hyper_trained_forward(make_config, r, lanes):
    """With scalars away from init the forward still follows the construction (M acts as M @ lanes)."""
    model = build(make_config, recurrences=r, injection="hyperconnections", hc_lanes=lanes)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.hyper.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    idx, _ = tokens(model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_hyper_logits(model, idx))


@pytest.mark.parametrize("name", ["read", "mix", "write"])
def test_hyper_scalar_gradients(make_config, name):
    model = build(make_config, recurrences=3, injection="hyperconnections", hc_lanes=2)
    idx, targets = tokens(model.cfg)
    grads = gradients(model, model(idx, targets))
    grad = grads[f"hyper.{name}"]
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert torch.count_nonzero(grad) == grad.numel()


def test_hyper_full_backprop_only():
    with pytest.raises(ValueError, match="full backprop only"):
        ModelConfig(d_model=32, head_dim=8, vocab_size=100, padded_vocab_size=128, seq_len=16,
                    n_prelude=1, n_recur_layers=2, n_coda=1, recurrences=4,
                    injection="hyperconnections", grad_recurrences=2)


def test_hyper_iso_depth_truncated_raises():
    with pytest.raises(ValueError, match="full backprop only"):
        iso_depth_config(d_model=32, recurrences=4, effective_depth=10, n_prelude=1, n_coda=1,
                         head_dim=8, vocab_size=100, seq_len=16, injection="hyperconnections",
                         grad_recurrences=2)


def test_hyper_full_k_allowed(make_config):
    cfg = make_config(recurrences=4, injection="hyperconnections", grad_recurrences=4)
    assert cfg.k_grad == 4


@pytest.mark.parametrize("k", [0, 5])
def test_grad_recurrences_range(make_config, k):
    with pytest.raises(ValueError, match="must lie in"):
        make_config(recurrences=4, grad_recurrences=k)


def test_unknown_injection(make_config):
    with pytest.raises(ValueError, match="is not one of"):
        make_config(injection="gated")
