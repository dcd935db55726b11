"""The authors' checkpoint format: strict key mapping, weights-only loading and identical logits.

The fixture writer and the reference forward pass below are written independently of
isodepth.release.authors: the writer renames our parameters with its own table, and the
reference computes logits straight from the authors' state dict with their conventions
(padded embedding, rotary turn by -theta, norms n1/n3, norm_recur after each pass).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from isodepth.checkpoint import load_checkpoint
from isodepth.config import ModelConfig
from isodepth.model import LoopedLM
from isodepth.release.authors import (AuthorsCheckpointError, config_from_authors, convert_authors_checkpoint,
                                      find_checkpoint_files, load_authors_checkpoint)

THEIR_MODE = {"linear": "inject_init_prelude", "additive": "additive", "passthrough": "passthrough",
              "hyperconnections": "hyperconnect"}
LAYER_NAMES = [("norm_attn.weight", "n1.weight"), ("attn.q.weight", "attn.c_q.weight"),
               ("attn.k.weight", "attn.c_k.weight"), ("attn.v.weight", "attn.c_v.weight"),
               ("attn.out.weight", "attn.c_proj.weight"), ("norm_mlp.weight", "n3.weight"),
               ("mlp.up.weight", "mlp.c_fc.weight"), ("mlp.down.weight", "mlp.c_proj.weight")]
SIDE_EFFECTS: list[str] = []


def tiny_config(**changes) -> ModelConfig:
    values = dict(d_model=16, head_dim=8, vocab_size=50, padded_vocab_size=64, seq_len=16, n_prelude=1,
                  n_recur_layers=2, n_coda=1, recurrences=3, injection="linear")
    values.update(changes)
    return ModelConfig(**values)


def random_model(cfg: ModelConfig, seed: int = 0) -> LoopedLM:
    """A LoopedLM whose every tensor (norm scales, injection, lanes included) is random."""
    torch.manual_seed(seed)
    model = LoopedLM(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def authors_state_dict(model: LoopedLM) -> dict[str, torch.Tensor]:
    """Rename and transform our weights into the authors' layout (the fixture writer)."""
    cfg = model.cfg
    ours = model.state_dict()
    heads, half = cfg.n_head, cfg.head_dim // 2

    def flip(weight):
        flipped = weight.clone().reshape(heads, cfg.head_dim, -1)
        flipped[:, half:, :] *= -1
        return flipped.reshape(weight.shape)

    padding = torch.randn(cfg.padded_vocab_size - cfg.vocab_size, cfg.d_model)
    state = {
        "transformer.wte.weight": torch.cat([ours["embed.weight"], padding]),
        "norm_emb.weight": ours["norm_embed.weight"],
        "norm_recur.weight": ours["norm_recur.weight"],
        "norm_final.weight": ours["norm_final.weight"],
        "lm_head.weight": ours["lm_head.weight"],
    }
    for section, count in (("prelude", cfg.n_prelude), ("recur", cfg.n_recur_layers), ("coda", cfg.n_coda)):
        for index in range(count):
            for our_name, their_name in LAYER_NAMES:
                tensor = ours[f"{section}.{index}.{our_name}"]
                if their_name in ("attn.c_q.weight", "attn.c_k.weight"):
                    tensor = flip(tensor)
                state[f"transformer.{section}.{index}.{their_name}"] = tensor
    if "inject.weight" in ours:
        state["inject.weight"] = ours["inject.weight"]
    if "hyper.read" in ours:
        state.update(lane_alpha=ours["hyper.read"], lane_mixing=ours["hyper.mix"], lane_beta=ours["hyper.write"])
    return {key: value.clone() for key, value in state.items()}


def authors_model_config(cfg: ModelConfig) -> dict:
    return {
        "sequence_len": cfg.seq_len, "vocab_size": cfg.vocab_size, "size": cfg.d_model // 64,
        "n_head": cfg.n_head, "n_kv_head": cfg.n_head, "n_embd": cfg.d_model,
        "n_prelude": cfg.n_prelude, "n_recur_block": cfg.n_recur_layers, "n_coda": cfg.n_coda,
        "num_recur": cfg.recurrences, "bptt_k": cfg.k_grad,
        "input_injection": THEIR_MODE[cfg.injection] if cfg.looped else "passthrough",
        "num_lanes": cfg.hc_lanes, "logit_softcap": cfg.softcap,
    }


