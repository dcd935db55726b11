"""Per-example scoring and task-level aggregation of the downstream metrics.

The primary metric is the continuation loss: the negative log-likelihood of the gold
continuation in nats per token, token-weighted within a task (sum of nats over sum of
tokens). `acc` is the greedy exact match of the gold continuation for cloze tasks and the
arg-max over the summed log-likelihoods of the choices for multiple-choice tasks.
`loss_per_byte` (nats per UTF-8 byte of the gold continuation) needs no token counts, so it
also works for models other than the isodepth adapter.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


class ContinuationLogprob(float):
    """Log-likelihood in nats of a continuation that also carries its length in tokens.

    The isodepth adapter returns these in place of plain floats, so the task's results
    function can weight the loss by tokens without knowing the model's tokenizer. It
    pickles (lm-eval's response cache) and serialises to JSON as a plain float.
    """

    n_tokens: int

    def __new__(cls, value: float, n_tokens: int) -> "ContinuationLogprob":
        obj = super().__new__(cls, value)
        obj.n_tokens = int(n_tokens)
        return obj

    def __reduce__(self):
        return (ContinuationLogprob, (float(self), self.n_tokens))


def token_count(logprob: float) -> int | None:
    """Return the token count attached by the isodepth adapter, or None for a plain float."""
    return getattr(logprob, "n_tokens", None)


def doc_to_text(doc: dict) -> str:
    return doc["prompt"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def doc_to_gold(doc: dict) -> int:
    return int(doc["gold"])


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def gold_text(doc: dict) -> str:
    """Return the gold continuation of a cloze or multiple-choice document."""
    if "choices" in doc and doc.get("choices"):
        return doc["choices"][int(doc["gold"])]
    return doc["answer"]


def _loss_entries(doc: dict, logprob: float) -> dict:
    nats = -float(logprob)
    n_bytes = len(gold_text(doc).encode("utf-8"))
    return {
        "loss": (nats, token_count(logprob)),
        "loss_per_byte": (nats, n_bytes),
        "n_tokens": token_count(logprob),
    }


def process_cloze(doc: dict, results: list) -> dict:
    """Score one cloze document from its single (log-likelihood, is_greedy) pair."""
    logprob, is_greedy = results[0]
    return {**_loss_entries(doc, logprob), "acc": float(bool(is_greedy))}


def process_choice(doc: dict, results: list) -> dict:
    """Score one multiple-choice document: one (log-likelihood, is_greedy) pair per choice.

    The loss is that of the gold choice. `acc` is 1 when the gold choice has the highest
    summed log-likelihood, and ties go to the first choice, as with Python's max.
    """
    logprobs = [float(pair[0]) for pair in results]
    gold = int(doc["gold"])
    if not 0 <= gold < len(logprobs):
        raise ValueError(f"gold index {gold} is outside the {len(logprobs)} choices of document {doc.get('id')!r}")
    best = max(range(len(logprobs)), key=lambda i: logprobs[i])
    return {**_loss_entries(doc, results[gold][0]), "acc": float(best == gold)}


_warned_missing_counts = False


def token_weighted_loss(items: list) -> float:
    """Aggregate (nats, tokens) pairs into nats per token: sum of nats over sum of tokens.

    Returns NaN, with one warning, when token counts are missing. That happens when a
    model other than the isodepth adapter scored the requests.
    """
    global _warned_missing_counts
    if not items:
        return math.nan
    if any(n_tokens is None for _, n_tokens in items):
        if not _warned_missing_counts:
            log.warning("continuation loss per token needs token counts, which only the "
                        "isodepth model adapter reports; use loss_per_byte for other models")
            _warned_missing_counts = True
        return math.nan
    total_tokens = sum(n_tokens for _, n_tokens in items)
    if total_tokens == 0:
        return math.nan
    return sum(nats for nats, _ in items) / total_tokens


def total_tokens(items: list) -> float:
    """Return the summed gold-continuation token counts of a task, or NaN when a count is missing."""
    if not items or any(n_tokens is None for n_tokens in items):
        return math.nan
    return float(sum(items))


def byte_weighted_loss(items: list) -> float:
    """Aggregate (nats, bytes) pairs into nats per UTF-8 byte."""
    total_bytes = sum(n_bytes for _, n_bytes in items)
    if total_bytes == 0:
        return math.nan
    return sum(nats for nats, _ in items) / total_bytes
