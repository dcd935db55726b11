"""Reasoning-primitive tasks generated locally from fixed seeds (no download).

- Induction head: 8 lines "kkkk -> vvv" (4-letter keys, 3-letter values, lowercase), then a
  query key from those lines; the gold continuation is its value.
- Variable assignment: five variables set to distinct integers in [1, 25], then a query.
  Depth 0 queries one of them; depth 1 adds a variable assigned from one of the five and
  queries that one. The math format is one line ("a = 5, b = 12, ... Then c ="), the code
  format is Python ("a = 5\\n...\\nprint(c)\\n").

NOTE: with the 1,024-token micro BPE an induction example is 85 tokens on average (BOS and
answer included), so a 64-token model loses the first lines to left truncation. For 31.5% of
the 1,000 examples the queried line starts in the truncated part.

Every task has 1,000 evaluation examples and a separate pool of 100 few-shot examples, each
drawn from its own seed, so the same seed always gives the same examples.
"""

from __future__ import annotations

import random
import string

N_EXAMPLES = 1000
N_FEWSHOT_POOL = 100
INDUCTION_LINES = 8
INDUCTION_KEY_CHARS = 4
INDUCTION_VALUE_CHARS = 3
N_VARIABLES = 5
VALUE_RANGE = (1, 25)

# One seed per task for the evaluation examples; the few-shot pool uses seed + 1.
SEEDS = {
    "induction_head": 1337_01,
    "varassign_d0_math": 1337_11,
    "varassign_d0_code": 1337_21,
    "varassign_d1_math": 1337_31,
    "varassign_d1_code": 1337_41,
}


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def induction_example(rng: random.Random) -> dict:
    """Draw one induction-head prompt, whose answer is the value paired with the query key."""
    keys: list[str] = []
    while len(keys) < INDUCTION_LINES:
        key = _letters(rng, INDUCTION_KEY_CHARS)
        if key not in keys:
            keys.append(key)
    values = [_letters(rng, INDUCTION_VALUE_CHARS) for _ in keys]
    query = rng.randrange(INDUCTION_LINES)
    lines = [f"{key} -> {value}" for key, value in zip(keys, values)]
    return {"prompt": "\n".join(lines) + f"\n{keys[query]} ->", "answer": f" {values[query]}",
            "query_line": query}


def _assignments(rng: random.Random, depth: int) -> tuple[list[tuple[str, str]], str, int]:
    """Return (name, right-hand side) pairs, the queried name and its integer value."""
    names = rng.sample(string.ascii_lowercase, N_VARIABLES + depth)
    values = rng.sample(range(VALUE_RANGE[0], VALUE_RANGE[1] + 1), N_VARIABLES)
    pairs = [(name, str(value)) for name, value in zip(names, values)]
    target = rng.randrange(N_VARIABLES)
    if depth == 0:
        return pairs, names[target], values[target]
    if depth != 1:
        raise ValueError(f"depth={depth} is not supported; use 0 or 1")
    alias = names[N_VARIABLES]
    # The alias line goes anywhere after the line that defines its source variable.
    position = rng.randint(target + 1, len(pairs))
    pairs.insert(position, (alias, names[target]))
    return pairs, alias, values[target]


def varassign_example(rng: random.Random, depth: int, fmt: str) -> dict:
    """Draw one variable-assignment prompt in the math or code format."""
    pairs, query, value = _assignments(rng, depth)
    if fmt == "math":
        body = ", ".join(f"{name} = {rhs}" for name, rhs in pairs)
        return {"prompt": f"{body}. Then {query} =", "answer": f" {value}"}
    if fmt == "code":
        body = "\n".join(f"{name} = {rhs}" for name, rhs in pairs)
        return {"prompt": f"{body}\nprint({query})\n", "answer": f"{value}"}
    raise ValueError(f"fmt={fmt!r} is not supported; use 'math' or 'code'")


def _generator(task: str):
    if task == "induction_head":
        return induction_example
    try:
        _, depth, fmt = task.split("_")
        depth_value = int(depth.removeprefix("d"))
    except ValueError:
        raise ValueError(f"unknown synthetic task {task!r}; known tasks are {sorted(SEEDS)}") from None
    return lambda rng: varassign_example(rng, depth_value, fmt)


def generate(task: str, n: int = N_EXAMPLES, seed: int | None = None) -> list[dict]:
    """Generate n examples of a synthetic task; the default seed is the task's own."""
    if task not in SEEDS:
        raise ValueError(f"unknown synthetic task {task!r}; known tasks are {sorted(SEEDS)}")
    seed = SEEDS[task] if seed is None else seed
    rng = random.Random(seed)
    make = _generator(task)
    examples = []
    for index in range(n):
        example = make(rng)
        examples.append({"id": f"{task}-{seed}-{index}", "prompt": example["prompt"],
                         "answer": example["answer"]})
    return examples


def splits(task: str) -> dict[str, list[dict]]:
    """Return the evaluation examples ('test') and the few-shot pool ('fewshot') of a synthetic task."""
    return {"test": generate(task, N_EXAMPLES), "fewshot": generate(task, N_FEWSHOT_POOL, SEEDS[task] + 1)}
