"""Reader for the study authors' checkpoints (a nanochat fork) and converter to our checkpoint folder.

Their format is a folder with model_<step>.pt, a pickled state dict (step zero-padded to six
digits, or an alias such as "pre_warmdown"), beside meta_<step>.json, which contains
"model_config" (the keyword arguments of their GPTConfig) and run metadata such as step,
val_bpb (bits per byte, not nats per token) and user_config.

NOTE: The key names, config fields and numerics below follow the authors' published code
(github.com/kschwethelm/looped-lm-scaling, nanochat/gpt.py and nanochat/checkpoint_manager.py
at commit 1223664). No released checkpoint was available to check them against. If a release
uses other names, loading fails with the full list of missing and unexpected keys, and
AUTHORS_MODEL_KEYS and AUTHORS_LAYER_KEYS are the tables to extend.

Besides renaming, conversion changes two tensors:
  * transformer.wte.weight has padded_vocab_size rows in their model and vocab_size rows in
    ours. The padding rows are never looked up (token ids are below vocab_size), so we drop
    them.
  * Their rotary embedding turns (x1, x2) by -theta, ours by +theta. Negating the second half of
    every head's rows of c_q and c_k makes our attention scores equal theirs exactly, because
    the sign flip commutes with the per-head QK RMSNorm and cancels in the q.k dot product.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..config import ModelConfig
from ..model import LoopedLM
from .verify import sha256_file

log = logging.getLogger(__name__)

# Their module path -> ours, for tensors outside the layers.
AUTHORS_MODEL_KEYS = {
    "transformer.wte.weight": "embed.weight",
    "norm_emb.weight": "norm_embed.weight",
    "norm_recur.weight": "norm_recur.weight",
    "norm_final.weight": "norm_final.weight",
    "lm_head.weight": "lm_head.weight",
}
# Present only for input_injection == "inject_init_prelude" (our "linear").
AUTHORS_INJECTION_KEYS = {"inject.weight": "inject.weight"}
# Present only for input_injection == "hyperconnect": (r, K), (r, K, K) and (r, K) scalars.
AUTHORS_HYPER_KEYS = {"lane_alpha": "hyper.read", "lane_mixing": "hyper.mix", "lane_beta": "hyper.write"}
# Inside transformer.<section>.<i>. for section in prelude, recur, coda -> inside <section>.<i>.
AUTHORS_LAYER_KEYS = {
    "n1.weight": "norm_attn.weight",
    "attn.c_q.weight": "attn.q.weight",
    "attn.c_k.weight": "attn.k.weight",
    "attn.c_v.weight": "attn.v.weight",
    "attn.c_proj.weight": "attn.out.weight",
    "n3.weight": "norm_mlp.weight",
    "mlp.c_fc.weight": "mlp.up.weight",
    "mlp.c_proj.weight": "mlp.down.weight",
}
SECTIONS = ("prelude", "recur", "coda")
ROPE_FLIPPED = ("attn.c_q.weight", "attn.c_k.weight")

AUTHORS_INJECTION = {
    "inject_init_prelude": "linear",
    "additive": "additive",
    "passthrough": "passthrough",
    "hyperconnect": "hyperconnections",
}
REQUIRED_CONFIG = ("sequence_len", "vocab_size", "n_head", "n_embd", "n_prelude", "n_recur_block", "n_coda",
                   "num_recur")
# Defaults of their GPTConfig for fields that older checkpoints may lack.
OPTIONAL_CONFIG = {"n_kv_head": None, "bptt_k": None, "input_injection": "inject_init_prelude",
                   "num_lanes": 2, "logit_softcap": 15.0, "size": None}
LEGACY_RENAMED = {"train_recur_mean": "num_recur"}
LEGACY_DROPPED = ("recur_warm_start", "sandwich_norm", "train_recur_max")
PAD_VOCAB_TO = 64  # their GPT pads the embedding and lm_head rows to a multiple of 64
COMPILE_PREFIX = "_orig_mod."  # added to every key by torch.compile wrappers
AUTHORS_ROPE_BASE = 10000.0
AUTHORS_NORM_EPS = 1e-6
META_KEYS_KEPT = ("step", "val_bpb", "val_loss", "user_config", "max_seq_len", "device_batch_size",
                  "total_batch_size")

_STEP_FILE = re.compile(r"^model_(.+)\.pt$")


class AuthorsCheckpointError(ValueError):
    """An authors' checkpoint that cannot be mapped onto our model."""


@dataclass(frozen=True)
class AuthorsFiles:
    model: Path  # model_<step>.pt
    meta: Path  # meta_<step>.json
    step: str  # file infix: six-digit step or alias


