"""LoopedLM structure, initialisation, soft-cap, causality and input checks."""

import math

import pytest
import torch

from isodepth.config import ModelConfig, iso_depth_config
from isodepth.model import LoopedLM, RMSNorm

WIDE = 256  # wide enough that sample statistics of the init are within a few percent


def wide_model(r: int = 2, **overrides) -> LoopedLM:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=WIDE, head_dim=64, vocab_size=500, padded_vocab_size=512, seq_len=16,
                      n_prelude=1, n_recur_layers=1, n_coda=1, recurrences=r, **overrides)
    return LoopedLM(cfg)


def test_injection_init_identity():
    model = wide_model()
    weight = model.inject.weight
    assert torch.equal(weight[:, :WIDE], torch.eye(WIDE))
    assert torch.count_nonzero(weight[:, WIDE:]) == 0


def test_injection_shape():
    assert tuple(wide_model().inject.weight.shape) == (WIDE, 2 * WIDE)


def test_plain_model_no_injection():
    model = wide_model(r=1)
    assert model.inject is None
    assert model.hyper is None
    assert not [name for name, _ in model.named_parameters() if name.startswith(("inject", "hyper"))]


def test_plain_iso_depth_stack():
    """For r = 1 the iso-depth config is a plain stack of effective_depth layers."""
    cfg = iso_depth_config(d_model=32, recurrences=1, effective_depth=10, n_prelude=1, n_coda=1,
                           head_dim=8, vocab_size=100, seq_len=16, injection="additive")
    model = LoopedLM(cfg)
    assert len(list(model.layers())) == 10
    assert cfg.injection == "linear"
    assert model.inject is None


def test_embedding_init_std():
    std = wide_model().embed.weight.std().item()
    assert abs(std - 1.0) < 0.02


def test_lm_head_init_std():
    std = wide_model().lm_head.weight.std().item()
    assert abs(std - 1e-3) < 0.02e-3


def matrices(model: LoopedLM, names: tuple[str, ...]) -> list[torch.Tensor]:
    out = []
    for layer in model.layers():
        modules = {"q": layer.attn.q, "k": layer.attn.k, "v": layer.attn.v, "out": layer.attn.out,
                   "up": layer.mlp.up, "down": layer.mlp.down}
        out.extend(modules[name].weight for name in names)
    return out


@pytest.mark.parametrize("name", ["q", "k", "v", "out", "up"])
def test_uniform_init_bound(name):
    bound = math.sqrt(3 / WIDE)
    for weight in matrices(wide_model(), (name,)):
        assert weight.abs().max().item() <= bound
        assert weight.abs().max().item() > 0.99 * bound


@pytest.mark.parametrize("name", ["q", "k", "v", "out", "up"])
def test_uniform_init_std(name):
    """U(-a, a) with a = sqrt(3/d) has std 1/sqrt(d)."""
    for weight in matrices(wide_model(), (name,)):
        assert abs(weight.std().item() * math.sqrt(WIDE) - 1) < 0.03


def test_down_init_bound():
    bound = math.sqrt(3 / (4 * WIDE))
    for weight in matrices(wide_model(), ("down",)):
        assert weight.abs().max().item() <= bound
        assert weight.abs().max().item() > 0.99 * bound


def test_norm_scales_one():
    model = wide_model()
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 3 + 2 * 3  # embedding, recurrence and final norms + two per layer
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))


def test_no_biases():
    names = [name for name, _ in wide_model().named_parameters() if name.endswith("bias")]
    assert names == []


def test_logits_shape(make_config):
    cfg = make_config()
    logits = LoopedLM(cfg)(torch.randint(0, cfg.vocab_size, (3, 10)))
    assert logits.shape == (3, 10, cfg.vocab_size)
    assert logits.dtype == torch.float32


def test_softcap_bounds(make_config):
    """Raw head outputs in the hundreds come out within [-15, 15].

    The bound is closed in float32, because tanh rounds to exactly 1 beyond |x| of about 9.
    """
    cfg = make_config()
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    captured = {}
    model.lm_head.register_forward_hook(lambda module, args, out: captured.update(z=out))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 100.0)
        logits = model(torch.randint(0, cfg.vocab_size, (2, cfg.seq_len)))
    assert captured["z"].abs().max().item() > 100.0  # the cap has work to do
    assert logits.abs().max().item() <= 15.0
    assert logits.abs().max().item() > 14.0


def test_softcap_formula(make_config):
    """Logits are 15 tanh(z / 15) of the head output z over the real vocabulary."""
    cfg = make_config()
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    captured = {}
    model.lm_head.register_forward_hook(lambda module, args, out: captured.update(z=out))
    with torch.no_grad():
        logits = model(torch.randint(0, cfg.vocab_size, (2, 8)))
    z = captured["z"][..., : cfg.vocab_size]
    torch.testing.assert_close(logits, 15.0 * torch.tanh(z / 15.0))


def test_loss_matches_logits(make_config):
    cfg = make_config()
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    targets = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        loss = model(idx, targets)
        logits = model(idx)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("injection,r", [("linear", 1), ("linear", 3), ("additive", 3),
                                         ("hyperconnections", 3)])
def test_causal(make_config, injection, r):
    cfg = make_config(injection=injection, recurrences=r)
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    with torch.no_grad():
        if model.inject is not None:
            model.inject.weight.normal_(0.0, 0.05)  # let h reach u, so every path is exercised
    idx = torch.randint(0, cfg.vocab_size, (1, cfg.seq_len))
    changed = idx.clone()
    cut = 9
    changed[0, cut:] = (changed[0, cut:] + 1) % cfg.vocab_size
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :cut], after[:, :cut], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, cut:], after[:, cut:])


def test_sequence_too_long(make_config):
    cfg = make_config()
    model = LoopedLM(cfg)
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, cfg.seq_len + 1, dtype=torch.long))


def test_full_context_accepted(make_config):
    cfg = make_config()
    logits = LoopedLM(cfg)(torch.zeros(1, cfg.seq_len, dtype=torch.long))
    assert logits.shape[1] == cfg.seq_len


def test_config_rejects_bad_width():
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        ModelConfig(d_model=30, head_dim=8, vocab_size=100, padded_vocab_size=128, seq_len=16,
                    n_prelude=1, n_recur_layers=1, n_coda=1, recurrences=2)


def test_config_rejects_bad_depth():
    with pytest.raises(ValueError, match="not a positive multiple"):
        iso_depth_config(d_model=32, recurrences=3, effective_depth=10, n_prelude=1, n_coda=1,
                         head_dim=8, vocab_size=100, seq_len=16)


def test_config_round_trip(make_config):
    cfg = make_config(injection="hyperconnections", hc_lanes=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_config_rejects_unknown_key(make_config):
    values = make_config().to_dict() | {"n_layers": 4}
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict(values)


def test_padded_vocab_rounding():
    cfg = iso_depth_config(d_model=128, recurrences=1, effective_depth=20, n_prelude=2, n_coda=2,
                           head_dim=128, vocab_size=32001, seq_len=2048)
    assert cfg.padded_vocab_size == 32064
