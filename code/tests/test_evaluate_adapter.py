"""The lm-eval adapter against brute-force, token-by-token scores of a tiny model."""

from __future__ import annotations

import json
import math
import pickle
import random

import pytest
import torch
from lm_eval.api.instance import Instance

from isodepth.checkpoint import save_checkpoint
from isodepth.config import iso_depth_config
from isodepth.evaluate.adapter import IsodepthLM, plan_windows
from isodepth.evaluate.metrics import ContinuationLogprob
from isodepth.model import LoopedLM
from isodepth.tokenizer import bos_id, load_tokenizer

SEQ_LEN = 8  # short, so ordinary prompts exceed the context


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = iso_depth_config(d_model=16, recurrences=2, effective_depth=4, n_prelude=1, n_coda=1, head_dim=8,
                           vocab_size=1024, seq_len=SEQ_LEN)
    model = LoopedLM(cfg)
    with torch.no_grad():  # a larger head than at initialisation, so predictions differ by token
        model.lm_head.weight.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def lm(tiny_model, tokenizer):
    return IsodepthLM(model=tiny_model, tokenizer=tokenizer, meta={"run_id": "tiny"}, batch_size=3, progress=False)


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


@torch.no_grad()
def brute_force(model, tokens, first_target):
    """Score tokens[first_target:] one at a time with one forward pass per token.

    Token j is predicted from tokens[start:j], where start is the left edge of the
    truncated window that contains j (the window plan has its own tests above).
    """
    starts = {}
    for input_start, first_scored, stop in plan_windows(len(tokens), first_target, SEQ_LEN):
        starts.update({j: input_start for j in range(first_scored, stop)})
    total, greedy = 0.0, True
    for j in range(first_target, len(tokens)):
        window = torch.tensor([tokens[starts[j] : j]])
        logprobs = model(window)[0, -1].log_softmax(-1)
        total += logprobs[tokens[j]].item()
        greedy = greedy and int(logprobs.argmax()) == tokens[j]
    return total, greedy


def _requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in args_list]


PAIRS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("", " In the beginning"),
    ("a = 3, b = 7. Then b =", " 7"),
    ("The", " king said unto the people that the kingdom of heaven is at hand and repent"),
    ("Context: a long passage that certainly does not fit in eight tokens of context at all.\nAnswer:", " yes"),
    ("x", " y"),
]


def test_plan_windows_cover_targets_once():
    for n_tokens in range(2, 30):
        for first in range(1, n_tokens):
            for seq_len in (1, 2, 3, 8):
                covered = []
                for input_start, first_scored, stop in plan_windows(n_tokens, first, seq_len):
                    assert stop - 1 - input_start <= seq_len
                    assert input_start == max(0, stop - 1 - seq_len)
                    assert input_start <= first_scored - 1
                    covered.extend(range(first_scored, stop))
                assert covered == list(range(first, n_tokens))


def test_plan_windows_match_lm_eval_example():
    # BOS + tokens 0..9 with a 4-token context: the three windows of lm-eval's docstring.
    assert plan_windows(11, 1, 4) == [(0, 1, 5), (4, 5, 9), (6, 9, 11)]


def test_plan_windows_reject_first_token():
    with pytest.raises(ValueError, match="first_target=0"):
        plan_windows(5, 0, 4)


def test_loglikelihood_matches_brute_force(lm, tiny_model, tokenizer):
    order = list(range(len(PAIRS)))
    random.Random(3).shuffle(order)
    shuffled = [PAIRS[i] for i in order]
    results = lm.loglikelihood(_requests("loglikelihood", shuffled))

    bos = bos_id(tokenizer)
    for (context, continuation), (logprob, greedy) in zip(shuffled, results):
        context_ids = [bos] + _encode(tokenizer, context)
        continuation_ids = _encode(tokenizer, continuation)
        expected, expected_greedy = brute_force(tiny_model, context_ids + continuation_ids, len(context_ids))
        assert logprob == pytest.approx(expected, abs=1e-4), (context, continuation)
        assert greedy == expected_greedy
        assert logprob.n_tokens == len(continuation_ids)


@torch.no_grad()
def test_loglikelihood_short_request_uses_whole_prefix(lm, tiny_model, tokenizer):
    # Without truncation every token is scored from its complete prefix, BOS included.
    context, continuation = "x", " y"
    tokens = [bos_id(tokenizer)] + _encode(tokenizer, context) + _encode(tokenizer, continuation)
    assert len(tokens) <= SEQ_LEN
    expected = sum(tiny_model(torch.tensor([tokens[:j]]))[0, -1].log_softmax(-1)[tokens[j]].item()
                   for j in range(len(tokens) - len(_encode(tokenizer, continuation)), len(tokens)))
    [(logprob, _)] = lm.loglikelihood(_requests("loglikelihood", [(context, continuation)]))
    assert logprob == pytest.approx(expected, abs=1e-5)


