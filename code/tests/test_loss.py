"""The fused, chunked soft-cap cross-entropy against the plain PyTorch ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from isodepth.loss import chunk_rows, softcap_cross_entropy


def _plain(h, weight, targets, vocab, cap):
    logits = (h @ weight.t())[..., :vocab]
    logits = logits.float() if logits.dtype != torch.float64 else logits
    logits = cap * torch.tanh(logits / cap)
    return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 64, None])
def test_matches_plain_loss_and_gradients(rows_per_chunk):
    torch.manual_seed(0)
    vocab, padded, d = 37, 40, 12
    h = torch.randn(3, 11, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(padded, d, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, vocab, (3, 11))
    cap = 2.5  # small, so the soft-cap bends the logits and its derivative matters

    expected = _plain(h, weight, targets, vocab, cap)
    grad_h, grad_w = torch.autograd.grad(expected * 1.7, (h, weight))
    got = softcap_cross_entropy(h, weight, targets, vocab, cap, rows_per_chunk)
    got_h, got_w = torch.autograd.grad(got * 1.7, (h, weight))

    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_h, grad_h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_w, grad_w, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(got_w[vocab:]) == 0  # padded rows of the projection get no gradient


def test_no_grad_returns_loss_only():
    torch.manual_seed(1)
    h, weight = torch.randn(20, 8), torch.randn(16, 8)
    targets = torch.randint(0, 16, (20,))
    with torch.no_grad():
        got = softcap_cross_entropy(h, weight, targets, 16, 30.0, 3)
    torch.testing.assert_close(got, _plain(h, weight, targets, 16, 30.0))
    assert not got.requires_grad


def test_gradient_of_the_weight_alone():
    torch.manual_seed(2)
    h = torch.randn(9, 6)
    weight = torch.randn(10, 6, requires_grad=True)
    targets = torch.randint(0, 10, (9,))
    (expected,) = torch.autograd.grad(_plain(h, weight, targets, 10, 5.0), weight)
    (got,) = torch.autograd.grad(softcap_cross_entropy(h, weight, targets, 10, 5.0, 4), weight)
    torch.testing.assert_close(got, expected)


def test_out_of_vocabulary_targets_rejected():
    h, weight = torch.randn(4, 8), torch.randn(16, 8)
    with pytest.raises(ValueError, match=r"token ids in \[0, 12\).*from 0 to 13"):
        softcap_cross_entropy(h, weight, torch.tensor([0, 1, 13, 2]), 12, 30.0)


def test_chunk_rows_two_megabytes():
    assert chunk_rows(32_001) == 16
    assert chunk_rows(1_024) == 512
    assert chunk_rows(10**8) == 1


def test_model_fused_matches_plain():
    from isodepth.config import ModelConfig
    from isodepth.model import LoopedLM

    torch.manual_seed(3)
    cfg = ModelConfig(d_model=16, head_dim=8, vocab_size=50, padded_vocab_size=64, seq_len=8, n_prelude=1,
                      n_recur_layers=2, n_coda=1, recurrences=2, softcap=3.0)
    model = LoopedLM(cfg)
    x = torch.randint(0, 50, (3, 9))
    losses, grads = [], []
    for fused in (True, False):
        model.fused_loss = fused
        model.zero_grad()
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for fused_grad, plain_grad in zip(*grads):
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-7)