def write_authors_checkpoint(folder: Path, model: LoopedLM, step: int = 1234, dtype=torch.float32,
                             state: dict | None = None, model_config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else authors_state_dict(model)
    torch.save({key: value.to(dtype) for key, value in state.items()}, folder / f"model_{step:06d}.pt")
    meta = {"step": step, "val_bpb": 1.234, "model_config": model_config or authors_model_config(model.cfg),
            "user_config": {"size": 10}, "device_batch_size": 32, "max_seq_len": model.cfg.seq_len}
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(meta))
    return folder


def reference_logits(state: dict, config: dict, idx: torch.Tensor) -> torch.Tensor:
    """Compute logits directly from the authors' state dict, in their conventions."""
    d, heads = config["n_embd"], config["n_head"]
    head_dim, (batch, T) = d // heads, idx.shape

    def rms(x, weight=None):
        y = F.rms_norm(x, (x.size(-1),), eps=1e-6)
        return y * weight if weight is not None else y

    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    def rotate(x):
        x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2:]
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)

    def block(prefix, x):
        h = rms(x, state[prefix + "n1.weight"])
        q, k, v = (h @ state[prefix + f"attn.c_{name}.weight"].T for name in "qkv")
        q, k = (rms(rotate(t.view(batch, T, heads, head_dim))) for t in (q, k))
        v = v.view(batch, T, heads, head_dim)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + y.transpose(1, 2).reshape(batch, T, d) @ state[prefix + "attn.c_proj.weight"].T
        h = rms(x, state[prefix + "n3.weight"])
        return x + F.relu(h @ state[prefix + "mlp.c_fc.weight"].T).square() @ state[prefix + "mlp.c_proj.weight"].T

    def section(name, count, x):
        for index in range(count):
            x = block(f"transformer.{name}.{index}.", x)
        return x

    x = rms(state["transformer.wte.weight"][idx], state["norm_emb.weight"])
    e = section("prelude", config["n_prelude"], x)
    mode = config["input_injection"]
    if mode == "hyperconnect":
        lanes = e.unsqueeze(0).expand(config["num_lanes"], -1, -1, -1)
        for i in range(config["num_recur"]):
            u = torch.einsum("n,nbtd->btd", state["lane_alpha"][i], lanes)
            s = rms(section("recur", config["n_recur_block"], u), state["norm_recur.weight"])
            lanes = torch.einsum("ij,jbtd->ibtd", state["lane_mixing"][i], lanes) + \
                state["lane_beta"][i][:, None, None, None] * s[None]
        s = lanes.sum(0)
    else:
        s = torch.zeros_like(e) if mode == "additive" else e
        for _ in range(config["num_recur"]):
            if mode == "inject_init_prelude":
                u = torch.cat([e, s], dim=-1) @ state["inject.weight"].T
            elif mode == "additive":
                u = s + e
            else:
                u = s
            s = rms(section("recur", config["n_recur_block"], u), state["norm_recur.weight"])
    x = rms(section("coda", config["n_coda"], s), state["norm_final.weight"])
    logits = (x @ state["lm_head.weight"].T)[..., : config["vocab_size"]]
    return config["logit_softcap"] * torch.tanh(logits / config["logit_softcap"])


