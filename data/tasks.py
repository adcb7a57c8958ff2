"""Tasks for RL with verifiable rewards: problems with a gold answer, and how to prompt for them.

Three sources of problems, all returning the same `Problem(prompt, answer)`:
  - GSM8K JSONL   {"question": ..., "answer": "... #### 72"}
  - MATH JSONL    {"problem": ..., "answer": ...} or {"problem": ..., "solution": "... \\boxed{..}"}
  - generic JSONL with the prompt / answer keys you name.
and a synthetic arithmetic task of our own (`synthetic_problems`), which the default run and
the shipped model (data/default_model/) use: unbounded, deterministic, exact integer answers,
with a train/test split that never overlaps.
A second synthetic task, the search task (`search_problems`, `a3po.py --data search`, the
model data/search_model/), is solved by trying candidates one checked line at a time
("Which n from 1 to 12 gives 7n+3=52?" -> "7*5+3=35+3=38 low" ... "7*7+3=49+3=52 yes",
"\\boxed{7}"), so the length of a response is the model's choice: where sample polarity can
show in response length and pass@k (bench/polarity.py --task search).

The gold answer is kept as text; the verifier (verifier.py) decides equivalence.
"""

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- problems


@dataclass
class Problem:
    prompt: str  # the question as a person would write it (no instruction, no chat markup)
    answer: str  # gold final answer, as text ("72", "\\frac{1}{2}")
    solution: str | None = None  # a worked solution when the source has one (synthetic task)
    # The problem asks to compute a number: the reward wants it written out (verifier.score's
    # number_only), so boxing the question's own arithmetic unevaluated earns nothing. True for
    # GSM8K and our tasks; MATH-style problems keep full equivalence (sqrt(3)/3 = 1/sqrt(3)).
    numeric: bool = False
    source: str | None = field(default=None, compare=False)  # "file:line" of a problem read from a file, for errors


# ----------------------------------------------------------------------------- JSONL loaders


