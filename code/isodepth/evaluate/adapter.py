"""lm-eval model adapter for isodepth checkpoints, registered as the model `isodepth`.

Scoring rules, which every request type shares:
- A sequence is BOS + tokens. BOS (the training corpus's document separator) is the
  prefix token, so the first real token is predicted too.
- Context and continuation are tokenized separately, so a loglikelihood score covers
  exactly the continuation's tokens. As in lm-eval, a word-boundary space belongs at the
  start of the continuation (context "Answer:", continuation " Paris").
- Each scored token is predicted once, from at most `seq_len` preceding tokens: inputs
  longer than the model's context are left-truncated, and a continuation longer than the
  context is scored in consecutive windows (see `plan_windows`).
- Requests are sorted by length for batching and the results are returned in request order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours, see below)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .. import paths
from ..checkpoint import load_checkpoint
from ..model import LoopedLM
from ..tokenizer import TOKENIZER_FILE, bos_id, load_tokenizer
from .metrics import ContinuationLogprob

# lm-eval's get_model() imports lm_eval.models only when its registry is empty; importing it
# above keeps `--model hf` and friends available in a process that has registered ours.

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256


def plan_windows(n_tokens: int, first_target: int, seq_len: int) -> list[tuple[int, int, int]]:
    """Split the prediction of tokens[first_target:n_tokens] into model windows.

    Returns (input_start, first_scored, stop) triples: the window's input is
    tokens[input_start:stop - 1] (at most seq_len tokens) and its last stop - first_scored
    outputs predict tokens[first_scored:stop]. Every target is predicted exactly once. Each
    window's input ends just before its last target and is seq_len tokens long unless the
    sequence starts inside it, so targets earlier in a window have shorter contexts.
    """
    if first_target < 1:
        raise ValueError(f"first_target={first_target}: token 0 has no preceding token to predict it from")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be at least 1")
    windows = []
    start = first_target
    while start < n_tokens:
        stop = min(start + seq_len, n_tokens)
        windows.append((max(0, stop - 1 - seq_len), start, stop))
        start = stop
    return windows


@dataclass
class _Score:
    logprob: float = 0.0
    greedy: bool = True
    n_tokens: int = 0


def _parse_batch_size(batch_size) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    text = str(batch_size)
    if text.startswith("auto"):
        log.info("batch_size=%s: automatic batch sizing is not implemented; using %d",
                 text, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"batch_size={batch_size!r} is not an integer; pass e.g. batch_size=32") from None
    if value < 1:
        raise ValueError(f"batch_size={value} must be at least 1")
    return value


def _select_device(device: str | None) -> torch.device:
    """Return the requested torch device; CUDA falls back to CPU when torch has no CUDA device.

    lm-eval's command line passes device=cuda by default, so without the fallback every run
    on a CPU-only machine would fail unless it passed --device cpu.
    """
    chosen = torch.device(device or "cpu")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; evaluating on cpu", device)
        return torch.device("cpu")
    return chosen


def _resolve_tokenizer_path(checkpoint: Path | None, meta: dict) -> Path:
    """Tokenizer next to the weights, else the one named in config.json, else the corpus tokenizer."""
    if checkpoint is not None and (checkpoint / "tokenizer.json").exists():
        return checkpoint / "tokenizer.json"
    named = meta.get("tokenizer")
    if named:
        path = Path(named)
        return path if path.is_absolute() else paths.ROOT / path
    return TOKENIZER_FILE


@register_model("isodepth")
class IsodepthLM(LM):
    """lm-eval model backed by a LoopedLM checkpoint folder (model.safetensors + config.json).

    model_args: checkpoint=FOLDER (required unless a model object is passed), tokenizer=PATH
    (default: tokenizer.json in the folder, else the one config.json names), batch_size
    (windows per forward pass), device, max_gen_toks (default for generate_until).
    """

    def __init__(self, checkpoint: str | Path | None = None, tokenizer=None, batch_size=None,
                 device: str | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 max_batch_size=None, model: LoopedLM | None = None, meta: dict | None = None,
                 progress: bool = True, **unused):
        super().__init__()
        if unused:
            log.debug("ignoring model arguments %s", sorted(unused))
        self._device = _select_device(device)
        self.batch_size = _parse_batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.progress = progress in (True, "True", "true", "1", 1)

        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if model is None:
            if self.checkpoint is None:
                raise ValueError("the isodepth model needs a checkpoint folder: pass "
                                 "--model_args checkpoint=checkpoints/GRID/RUN/final")
            model, meta = load_checkpoint(self.checkpoint, device=self._device)
        self.model = model.to(self._device).eval()
        self.meta = dict(meta or {})
        self.seq_len = int(self.model.cfg.seq_len)

        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            self.tokenizer_path = Path(tokenizer) if tokenizer else _resolve_tokenizer_path(self.checkpoint, self.meta)
            self.tok = load_tokenizer(self.tokenizer_path)
        else:
            self.tokenizer_path = None
            self.tok = tokenizer
        vocab = self.tok.get_vocab_size()
        if vocab != self.model.cfg.vocab_size:
            raise ValueError(
                f"tokenizer {self.tokenizer_path or '(object)'} has {vocab} tokens but the model expects "
                f"{self.model.cfg.vocab_size}; pass the tokenizer the checkpoint was trained with, "
                "e.g. --model_args tokenizer=data/corpus/tokenizer.json")
        self.bos = bos_id(self.tok)
        log.info("isodepth model %s: run %s, r=%s, context %d tokens, batch %d windows, device %s",
                 self.checkpoint or "(in memory)", self.meta.get("run_id"), self.model.cfg.recurrences,
                 self.seq_len, self.batch_size, self._device)

    # lm-eval metadata ---------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return self.seq_len

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer_path or f"isodepth-bpe-{self.tok.get_vocab_size()}")

    def get_model_info(self) -> dict:
        """Checkpoint identity that lm-eval copies into the `config` section of its results."""
        cfg = self.model.cfg
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "run_id": self.meta.get("run_id"),
            "grid": self.meta.get("grid"),
            "recurrences": cfg.recurrences,
            "effective_depth": cfg.effective_depth,
            "d_model": cfg.d_model,
            "seq_len": cfg.seq_len,
            "injection": cfg.injection,
            "final_val_loss": self.meta.get("final_val_loss"),
            "tokenizer": self.tokenizer_name,
        }

    # tokenization -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    # scoring ------------------------------------------------------------------------------

    @torch.inference_mode()
    def score_sequences(self, sequences: list[tuple[list[int], int]], desc: str = "scoring",
                        disable_tqdm: bool = False) -> list[_Score]:
        """Sum the log-probabilities of tokens[first_target:] for each (tokens, first_target).

        Returns one score per sequence, in the given order. Windows of all sequences are
        batched together, longest first, with right padding that the causal model ignores.
        """
        jobs = []  # (sequence index, input ids, scored target ids)
        for index, (tokens, first_target) in enumerate(sequences):
            for input_start, first_scored, stop in plan_windows(len(tokens), first_target, self.seq_len):
                jobs.append((index, tokens[input_start : stop - 1], tokens[first_scored:stop]))
        order = sorted(range(len(jobs)), key=lambda k: -len(jobs[k][1]))

        scores = [_Score() for _ in sequences]
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc=desc, disable=disable_tqdm or not self.progress or len(batches) < 2):
            batch = [jobs[k] for k in order[start : start + self.batch_size]]
            width = max(len(inputs) for _, inputs, _ in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, inputs, _) in enumerate(batch):
                ids[row, : len(inputs)] = torch.tensor(inputs, dtype=torch.long)
            logits = self.model(ids.to(self._device))

            for row, (index, inputs, targets) in enumerate(batch):
                n = len(targets)
                logprobs = logits[row, len(inputs) - n : len(inputs)].float().log_softmax(dim=-1)
                target_ids = torch.tensor(targets, dtype=torch.long, device=logprobs.device)
                picked = logprobs.gather(1, target_ids.unsqueeze(1)).squeeze(1)
                score = scores[index]
                score.logprob += picked.sum().item()
                score.greedy = score.greedy and bool((logprobs.argmax(dim=-1) == target_ids).all())
                score.n_tokens += n
        return scores

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Return (log-likelihood in nats, is_greedy) of each continuation given its context."""
        contexts = self.encode_batch([request.args[0] for request in requests])
        continuations = self.encode_batch([request.args[1] for request in requests])
        sequences = []
        for request, context_ids, continuation_ids in zip(requests, contexts, continuations):
            if not continuation_ids:
                log.warning("empty continuation after context %r scores 0 nats over 0 tokens", request.args[0][-40:])
            sequences.append(([self.bos] + context_ids + continuation_ids, 1 + len(context_ids)))

        scores = self.score_sequences(sequences, desc="loglikelihood", disable_tqdm=disable_tqdm)
        results = []
        for request, score in zip(requests, scores):
            result = (ContinuationLogprob(score.logprob, score.n_tokens), score.greedy)
            self.cache_hook.add_partial("loglikelihood", request.args[:2], result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Return the log-likelihood of each whole string after BOS, every token scored once."""
        sequences = [([self.bos] + ids, 1) for ids in self.encode_batch([r.args[0] for r in requests])]
        scores = self.score_sequences(sequences, desc="loglikelihood_rolling", disable_tqdm=disable_tqdm)
        results = []
        for request, score in zip(requests, scores):
            result = ContinuationLogprob(score.logprob, score.n_tokens)
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), result)
            results.append(result)
        return results

    # generation ---------------------------------------------------------------------------

    def _generation_settings(self, gen_kwargs: dict | None) -> tuple[list[str], int]:
        kwargs = dict(gen_kwargs or {})
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0.0:
            raise ValueError(f"generation settings {kwargs} ask for sampling; the isodepth model "
                             "decodes greedily only: set do_sample=False and temperature=0")
        until = kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
        return [stop for stop in until if stop], max_new

    @torch.inference_mode()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode greedily from each context until a stop string, BOS or max_gen_toks new tokens.

        The model attends to the last seq_len tokens. Sequences of equal window length are
        batched, so no padding enters attention.
        """
        states = []
        for request in requests:
            context, gen_kwargs = request.args[0], request.args[1]
            until, max_new = self._generation_settings(gen_kwargs)
            states.append({"tokens": [self.bos] + self.encode(context), "new": [], "until": until,
                           "max_new": max_new, "text": "", "done": max_new <= 0})

        active = [s for s in states if not s["done"]]
        while active:
            by_length: dict[int, list[dict]] = {}
            for state in active:
                by_length.setdefault(min(len(state["tokens"]), self.seq_len), []).append(state)
            for length, group in by_length.items():
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start : start + self.batch_size]
                    ids = torch.tensor([s["tokens"][-length:] for s in chunk], dtype=torch.long)
                    next_ids = self.model(ids.to(self._device))[:, -1].argmax(dim=-1).tolist()
                    for state, token in zip(chunk, next_ids):
                        self._advance(state, token)
            active = [s for s in active if not s["done"]]

        results = []
        for request, state in zip(requests, states):
            self.cache_hook.add_partial("generate_until", request.args[:2], state["text"])
            results.append(state["text"])
        return results

    def _advance(self, state: dict, token: int) -> None:
        if token == self.bos:
            state["done"] = True
            return
        state["tokens"].append(token)
        state["new"].append(token)
        text = self.decode(state["new"])
        cuts = [text.index(stop) for stop in state["until"] if stop in text]
        if cuts:
            text = text[: min(cuts)]
            state["done"] = True
        state["text"] = text
        if len(state["new"]) >= state["max_new"]:
            state["done"] = True