CASES = {
    "linear r3": tiny_config(),
    "additive r2": tiny_config(recurrences=2, injection="additive"),
    "passthrough r2": tiny_config(recurrences=2, injection="passthrough"),
    "hyperconnections r2": tiny_config(recurrences=2, injection="hyperconnections"),
    "truncated bptt r4": tiny_config(recurrences=4, n_recur_layers=1, grad_recurrences=2),
    "plain r1": tiny_config(recurrences=1, n_prelude=0, n_recur_layers=4, n_coda=0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_authors_checkpoint_identical_logits(tmp_path, case):
    original = random_model(CASES[case])
    folder = write_authors_checkpoint(tmp_path / "isoflops_1e18_loop_s10", original)
    model, metadata = load_authors_checkpoint(folder)

    assert model.cfg == original.cfg
    idx = torch.randint(0, original.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original(idx)
        converted = model(idx)
    assert torch.equal(converted, expected)

    their_state = torch.load(folder / "model_001234.pt", weights_only=True)
    reference = reference_logits(their_state, authors_model_config(original.cfg), idx)
    assert torch.allclose(converted, reference, atol=1e-5, rtol=1e-5)

    assert metadata["run_id"] == "isoflops_1e18_loop_s10"
    assert metadata["authors_meta"]["val_bpb"] == 1.234
    assert metadata["final_val_loss"] is None


def test_convert_writes_our_checkpoint(tmp_path):
    original = random_model(tiny_config())
    folder = write_authors_checkpoint(tmp_path / "authors", original)
    out = convert_authors_checkpoint(folder, tmp_path / "ours", run_id="loop4-s10")
    model, meta = load_checkpoint(out)
    idx = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(idx), original(idx))
    assert meta["run_id"] == "loop4-s10"
    assert meta["source"]["format"] == "authors-nanochat"
    assert len(meta["source"]["model_sha256"]) == 64


def test_missing_and_unexpected_keys_listed(tmp_path):
    original = random_model(tiny_config())
    state = authors_state_dict(original)
    del state["transformer.recur.1.mlp.c_fc.weight"]
    state["transformer.h.0.attn.c_q.weight"] = torch.zeros(16, 16)
    write_authors_checkpoint(tmp_path / "ckpt", original, state=state)
    with pytest.raises(AuthorsCheckpointError) as error:
        load_authors_checkpoint(tmp_path / "ckpt")
    message = str(error.value)
    assert "missing keys: ['transformer.recur.1.mlp.c_fc.weight']" in message
    assert "unexpected keys: ['transformer.h.0.attn.c_q.weight']" in message


def test_wrong_shape_listed(tmp_path):
    original = random_model(tiny_config())
    state = authors_state_dict(original)
    state["transformer.coda.0.mlp.c_fc.weight"] = torch.zeros(32, 16)
    write_authors_checkpoint(tmp_path / "ckpt", original, state=state)
    with pytest.raises(AuthorsCheckpointError, match=r"transformer.coda.0.mlp.c_fc.weight \(32, 16\)"):
        load_authors_checkpoint(tmp_path / "ckpt")


def test_compiled_prefix_and_bf16_accepted(tmp_path):
    original = random_model(tiny_config())
    state = {"_orig_mod." + key: value for key, value in authors_state_dict(original).items()}
    write_authors_checkpoint(tmp_path / "ckpt", original, state=state, dtype=torch.bfloat16)
    model, _ = load_authors_checkpoint(tmp_path / "ckpt")
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32, name


class ArbitraryCode:
    """Unpickling this object would call SIDE_EFFECTS.append, standing in for any callable."""

    def __reduce__(self):
        return SIDE_EFFECTS.append, ("unpickled",)


def test_pickle_code_never_runs(tmp_path):
    original = random_model(tiny_config())
    write_authors_checkpoint(tmp_path / "ckpt", original)
    state = authors_state_dict(original)
    state["payload"] = ArbitraryCode()
    torch.save(state, tmp_path / "ckpt" / "model_001234.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_authors_checkpoint(tmp_path / "ckpt")
    assert SIDE_EFFECTS == []


def test_step_selection(tmp_path):
    original = random_model(tiny_config())
    write_authors_checkpoint(tmp_path / "ckpt", original, step=100)
    write_authors_checkpoint(tmp_path / "ckpt", original, step=2000)
    assert find_checkpoint_files(tmp_path / "ckpt").step == "002000"
    assert find_checkpoint_files(tmp_path / "ckpt", step=100).step == "000100"
    assert find_checkpoint_files(tmp_path / "ckpt" / "model_000100.pt").step == "000100"
    with pytest.raises(FileNotFoundError, match="model_000007.pt"):
        find_checkpoint_files(tmp_path / "ckpt", step=7)


def test_config_translation_rejections():
    base = authors_model_config(tiny_config())
    with pytest.raises(AuthorsCheckpointError, match="n_kv_head=1"):
        config_from_authors({**base, "n_kv_head": 1})
    with pytest.raises(AuthorsCheckpointError, match="unknown model_config keys"):
        config_from_authors({**base, "mystery": 3})
    with pytest.raises(AuthorsCheckpointError, match="not representable"):
        config_from_authors({**base, "num_recur": 1, "input_injection": "inject_init_prelude"})
    legacy = {key: value for key, value in base.items() if key != "num_recur"}
    legacy.update(train_recur_mean=3.0, sandwich_norm=False)
    assert config_from_authors(legacy).recurrences == 3
    assert config_from_authors({**base, "bptt_k": 2}).grad_recurrences == 2