def find_checkpoint_files(path: Path, step: str | int | None = None) -> AuthorsFiles:
    """Locate model_<step>.pt and meta_<step>.json in a folder (default: the highest numeric step).

    path may also be the model_<step>.pt file itself.
    """
    path = Path(path)
    if path.is_file():
        match = _STEP_FILE.match(path.name)
        if not match:
            raise AuthorsCheckpointError(f"{path} is not named model_<step>.pt")
        folder, infix = path.parent, match.group(1)
    else:
        if not path.is_dir():
            raise FileNotFoundError(f"authors' checkpoint {path} not found")
        folder = path
        if step is not None:
            infix = f"{int(step):06d}" if str(step).isdigit() else str(step)
        else:
            steps = sorted(m.group(1) for p in folder.iterdir()
                           if (m := _STEP_FILE.match(p.name)) and m.group(1).isdigit())
            if not steps:
                raise FileNotFoundError(f"no model_<step>.pt files in {folder}")
            infix = max(steps, key=int)
    model, meta = folder / f"model_{infix}.pt", folder / f"meta_{infix}.json"
    for needed in (model, meta):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found; an authors' checkpoint needs model_{infix}.pt "
                                    f"and meta_{infix}.json side by side")
    return AuthorsFiles(model=model, meta=meta, step=infix)


def config_from_authors(model_config: dict, source: str = "meta") -> ModelConfig:
    """Translate their GPTConfig keyword arguments into our ModelConfig; reject what we cannot represent."""
    values = dict(model_config)
    for old, new in LEGACY_RENAMED.items():
        if old in values and new not in values:
            values[new] = int(values.pop(old))
    for dropped in LEGACY_DROPPED:
        values.pop(dropped, None)
    unknown = sorted(set(values) - set(REQUIRED_CONFIG) - set(OPTIONAL_CONFIG))
    if unknown:
        raise AuthorsCheckpointError(f"{source}: unknown model_config keys {unknown}; extend "
                                     "isodepth.release.authors.config_from_authors to interpret them")
    missing = [key for key in REQUIRED_CONFIG if key not in values]
    if missing:
        raise AuthorsCheckpointError(f"{source}: model_config is missing the keys {missing}")
    values = {**OPTIONAL_CONFIG, **values}

    d_model, n_head = int(values["n_embd"]), int(values["n_head"])
    if d_model % n_head:
        raise AuthorsCheckpointError(f"{source}: n_embd={d_model} is not a multiple of n_head={n_head}")
    n_kv_head = values["n_kv_head"] if values["n_kv_head"] is not None else n_head
    if n_kv_head != n_head:
        raise AuthorsCheckpointError(f"{source}: n_kv_head={n_kv_head} differs from n_head={n_head}; "
                                     "grouped-query attention is not supported by our model")
    mode = values["input_injection"]
    if mode not in AUTHORS_INJECTION:
        raise AuthorsCheckpointError(f"{source}: input_injection={mode!r} is not one of {list(AUTHORS_INJECTION)}")
    recurrences = int(values["num_recur"])
    injection = AUTHORS_INJECTION[mode]
    if recurrences == 1:
        # With one pass, additive (0 + e) and passthrough (e) feed the block the same input, which
        # is our plain model. A learned injection or lanes at r = 1 have no counterpart in ours.
        if mode in ("inject_init_prelude", "hyperconnect"):
            raise AuthorsCheckpointError(
                f"{source}: num_recur=1 with input_injection={mode!r} is not representable; our r = 1 "
                "model has no injection layer or lanes")
        injection = "linear"  # the value our planner stores for r = 1, where it is unused
    bptt_k = values["bptt_k"]
    grad_recurrences = None if bptt_k is None or int(bptt_k) >= recurrences else int(bptt_k)
    vocab_size = int(values["vocab_size"])

    return ModelConfig(
        d_model=d_model,
        head_dim=d_model // n_head,
        vocab_size=vocab_size,
        padded_vocab_size=int(math.ceil(vocab_size / PAD_VOCAB_TO) * PAD_VOCAB_TO),
        seq_len=int(values["sequence_len"]),
        n_prelude=int(values["n_prelude"]),
        n_recur_layers=int(values["n_recur_block"]),
        n_coda=int(values["n_coda"]),
        recurrences=recurrences,
        injection=injection,
        hc_lanes=int(values["num_lanes"]),
        grad_recurrences=grad_recurrences,
        rope_base=AUTHORS_ROPE_BASE,
        softcap=float(values["logit_softcap"]),
        norm_eps=AUTHORS_NORM_EPS,
    )


def authors_key_map(cfg: ModelConfig) -> dict[str, str]:
    """Build the full {their key: our key} table for one configuration."""
    table = dict(AUTHORS_MODEL_KEYS)
    for section, count in zip(SECTIONS, (cfg.n_prelude, cfg.n_recur_layers, cfg.n_coda)):
        for index in range(count):
            for theirs, ours in AUTHORS_LAYER_KEYS.items():
                table[f"transformer.{section}.{index}.{theirs}"] = f"{section}.{index}.{ours}"
    if cfg.looped and cfg.injection == "linear":
        table.update(AUTHORS_INJECTION_KEYS)
    if cfg.looped and cfg.injection == "hyperconnections":
        table.update(AUTHORS_HYPER_KEYS)
    return table


