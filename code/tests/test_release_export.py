"""Hub export: folder contents, model card, and from_pretrained reproducing the logits exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from isodepth import paths
from isodepth.checkpoint import load_checkpoint, save_checkpoint
from isodepth.config import ModelConfig
from isodepth.model import LoopedLM
from isodepth.release.export import HubLoopedLM, export_checkpoint

TOKENIZER = paths.CORPUS / "tokenizer.json"


def tokenizer_vocab_size() -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER)).get_vocab_size()


@pytest.fixture
def checkpoint(tmp_path):
    cfg = ModelConfig(d_model=16, head_dim=8, vocab_size=tokenizer_vocab_size(), padded_vocab_size=1024, seq_len=32,
                      n_prelude=1, n_recur_layers=2, n_coda=1, recurrences=4, injection="linear")
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    metadata = {"run_id": "C1e12-r4-s4", "grid": "test-grid", "recurrences": 4, "final_val_loss": 4.56789,
                "accounting": {"n_once": 6240, "n_rec": 6752, "n_total": 12992, "flops_per_token": 123456.0,
                               "training_flops": 1.0e12},
                "tokenizer": "data/corpus/tokenizer.json"}
    folder = save_checkpoint(model, tmp_path / "final", metadata)
    return folder, model.eval()


def test_export_roundtrip_identical(checkpoint, tmp_path):
    folder, model = checkpoint
    out = export_checkpoint(folder, tmp_path / "hub")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                       "tokenizer.json"]

    reloaded = HubLoopedLM.from_pretrained(str(out))
    idx = torch.randint(0, model.cfg.vocab_size, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(reloaded(idx), model(idx))
    assert reloaded.cfg == model.cfg
    assert reloaded.release_metadata["run_id"] == "C1e12-r4-s4"
    assert not reloaded.training

    assert (out / "tokenizer.json").read_bytes() == TOKENIZER.read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model.cfg.to_dict()
    assert config["tokenizer"] == "tokenizer.json"

    ours, meta = load_checkpoint(out)
    with torch.no_grad():
        assert torch.equal(ours(idx), model(idx))
    assert meta["final_val_loss"] == 4.56789


def test_model_card_contents(checkpoint, tmp_path):
    folder, _ = checkpoint
    card = (export_checkpoint(folder, tmp_path / "hub") / "README.md").read_text()
    assert card.startswith("---\n")
    assert "library_name: isodepth" in card
    assert "license: mit" in card
    assert "# isodepth looped LM: C1e12-r4-s4" in card
    assert "4.5679 nats per token" in card
    assert "| N_once (non-embedding parameters run once) | 6,240 |" in card
    assert "| recurrences r | 4 |" in card


def test_record_enriches_card(checkpoint, tmp_path):
    folder, _ = checkpoint
    record = {"status": "completed", "final_val_loss": 4.5, "validation_tokens": 12800,
              "training": {"steps": 100, "steps_done": 100, "tokens": 64000, "tokens_seen": 64000},
              "accounting": {"n_once": 1}}
    record_path = tmp_path / "record.json"
    record_path.write_text(json.dumps(record))
    out = export_checkpoint(folder, tmp_path / "hub", record=record_path)
    card = (out / "README.md").read_text()
    assert "over 12,800 held-out tokens" in card
    assert "| training tokens | 64,000 |" in card
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["status"] == "completed"
    assert config["final_val_loss"] == 4.56789, "the checkpoint's own loss wins over the record's"


def test_existing_output_needs_overwrite(checkpoint, tmp_path):
    folder, _ = checkpoint
    out = tmp_path / "hub"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_checkpoint(folder, out)
    export_checkpoint(folder, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert not list(tmp_path.glob(".hub.*")), "staging and backup folders are removed"


def test_tokenizer_size_mismatch_rejected(tmp_path):
    cfg = ModelConfig(d_model=16, head_dim=8, vocab_size=50, padded_vocab_size=64, seq_len=16, n_prelude=1,
                      n_recur_layers=1, n_coda=1, recurrences=2)
    folder = save_checkpoint(LoopedLM(cfg), tmp_path / "small", {"tokenizer": "data/corpus/tokenizer.json"})
    with pytest.raises(ValueError, match="vocab_size is 50"):
        export_checkpoint(folder, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()

    out = export_checkpoint(folder, tmp_path / "hub-no-tokenizer", include_tokenizer=False)
    assert not (out / "tokenizer.json").exists()
    assert "No tokenizer is included." in (out / "README.md").read_text()


def test_from_pretrained_is_strict(checkpoint, tmp_path):
    folder, _ = checkpoint
    out = export_checkpoint(folder, tmp_path / "hub")
    weights = load_file(str(out / "model.safetensors"))
    del weights["recur.1.mlp.up.weight"]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="recur.1.mlp.up.weight"):
        HubLoopedLM.from_pretrained(str(out))
