"""Model checkpoints as a folder: model.safetensors (weights) + config.json (model config and run metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .io import atomic_write_json
from .model import LoopedLM

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(model: LoopedLM, folder: Path, metadata: dict | None = None) -> Path:
    """Write weights and config to folder atomically; metadata (run id, accounting, losses) goes in config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / WEIGHTS)
    atomic_write_json(folder / CONFIG, {"model": model.cfg.to_dict(), **(metadata or {})})
    return folder


def load_config(folder: Path) -> tuple[ModelConfig, dict]:
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; a checkpoint folder contains {WEIGHTS} and {CONFIG}")
    meta = json.loads(path.read_text())
    if "model" not in meta:
        raise ValueError(f"{path} has no 'model' section with the model configuration")
    return ModelConfig.from_dict(meta["model"]), meta


def load_checkpoint(folder: Path, device: str | torch.device = "cpu") -> tuple[LoopedLM, dict]:
    """Load a checkpoint folder strictly (a missing or unexpected tensor is an error)."""
    cfg, meta = load_config(folder)
    model = LoopedLM(cfg)
    weights = Path(folder) / WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found in checkpoint folder {folder}")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.to(device).eval(), meta
