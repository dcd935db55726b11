"""Shared fixtures: offline Hugging Face libraries, temporary output folders and small models."""

import os

# Set before any test imports a Hugging Face library, so no test can reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from isodepth import paths  # noqa: E402
from isodepth.config import ModelConfig  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Point the default run and checkpoint folders at tmp_path for every test.

    The defaults are read from isodepth.paths at call time, so a test that does not pass
    runs_dir or checkpoint_dir still cannot write into data/runs or checkpoints/, whatever
    ISODEPTH_ROOT is set to.
    """
    runs = tmp_path / "runs"
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(paths, "RUNS", runs)
    monkeypatch.setattr(paths, "CHECKPOINTS", checkpoints)
    return {"runs_dir": runs, "checkpoint_dir": checkpoints}


@pytest.fixture
def runs_dir(isolated_outputs):
    return isolated_outputs["runs_dir"]


@pytest.fixture
def checkpoint_dir(isolated_outputs):
    return isolated_outputs["checkpoint_dir"]


@pytest.fixture(autouse=True)
def single_thread():
    """Run torch on one thread, because a background sweep may own the other cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**overrides) -> ModelConfig:
    """A model small enough for CPU tests: d = 32, 4 heads of 8, context 16, vocab 100 (head 128)."""
    values = dict(d_model=32, head_dim=8, vocab_size=100, padded_vocab_size=128, seq_len=16,
                  n_prelude=1, n_recur_layers=2, n_coda=1, recurrences=2)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def make_config():
    """Factory for small model configurations; keyword arguments override the defaults."""
    return small_config
