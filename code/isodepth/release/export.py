"""Export a checkpoint as a Hugging Face Hub model folder that loads back with `from_pretrained`.

The folder contains model.safetensors, config.json (our checkpoint layout: {"model": ModelConfig
fields, run metadata...}, so isodepth.checkpoint.load_checkpoint reads it too), a README.md
model card with the run's accounting and results, and tokenizer.json. Loading:

    from isodepth.release.export import HubLoopedLM
    model = HubLoopedLM.from_pretrained("path/to/folder")   # or a Hub repo id once uploaded
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from .. import paths
from ..checkpoint import load_checkpoint
from ..config import ModelConfig
from ..model import LoopedLM
from .authors import is_authors_checkpoint, load_authors_checkpoint

log = logging.getLogger(__name__)

PAPER_URL = "https://arxiv.org/abs/2604.21106"
TOKENIZER_NAME = "tokenizer.json"
CARD_TAGS = ["looped-transformer", "depth-recurrence", "scaling-laws"]


class HubLoopedLM(LoopedLM, PyTorchModelHubMixin, library_name="isodepth", license="mit",
                  paper_url=PAPER_URL, tags=list(CARD_TAGS)):
    """LoopedLM with save_pretrained / from_pretrained / push_to_hub.

    The constructor takes config.json's content: model is the ModelConfig dict, and every other
    key (run id, accounting, losses) is kept in release_metadata and written back on save.
    Loading is strict: a missing or unexpected tensor raises.
    """

    def __init__(self, model: dict, **metadata):
        super().__init__(ModelConfig.from_dict(model))
        self.release_metadata = metadata

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        # huggingface_hub 2.4.0 defaults to strict=False, which would accept a partial state dict.
        return super()._from_pretrained(model_id=model_id, revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, local_files_only=local_files_only,
                                        token=token, map_location=map_location, strict=strict, **model_kwargs)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        return build_model_card(self.cfg, self.release_metadata)

    @classmethod
    def from_looped(cls, model: LoopedLM, metadata: dict) -> "HubLoopedLM":
        """Wrap a trained LoopedLM (weights are copied) with the given run metadata."""
        metadata = {key: value for key, value in metadata.items() if key != "model"}
        hub_model = cls(model=model.cfg.to_dict(), **metadata)
        hub_model.load_state_dict(model.state_dict(), strict=True)
        return hub_model.eval()


def export_checkpoint(checkpoint: Path, out: Path, *, tokenizer: Path | None = None,
                      include_tokenizer: bool = True, overwrite: bool = False, record: Path | None = None) -> Path:
    """Write the Hub folder for a checkpoint (ours, or the authors' model_<step>.pt format) to out.

    tokenizer defaults to the checkpoint's own tokenizer entry; include_tokenizer=False leaves it
    out. The run record defaults to
    data/runs/<grid>/<run_id>/record.json when it exists, and its training and validation
    numbers go into the model card. The folder is written beside out and renamed into place
    only after a reload reproduces the logits exactly.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if is_authors_checkpoint(checkpoint):
        model, metadata = load_authors_checkpoint(checkpoint)
    else:
        model, metadata = load_checkpoint(checkpoint)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another folder or pass --overwrite to replace it")

    metadata = dict(metadata)
    record_data = _read_record(metadata, record)
    if record_data is not None:
        metadata["training"] = _training_summary(record_data)
        if metadata.get("final_val_loss") is None:
            metadata["final_val_loss"] = record_data.get("final_val_loss")
        metadata.setdefault("accounting", record_data.get("accounting"))
        metadata["validation_tokens"] = record_data.get("validation_tokens")

    tokenizer_path = _resolve_tokenizer(tokenizer, metadata.get("tokenizer")) if include_tokenizer else None
    if tokenizer_path is not None:
        _check_tokenizer(tokenizer_path, model.cfg)
    metadata["tokenizer"] = TOKENIZER_NAME if tokenizer_path is not None else None

    hub_model = HubLoopedLM.from_looped(model, metadata)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        hub_model.save_pretrained(staging)
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, staging / TOKENIZER_NAME)
        check_roundtrip(model, staging)
        _replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("exported %s to %s", checkpoint, out)
    return out


def check_roundtrip(model: LoopedLM, folder: Path) -> None:
    """Reload folder with from_pretrained and require logits identical to model's on a probe batch."""
    reloaded = HubLoopedLM.from_pretrained(str(folder))
    generator = torch.Generator().manual_seed(0)
    length = min(model.cfg.seq_len, 16)
    probe = torch.randint(0, model.cfg.vocab_size, (2, length), generator=generator)
    model.eval()
    with torch.no_grad():
        expected, actual = model(probe), reloaded(probe)
    if not torch.equal(expected, actual):
        difference = (expected - actual).abs().max().item()
        raise RuntimeError(f"export to {folder} does not reproduce the logits (max difference {difference}); "
                           "the folder was not kept")