def flip_rope_halves(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Negate the second half of each head's output rows; converts q/k weights between the rotary
    conventions. The operation is its own inverse."""
    heads = weight.view(-1, head_dim, weight.shape[-1]).clone()
    heads[:, head_dim // 2:, :].neg_()
    return heads.view_as(weight)


def convert_state_dict(state: dict, cfg: ModelConfig, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Map their state dict onto our parameter names strictly; raise listing every key or shape at fault."""
    state = {(key[len(COMPILE_PREFIX):] if key.startswith(COMPILE_PREFIX) else key): value
             for key, value in state.items()}
    table = authors_key_map(cfg)
    missing = sorted(set(table) - set(state))
    unexpected = sorted(set(state) - set(table))
    if missing or unexpected:
        raise AuthorsCheckpointError(
            f"{source}: state dict does not match model_config (r={cfg.recurrences}, injection={cfg.injection}); "
            f"missing keys: {missing or 'none'}; unexpected keys: {unexpected or 'none'}"
        )

    expected_shapes = {key: tuple(value.shape) for key, value in LoopedLM(cfg).state_dict().items()}
    converted, wrong = {}, []
    for theirs, ours in table.items():
        tensor = state[theirs]
        if not isinstance(tensor, torch.Tensor):
            raise AuthorsCheckpointError(f"{source}: {theirs} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to(torch.float32)
        if theirs == "transformer.wte.weight" and tensor.shape[0] == cfg.padded_vocab_size:
            tensor = tensor[: cfg.vocab_size]
        if theirs.endswith(ROPE_FLIPPED) and tensor.shape == expected_shapes[ours]:
            tensor = flip_rope_halves(tensor, cfg.head_dim)
        if tuple(tensor.shape) != expected_shapes[ours]:
            wrong.append(f"{theirs} {tuple(state[theirs].shape)} -> {ours} {expected_shapes[ours]}")
        converted[ours] = tensor.contiguous()
    if wrong:
        raise AuthorsCheckpointError(f"{source}: tensor shapes do not match model_config: {'; '.join(wrong)}")
    return converted


def load_authors_checkpoint(path: Path, step: str | int | None = None) -> tuple[LoopedLM, dict]:
    """Load their checkpoint into our LoopedLM (strict, weights_only unpickling); return (model, metadata).

    The metadata is ready for save_checkpoint: it records the source files, their sha256 and
    the kept part of their meta file. It never fills final_val_loss, because their val_bpb
    is measured in bits per byte, not in nats per token.
    """
    files = find_checkpoint_files(path, step)
    meta = json.loads(files.meta.read_text(encoding="utf-8"))
    if "model_config" not in meta:
        raise AuthorsCheckpointError(f"{files.meta}: no 'model_config' section")
    cfg = config_from_authors(meta["model_config"], str(files.meta))

    # weights_only=True: the file comes from outside, and a full unpickle could run arbitrary code.
    state = torch.load(files.model, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise AuthorsCheckpointError(f"{files.model} contains a {type(state).__name__}, not a state dict")
    dtypes = sorted({str(value.dtype) for value in state.values() if isinstance(value, torch.Tensor)})
    if dtypes != ["torch.float32"]:
        log.info("%s: converting tensors of dtypes %s to float32", files.model, dtypes)

    model = LoopedLM(cfg)
    model.load_state_dict(convert_state_dict(state, cfg, str(files.model)), strict=True)
    model.eval()
    metadata = {
        "run_id": files.model.parent.name,
        "grid": None,
        "recurrences": cfg.recurrences,
        "final_val_loss": None,
        "tokenizer": None,
        "source": {
            "format": "authors-nanochat",
            "model_file": files.model.name,
            "meta_file": files.meta.name,
            "step": files.step,
            "model_sha256": sha256_file(files.model),
        },
        "authors_meta": {key: meta[key] for key in META_KEYS_KEPT if key in meta},
    }
    log.info("loaded authors' checkpoint %s (step %s, r=%d, d=%d)", files.model, files.step,
             cfg.recurrences, cfg.d_model)
    return model, metadata


def convert_authors_checkpoint(path: Path, out: Path, step: str | int | None = None,
                               run_id: str | None = None) -> Path:
    """Convert their checkpoint into our folder format (model.safetensors + config.json) at out."""
    model, metadata = load_authors_checkpoint(path, step)
    if run_id:
        metadata["run_id"] = run_id
    save_checkpoint(model, Path(out), metadata)
    log.info("wrote %s", out)
    return Path(out)


def is_authors_checkpoint(path: Path) -> bool:
    """True when path is a model_<step>.pt file or a folder containing one."""
    path = Path(path)
    if path.is_file():
        return bool(_STEP_FILE.match(path.name))
    return path.is_dir() and any(_STEP_FILE.match(p.name) for p in path.iterdir())