def test_loglikelihood_greedy_continuation(lm, tiny_model, tokenizer):
    context = "Question: Who?\nAnswer:"
    tokens = [bos_id(tokenizer)] + _encode(tokenizer, context)
    with torch.no_grad():
        best = int(tiny_model(torch.tensor([tokens[-SEQ_LEN:]]))[0, -1].argmax())
    continuation = tokenizer.decode([best])
    assert _encode(tokenizer, continuation) == [best]  # the arg-max token round-trips through text
    [(_, greedy)] = lm.loglikelihood(_requests("loglikelihood", [(context, continuation)]))
    assert greedy
    [(_, greedy)] = lm.loglikelihood(_requests("loglikelihood", [(context, tokenizer.decode([(best + 1) % 1000 + 1]))]))
    assert not greedy


def test_loglikelihood_independent_of_batch_size(tiny_model, tokenizer):
    requests = _requests("loglikelihood", PAIRS)
    one = IsodepthLM(model=tiny_model, tokenizer=tokenizer, batch_size=1, progress=False).loglikelihood(requests)
    many = IsodepthLM(model=tiny_model, tokenizer=tokenizer, batch_size=64, progress=False).loglikelihood(requests)
    for (a, ga), (b, gb) in zip(one, many):
        assert a == pytest.approx(b, abs=1e-5)
        assert ga == gb


def test_rolling_scores_every_token_once(lm, tiny_model, tokenizer):
    texts = [
        "In the beginning God created the heavens and the earth. And the earth was without form, and void.",
        "short",
        "def f(x):\n    return x * 2\n\nprint(f(21))\n" * 3,
    ]
    results = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]))
    for text, logprob in zip(texts, results):
        tokens = [bos_id(tokenizer)] + _encode(tokenizer, text)
        expected, _ = brute_force(tiny_model, tokens, 1)
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert logprob.n_tokens == len(tokens) - 1
    assert len(_encode(tokenizer, texts[0])) > 2 * SEQ_LEN  # several windows were needed


@torch.no_grad()
def _greedy_reference(model, tokenizer, context, n_new):
    tokens = [bos_id(tokenizer)] + _encode(tokenizer, context)
    new = []
    for _ in range(n_new):
        token = int(model(torch.tensor([tokens[-SEQ_LEN:]]))[0, -1].argmax())
        if token == bos_id(tokenizer):
            break
        tokens.append(token)
        new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_generate_until_greedy_and_stops(lm, tiny_model, tokenizer):
    contexts = ["Question: Who?\nAnswer:", "In the beginning", "a = 3, b = 7. Then b =", "x"]
    free = lm.generate_until(_requests("generate_until", [(c, {"until": [], "max_gen_toks": 12}) for c in contexts]))
    for context, text in zip(contexts, free):
        assert text == _greedy_reference(tiny_model, tokenizer, context, 12)

    # A stop string taken from the free-running output cuts the text where it first occurs.
    stop_requests, expected = [], []
    for context, text in zip(contexts, free):
        if len(text) >= 4:
            stop = text[2:4]
            stop_requests.append((context, {"until": [stop, "\x00never"], "max_gen_toks": 12}))
            expected.append(text[: text.index(stop)])
    assert stop_requests
    stopped = lm.generate_until(_requests("generate_until", stop_requests))
    assert stopped == expected


def test_generate_until_rejects_sampling(lm):
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until(_requests("generate_until", [("x", {"do_sample": True, "temperature": 0.7})]))


def test_checkpoint_folder_and_model_info(tmp_path, tiny_model):
    folder = save_checkpoint(tiny_model, tmp_path / "final", {"run_id": "micro-r2-s6", "grid": "micro",
                                                              "recurrences": 2, "final_val_loss": 5.5,
                                                              "tokenizer": "data/corpus/tokenizer.json"})
    lm = IsodepthLM(checkpoint=str(folder), batch_size="auto", device="cuda", progress=False)
    info = lm.get_model_info()
    assert info["run_id"] == "micro-r2-s6"
    assert info["recurrences"] == 2
    assert info["seq_len"] == SEQ_LEN
    assert lm.device.type in ("cpu", "cuda")
    assert lm.batch_size == 32


def test_missing_checkpoint_message():
    with pytest.raises(ValueError, match="checkpoint=checkpoints/GRID/RUN/final"):
        IsodepthLM()


def test_tokenizer_vocab_mismatch(tokenizer):
    cfg = iso_depth_config(d_model=16, recurrences=1, effective_depth=3, n_prelude=1, n_coda=1, head_dim=8,
                           vocab_size=512, seq_len=SEQ_LEN)
    with pytest.raises(ValueError, match="1024 tokens but the model expects 512"):
        IsodepthLM(model=LoopedLM(cfg), tokenizer=tokenizer)


def test_continuation_logprob_round_trips():
    value = ContinuationLogprob(-3.25, 4)
    copy = pickle.loads(pickle.dumps(value))
    assert copy == -3.25
    assert copy.n_tokens == 4
    assert json.loads(json.dumps({"ll": value})) == {"ll": -3.25}
    assert math.isclose(value + 1.0, -2.25)