def build_model_card(cfg: ModelConfig, metadata: dict) -> ModelCard:
    """Model card: YAML metadata for the Hub, then architecture, accounting, results and usage."""
    data = ModelCardData(library_name="isodepth", license="mit", tags=list(CARD_TAGS))
    run_id = metadata.get("run_id") or "unnamed run"
    accounting = metadata.get("accounting") or {}
    training = metadata.get("training") or {}
    loss = metadata.get("final_val_loss")

    lines = [
        f"# isodepth looped LM: {run_id}",
        "",
        "A prelude-recur-coda looped transformer trained by `isodepth`, a reproduction of "
        f"Schwethelm, Rueckert and Kaissis, *How Much Is One Recurrence Worth? Iso-Depth Scaling Laws "
        f"for Looped Language Models* ([arXiv 2604.21106]({PAPER_URL})).",
        "",
        "## Architecture",
        "",
        "| field | value |",
        "|---|---|",
        f"| grid | {metadata.get('grid') or 'n/a'} |",
        f"| recurrences r | {cfg.recurrences} |",
        f"| layers | prelude {cfg.n_prelude} + recurrent block {cfg.n_recur_layers} x {cfg.recurrences} "
        f"+ coda {cfg.n_coda} (effective depth {cfg.effective_depth}) |",
        f"| width d_model | {cfg.d_model} ({cfg.n_head} heads of {cfg.head_dim}) |",
        f"| input injection | {cfg.injection if cfg.looped else 'none (r = 1)'} |",
        f"| recurrences with gradient k | {cfg.k_grad} |",
        f"| vocabulary | {cfg.vocab_size} tokens (lm_head padded to {cfg.padded_vocab_size}) |",
        f"| context | {cfg.seq_len} tokens |",
        "",
        "## Accounting",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| N_once (non-embedding parameters run once) | {_number(accounting.get('n_once'))} |",
        f"| N_rec (shared block + injection) | {_number(accounting.get('n_rec'))} |",
        f"| non-embedding parameters | {_number(accounting.get('n_total'))} |",
        f"| training FLOPs per token | {_number(accounting.get('flops_per_token'))} |",
        f"| training FLOPs | {_number(accounting.get('training_flops'))} |",
        f"| training tokens | {_number(training.get('tokens_seen'))} |",
        f"| optimiser steps | {_number(training.get('steps_done'))} |",
        "",
        "## Results",
        "",
        f"- Final validation loss: {_loss(loss)}"
        + (f" over {metadata['validation_tokens']:,} held-out tokens." if metadata.get("validation_tokens") else "."),
    ]
    source = metadata.get("source")
    if source:
        lines.append(f"- Converted from the authors' checkpoint `{source.get('model_file')}` "
                     f"(step {source.get('step')}, sha256 `{source.get('model_sha256')}`).")
    authors_meta = metadata.get("authors_meta") or {}
    if authors_meta.get("val_bpb") is not None:
        lines.append(f"- Authors' validation bits per byte at that step: {authors_meta['val_bpb']}.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from isodepth.release.export import HubLoopedLM",
        "",
        'model = HubLoopedLM.from_pretrained("<this folder or repo id>")',
        "logits = model(token_ids)  # (batch, T) int64 -> (batch, T, vocab) soft-capped logits",
        "```",
        "",
        "Files: `model.safetensors` (weights), `config.json` (model configuration and run metadata)"
        + (f", `{TOKENIZER_NAME}` (Hugging Face `tokenizers` BPE)." if metadata.get("tokenizer") else
           ". No tokenizer is included."),
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _read_record(metadata: dict, record: Path | None) -> dict | None:
    if record is None and metadata.get("grid") and metadata.get("run_id"):
        candidate = paths.RUNS / metadata["grid"] / metadata["run_id"] / "record.json"
        record = candidate if candidate.exists() else None
    if record is None:
        return None
    return json.loads(Path(record).read_text(encoding="utf-8"))


def _training_summary(record: dict) -> dict:
    training = record.get("training") or {}
    keys = ("steps", "steps_done", "tokens", "tokens_seen", "tokens_per_step", "learning_rates", "schedule")
    summary = {key: training[key] for key in keys if key in training}
    summary["status"] = record.get("status")
    return summary


def _resolve_tokenizer(explicit: Path | None, recorded) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer {path} not found")
        return path
    if not recorded:
        log.warning("the checkpoint names no tokenizer; exporting without %s (pass --tokenizer to add one)",
                    TOKENIZER_NAME)
        return None
    path = Path(recorded)
    path = path if path.is_absolute() else paths.ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} named by the checkpoint not found; pass --tokenizer PATH")
    return path


def _check_tokenizer(path: Path, cfg: ModelConfig) -> None:
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(str(path)).get_vocab_size()
    if size != cfg.vocab_size:
        raise ValueError(f"tokenizer {path} has {size} tokens but the model's vocab_size is {cfg.vocab_size}; "
                         "pass the tokenizer the model was trained with")


def _replace_folder(staging: Path, out: Path) -> None:
    """Rename staging to out; an existing out is swapped away first and deleted after the rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old)


def _number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    if isinstance(value, float) and value >= 1e6:
        return f"{value:.4g}"
    return f"{int(value):,}"


def _loss(value) -> str:
    return "n/a" if value is None else f"{value:.4f} nats per token"