def read_jsonl(path):
    """Yields (line_number, record) for each non-blank line; bad JSON or bytes that are not
    UTF-8 (a binary or Latin-1 file passed as data) -> ValueError 'path:line: why'."""
    # Bytes, decoded line by line: a text-mode file raises a bare UnicodeDecodeError from
    # somewhere in its read buffer, with no line number.
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a BOM
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1}); is this a binary file, or text in another encoding?") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def answer_text(value):
    """A gold answer field as text. JSON numbers become their shortest form (27.0 -> "27");
    a list (OlympiadBench's final_answer) becomes its items joined by ", "."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON's NaN / Infinity: no response can equal them
            raise TypeError(f"cannot use {value!r} as an answer")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value:
        return ", ".join(answer_text(v) for v in value)
    raise TypeError(f"cannot use {value!r} as an answer")


def detect_format(record):
    """Which loader a record belongs to, from its keys."""
    if "question" in record and isinstance(record.get("answer"), str) and "####" in record["answer"]:
        return "gsm8k"
    if "problem" in record and ("answer" in record or "solution" in record):
        return "math"
    if "question" in record and "final_answer" in record:
        return "olympiad"
    return None


# ----------------------------------------------------------------------------- gold answers
# What each dataset stores as its gold answer; the verifier then compares answers as text.


def last_boxed(text):
    """The content of the last \\boxed{} / \\fbox{} in text (a solution), or None."""
    from verifier_forms import as_text, box_at

    text = as_text(text)
    if text is None:
        return None
    end = len(text)
    while True:
        i = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if i < 0:
            return None
        content, _ = box_at(text, i)
        if content is not None:
            return content.strip()
        end = i


def gsm8k_gold(answer_field):
    """GSM8K: the number after '####' (thousands commas removed)."""
    from verifier_forms import as_text

    text = as_text(answer_field) or ""
    if "####" not in text:
        raise ValueError('GSM8K answer field has no "####" line: %r' % text[-80:])
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def math_gold(record):
    """MATH / AIME / AMC / Minerva: the 'answer' field (27.0 -> '27'), else the last
    \\boxed{} of 'solution'."""
    from verifier_forms import as_text

    answer = as_text(record.get("answer"))
    if answer is not None and answer.strip():
        return answer.strip()
    solution = record.get("solution")
    if isinstance(solution, list):
        solution = "\n".join(x for x in solution if isinstance(x, str))
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError("record has no answer field and no \\boxed{} in its solution")
    return boxed


def olympiad_gold(record):
    """OlympiadBench: final_answer (a list of strings, often '$...$'), joined by ', '."""
    answers = record.get("final_answer")
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("OlympiadBench record has no final_answer")
    return ", ".join(a.strip().replace("$", "").strip() for a in answers)


def gold_answer(record):
    """The gold answer of a record of any of the formats in ../shared/datasets/."""
    if "final_answer" in record:
        return olympiad_gold(record)
    answer = record.get("answer")
    if isinstance(answer, str) and "####" in answer:
        return gsm8k_gold(answer)
    return math_gold(record)


def gsm8k_problem(record):
    """GSM8K: the gold is what follows '####' at the end of the rationale."""
    answer = record.get("answer")
    if not isinstance(answer, str) or "####" not in answer:
        raise ValueError("GSM8K 'answer' must be a string ending in '#### <final answer>'")
    return Problem(prompt=_text(record, "question"), answer=_gold(gsm8k_gold(answer), "after '####'"),
                   numeric=True)


def math_problem(record):
    """MATH / AIME / AMC / Minerva: the 'answer' field when present, else the last \\boxed{}
    of 'solution'."""
    if "answer" not in record and "solution" not in record:
        raise ValueError(f"MATH record needs 'answer' or 'solution' (keys: {sorted(record)})")
    gold = math_gold(record)  # ValueError when neither gives an answer
    return Problem(prompt=_text(record, "problem"), answer=_gold(gold, "in 'answer' or the last \\boxed{} of 'solution'"))


def olympiad_problem(record):
    """OlympiadBench: 'question' and the list 'final_answer'."""
    answers = record.get("final_answer")
    if isinstance(answers, list) and any(not isinstance(a, str) or not a.replace("$", "").strip() for a in answers):
        raise ValueError(f"'final_answer' has an empty or non-text item: {answers!r}")
    return Problem(prompt=_text(record, "question"), answer=_gold(olympiad_gold(record), "in 'final_answer'"))


def generic_problem(record, prompt_key, answer_key):
    if answer_key not in record:
        raise ValueError(f"missing key {answer_key!r} (keys: {sorted(record)})")
    return Problem(prompt=_text(record, prompt_key), answer=answer_text(record[answer_key]))


def _gold(answer, where):
    # An empty gold can never be matched: every reward would be 0 and the problem silently useless.
    if not answer.strip():
        raise ValueError(f"empty gold answer (nothing {where})")
    return answer


def _text(record, key):
    if key not in record:
        raise ValueError(f"missing key {key!r} (keys: {sorted(record)})")
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


LOADERS = {"gsm8k": gsm8k_problem, "math": math_problem, "olympiad": olympiad_problem}


def load_problems(path, fmt="auto", prompt_key=None, answer_key=None):
    """Reads a JSONL file of problems.

    fmt: "gsm8k" | "math" | "olympiad" | "generic" | "auto" (generic when keys are given, else
    guessed from the first record's keys). Any bad line raises ValueError("path:line: why").
    The messages name the flags that set these arguments (--data-format, --prompt-key,
    --answer-key): a3po's users meet them there, not as Python arguments.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if fmt not in ("auto", "generic", *LOADERS):
        raise ValueError(f"--data-format {fmt}: use auto, generic, {', '.join(LOADERS)}")
    if prompt_key or answer_key or fmt == "generic":
        if fmt not in ("auto", "generic"):
            raise ValueError(f"--prompt-key / --answer-key apply to --data-format generic, not {fmt}")
        if not (prompt_key and answer_key):
            raise ValueError("--data-format generic needs both --prompt-key and --answer-key")
        fmt = "generic"
    problems = []
    for lineno, record in read_jsonl(path):
        if fmt == "auto":
            fmt = detect_format(record)
            if fmt is None:
                raise ValueError(
                    f"{path}:{lineno}: cannot tell the format from keys {sorted(record)}; "
                    f"pass --data-format {' / '.join(LOADERS)}, or --prompt-key KEY and --answer-key KEY"
                )
        try:
            if fmt == "generic":
                problem = generic_problem(record, prompt_key, answer_key)
            else:
                problem = LOADERS[fmt](record)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        problem.source = f"{path}:{lineno}"
        problems.append(problem)
    if not problems:
        raise ValueError(f"{path}: no problems (the file is empty)")
    return problems


# ----------------------------------------------------------------------------- prompts

# The user message. "boxed" is the instruction most RLVR math work uses (SimpleRL-Zoo, DAPO,
# Dr. GRPO evaluations); the verifier reads the last \boxed{} of the response.
TEMPLATES = {
    "boxed": "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "plain": "{question}",
}


def format_question(question, template="boxed"):
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(question=question)


def build_prompt(problem_text, tokenizer, template="boxed"):
    """Token ids of the prompt the policy answers.

    A chat model gets the question as one user turn, through its own chat format. A model
    without a chat style (a base model, or the shipped tiny model) gets raw text:
    [BOS] + question + instruction + newline, and continues with its answer.
    """
    text = format_question(problem_text, template)
    if tokenizer.chat_style:
        return tokenizer.apply_chat([{"role": "user", "content": text}], add_generation_prompt=True)
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return bos + tokenizer.encode(text + "\n")


# ----------------------------------------------------------------------------- synthetic task
#
# A problem is a chain: a start value, then terms added or subtracted in order; a term is a
# number (+b) or a product (+b*c). The same chain is written either as an expression
# ("What is 7+5*3-4?") or as a short word problem. Its worked solution does one operation per
# line, products first, and ends with \boxed{answer}:
#     5*3=15
#     7+15=22
#     22-4=18
#     \boxed{18}

# level -> how many terms after the start value, how many of them may be products, and the
# largest plain operand. Products are one-digit times one-digit (2..9).
LEVELS = {
    1: dict(terms=1, products=0, max_operand=20),
    2: dict(terms=2, products=0, max_operand=20),
    3: dict(terms=2, products=1, max_operand=20),
    4: dict(terms=3, products=2, max_operand=20),
    5: dict(terms=4, products=2, max_operand=50),
}
DEFAULT_LEVEL = 3
TEST_FRACTION = 0.1  # share of all possible chains that belong to the test split

NAMES = [("Ann", "She"), ("Tom", "He"), ("Mia", "She"), ("Sam", "He"), ("Eva", "She"), ("Max", "He")]
ITEMS = ["apples", "pens", "books", "cards", "eggs", "coins", "shells", "stamps"]


@dataclass(frozen=True)
class Chain:
    start: int
    terms: tuple  # of (sign, b, c): sign is +1 or -1; c is None for a plain number b, else b*c


def term_value(term):
    sign, b, c = term
    return sign * (b if c is None else b * c)


def chain_value(chain):
    return chain.start + sum(term_value(t) for t in chain.terms)


def chain_key(chain):
    """Canonical text of the arithmetic, e.g. '7+5*3-4'. Both wordings of a chain share it."""
    out = str(chain.start)
    for sign, b, c in chain.terms:
        out += ("+" if sign > 0 else "-") + (str(b) if c is None else f"{b}*{c}")
    return out


def chain_split(chain):
    """'test' or 'train', fixed by a hash of the arithmetic alone, so it does not depend on the
    seed or the wording: no test chain is ever seen in training, whatever the seeds."""
    digest = hashlib.sha256(chain_key(chain).encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if bucket < TEST_FRACTION else "train"


def sample_chain(rng, level):
    """A random chain of the level whose running total never goes below zero."""
    spec = LEVELS[level]
    while True:
        n_products = rng.randint(0, spec["products"])
        product_slots = set(rng.sample(range(spec["terms"]), n_products))
        terms = []
        for i in range(spec["terms"]):
            sign = rng.choice((1, -1))
            if i in product_slots:
                terms.append((sign, rng.randint(2, 9), rng.randint(2, 9)))
            else:
                terms.append((sign, rng.randint(1, spec["max_operand"]), None))
        chain = Chain(start=rng.randint(1, spec["max_operand"]), terms=tuple(terms))
        total, ok = chain.start, True
        for t in chain.terms:
            total += term_value(t)
            ok = ok and total >= 0
        if ok:
            return chain


def expression_text(chain):
    return f"What is {chain_key(chain)}?"


def word_text(chain, rng):
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    sentences = [f"{name} has {chain.start} {item}."]
    for sign, b, c in chain.terms:
        if c is None and sign > 0:
            sentences.append(f"{pronoun} gets {b} more.")
        elif c is None:
            sentences.append(f"{pronoun} gives away {b}.")
        elif sign > 0:
            sentences.append(f"{pronoun} buys {b} boxes with {c} {item} each.")
        else:
            sentences.append(f"{pronoun} gives {b} friends {c} {item} each.")
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences)


def worked_solution(chain, slip_rate=0.0, rng=None):
    """One operation per line, then \\boxed{answer}.

    slip_rate > 0 makes each line's result wrong (off by 1..3) with that probability, and the
    mistake is carried forward like a person would: used by tools/train_default_model.py to
    teach a model that is unsure of its arithmetic, which RL can then sharpen.
    """

    def result(true_value):
        if slip_rate > 0 and rng.random() < slip_rate:
            wrong = true_value + rng.choice((-3, -2, -1, 1, 2, 3))
            return wrong if wrong >= 0 else true_value + 1
        return true_value

    lines, total = [], chain.start
    for sign, b, c in chain.terms:
        value = b
        if c is not None:
            value = result(b * c)
            lines.append(f"{b}*{c}={value}")
        new_total = result(total + sign * value)
        lines.append(f"{total}{'+' if sign > 0 else '-'}{value}={new_total}")
        total = new_total
    lines.append(f"\\boxed{{{total}}}")
    return "\n".join(lines)


def sample_chains(n, seed, split="train", level=DEFAULT_LEVEL):
    """n chains of the split, drawn with replacement (the test split is small at low levels)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels are {sorted(LEVELS)}")
    rng = random.Random(f"synthetic/{seed}/{split}/{level}")  # str seeds are stable across runs
    chains = []
    while len(chains) < n:
        chain = sample_chain(rng, level)
        if chain_split(chain) == split:
            chains.append(chain)
    return chains


def chain_problem(chain, rng, style="mixed"):
    """The Problem for a chain, worded as an expression or a word problem."""
    if style == "mixed":
        style = rng.choice(("expr", "word"))
    if style == "expr":
        text = expression_text(chain)
    elif style == "word":
        text = word_text(chain, rng)
    else:
        raise ValueError(f"style must be 'expr', 'word' or 'mixed', got {style!r}")
    return Problem(prompt=text, answer=str(chain_value(chain)), solution=worked_solution(chain), numeric=True)


def synthetic_problems(n, seed, split="train", level=DEFAULT_LEVEL, style="mixed"):
    """n synthetic arithmetic problems: deterministic in (seed, split, level, style), any n,
    and the train and test splits never share a chain (see chain_split)."""
    rng = random.Random(f"wording/{seed}/{split}/{level}")
    return [chain_problem(chain, rng, style) for chain in sample_chains(n, seed, split, level)]


# ----------------------------------------------------------------------------- search task
#
# A problem whose solution is a search, so that the model chooses how long it reasons:
#     Which n from 1 to 12 gives 7n+3=52?
# solved by trying candidates, each checked in its own line, until one works:
#     7*5+3=35+3=38 low
#     7*9+3=63+3=66 high
#     7*7+3=49+3=52 yes
#     \boxed{7}
# Each line tries one candidate (the second factor) and checks it exactly and visibly: the
# product first, then the sum (a small model gets a*k+b in one go wrong half the time), then
# the verdict: below, above or at the target. The reward is the boxed answer, unambiguous.
# The worked solutions the shipped search model learned from (tools/train_search_model.py)
# try candidates in a random order and ignore the low/high verdicts, and some stop early with
# an unchecked guess. So a sampled response can
# be short (a lucky first try, or a guess) or long (it can also run out of tokens before it
# finds n), and a better strategy exists for RL to find: never retry a ruled-out candidate,
# move up after "low" and down after "high" (bisection needs at most 4 tries where the
# random order needs 6.5 on average).

SEARCH_MAX_N = 12        # "from 1 to 12": the candidates
SEARCH_A = range(2, 10)  # the coefficient a of an + b
SEARCH_B = range(1, 31)  # the constant b
SEARCH_MAX_NEW_TOKENS = 96  # the response budget of the search task: about 6 tries, so a
#                             random-order search runs out of tokens about half the time


@dataclass(frozen=True)
class Search:
    a: int
    b: int
    n: int  # the answer

    @property
    def target(self):
        return self.a * self.n + self.b


def search_split(s):
    """'test' or 'train', from a hash of the equation alone (as chain_split): a test equation
    is never trained on, whatever the seeds."""
    digest = hashlib.sha256(f"search/{s.a}n+{s.b}={s.target}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


def search_text(s):
    return f"Which n from 1 to {SEARCH_MAX_N} gives {s.a}n+{s.b}={s.target}?"


def search_try(s, k):
    """The check of candidate k, e.g. '7*5+3=35+3=38 low'."""
    value = s.a * k + s.b
    verdict = "yes" if value == s.target else ("low" if value < s.target else "high")
    return f"{s.a}*{k}+{s.b}={s.a * k}+{s.b}={value} {verdict}"


def search_solution(s, rng=None, guess_rate=0.0, order=None):
    """A worked solution: tries in `order` (default: a random order of 1..SEARCH_MAX_N drawn
    from rng, or ascending without rng) up to the one that works, then \\boxed{n}.

    guess_rate > 0: with that probability the solver gives up at a random point before it
    finds n and boxes a random untried candidate without checking it (right only by luck).
    tools/train_search_model.py teaches these wrong early stops so RL has guesses to remove.
    """
    if order is None:
        order = list(range(1, SEARCH_MAX_N + 1))
        if rng is not None:
            rng.shuffle(order)
    found = order.index(s.n)
    stop = found + 1
    guess = None
    if guess_rate > 0 and rng.random() < guess_rate:
        stop = rng.randint(0, found)  # tries made before giving up (0: guess at once)
        guess = rng.choice(order[stop:])  # any untried candidate, n included
    lines = [search_try(s, k) for k in order[:stop]]
    lines.append(f"\\boxed{{{s.n if guess is None else guess}}}")
    return "\n".join(lines)


def bisection_solution(s):
    """The short search the low/high verdicts allow (at most 4 tries for 12 candidates)."""
    lo, hi, tries = 1, SEARCH_MAX_N, []
    while True:
        k = (lo + hi) // 2
        tries.append(k)
        if k == s.n:
            return search_solution(s, order=tries)
        lo, hi = (k + 1, hi) if s.a * k + s.b < s.target else (lo, k - 1)


def all_searches(split):
    """Every equation of the split, in a fixed order (2880 in all, 300 of them test)."""
    return [s for a in SEARCH_A for b in SEARCH_B for n in range(1, SEARCH_MAX_N + 1)
            if search_split(s := Search(a, b, n)) == split]


def sample_searches(n, seed, split="train"):
    """n equations of the split: the whole split in a seeded random order, then again in
    another, as often as needed (so no equation repeats within the first pass: an evaluation
    of up to 300 test problems holds each at most once)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"search/{seed}/{split}")
    pool, out = all_searches(split), []
    while len(out) < n:
        rng.shuffle(pool)
        out += pool[:n - len(out)]
    return out


def search_problems(n, seed, split="train"):
    """n search problems: deterministic in (seed, split), any n; the train and test splits
    never share an equation (see search_split). `solution` is one random-order search
    without guesses (seeded by the problem), for supervised learning."""
    problems = []
    for i, s in enumerate(sample_searches(n, seed, split)):
        rng = random.Random(f"search-solution/{seed}/{split}/{i}")
        problems.append(Problem(prompt=search_text(s), answer=str(s.n), solution=search_solution(s, rng),
                                numeric=True))
    return problems
