"""data/tasks.py: loaders, prompts, the synthetic task; and the shipped model's folder."""
import json
import os
import random

import pytest

from data import tasks
from data.tasks import Problem, build_prompt, load_problems, synthetic_problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.path.join(ROOT, "..", "shared", "datasets")
DEFAULT_MODEL = os.path.join(ROOT, "data", "default_model")


def write_jsonl(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


# ----------------------------------------------------------------------------- loaders


def test_gsm8k_loader(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "Q1?", "answer": "2+2=<<2+2=4>>4\n#### 4"},
        {"question": "Q2?", "answer": "big\n#### 1,080"},
    ])
    problems = load_problems(path)
    assert [p.prompt for p in problems] == ["Q1?", "Q2?"]
    assert problems[0].answer == "4"
    assert problems[1].answer.replace(",", "") == "1080"  # the verifier compares numerically
    assert load_problems(path, fmt="gsm8k") == problems


def test_math_loader_answer_field_and_boxed(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": "P1", "solution": "so \\boxed{\\frac{1}{2}}", "answer": "\\frac{1}{2}"},
        {"problem": "P2", "solution": "first \\boxed{1}, finally \\boxed{x^{2}}"},
        {"problem": "P3", "answer": 27.0},  # AMC stores a JSON number
    ])
    problems = load_problems(path)
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "x^{2}", "27"]


def test_generic_loader(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "one?", "a": 1}, {"q": "two?", "a": "2"}])
    problems = load_problems(path, prompt_key="q", answer_key="a")
    assert problems == [Problem("one?", "1"), Problem("two?", "2")]
    with pytest.raises(ValueError, match="cannot tell the format .*; pass --data-format gsm8k / math / olympiad, "
                                         "or --prompt-key KEY and --answer-key KEY"):
        load_problems(path)  # unknown keys and no keys given


def test_blank_lines_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", ["", {"q": "x", "a": "1"}, "   "])
    assert len(load_problems(path, prompt_key="q", answer_key="a")) == 1


@pytest.mark.parametrize("lines, line_no, why", [
    ([{"q": "a", "a": "1"}, "{not json"], 2, "not valid JSON"),
    ([{"q": "a", "a": "1"}, "[1, 2]"], 2, "expected a JSON object"),
    ([{"q": "a", "a": "1"}, {"q": "b"}], 2, "missing key 'a'"),
    ([{"q": "a", "a": "1"}, {"a": "1"}], 2, "missing key 'q'"),
    ([{"q": "", "a": "1"}], 1, "non-empty string"),
    ([{"q": "a", "a": None}], 1, "answer"),
])
def test_malformed_lines_name_file_and_line(tmp_path, lines, line_no, why):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=f"bad.jsonl:{line_no}: .*{why}"):
        load_problems(path, prompt_key="q", answer_key="a")


def test_malformed_gsm8k_and_math_lines(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "Q1?", "answer": "#### 4"}, {"question": "Q2?", "answer": "no marker"}])
    with pytest.raises(ValueError, match="g.jsonl:2: "):
        load_problems(path)
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": "P1", "answer": "1"}, {"problem": "P2", "solution": "no box here"}])
    with pytest.raises(ValueError, match="m.jsonl:2: "):
        load_problems(path)


def test_binary_or_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"q": "a", "a": "1"}\n{"q": "caf\u00e9", "a": "2"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.jsonl:2: not UTF-8"):
        load_problems(str(path), prompt_key="q", answer_key="a")
    path = tmp_path / "weights.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)) * 4)  # an image passed as --data
    with pytest.raises(ValueError, match="weights.jsonl:1: not UTF-8"):
        load_problems(str(path))


def test_utf8_bom_and_crlf_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"q": "caf\xc3\xa9", "a": "1"}\r\n{"q": "b", "a": "2"}\r\n')
    assert load_problems(str(path), prompt_key="q", answer_key="a") == [Problem("caf\u00e9", "1"), Problem("b", "2")]


@pytest.mark.parametrize("record, fmt", [
    ({"question": "Q?", "answer": "so 4\n####"}, "gsm8k"),
    ({"question": "Q?", "answer": "so 4\n####   \n"}, "gsm8k"),
    ({"problem": "P", "answer": "", "solution": "it is \\boxed{}"}, "math"),
    ({"problem": "P", "answer": "  "}, "math"),
    ({"problem": "P", "solution": "it is \\boxed{ }"}, "math"),
    ({"question": "Q?", "final_answer": ["$ $"]}, "olympiad"),
    ({"question": "Q?", "final_answer": ["$1$", ""]}, "olympiad"),
    ({"q": "Q?", "a": ""}, "generic"),
    ({"q": "Q?", "a": [" "]}, "generic"),
    ({"q": "Q?", "a": float("nan")}, "generic"),
])
def test_empty_gold_is_refused_with_file_and_line(tmp_path, record, fmt):
    # An empty gold can never be matched: the problem would train with reward 0 forever.
    good = {"gsm8k": {"question": "Q?", "answer": "#### 4"}, "math": {"problem": "P", "answer": "4"},
            "olympiad": {"question": "Q?", "final_answer": ["$4$"]}, "generic": {"q": "Q?", "a": "4"}}[fmt]
    path = write_jsonl(tmp_path / "gold.jsonl", [good, record])
    keys = dict(prompt_key="q", answer_key="a") if fmt == "generic" else {}
    with pytest.raises(ValueError, match="gold.jsonl:2: "):
        load_problems(path, **keys)


def test_bad_arguments(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "a": "1"}])
    with pytest.raises(ValueError, match="--data-format csv: use auto, generic"):
        load_problems(path, fmt="csv")
    with pytest.raises(ValueError, match="needs both --prompt-key and --answer-key"):
        load_problems(path, prompt_key="q")
    with pytest.raises(ValueError, match="needs both --prompt-key and --answer-key"):
        load_problems(path, fmt="generic")  # (not "missing key None")
    with pytest.raises(ValueError, match="--prompt-key / --answer-key apply to --data-format generic, not gsm8k"):
        load_problems(path, fmt="gsm8k", prompt_key="q", answer_key="a")
    with pytest.raises(FileNotFoundError):
        load_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="empty"):
        load_problems(write_jsonl(tmp_path / "e.jsonl", []))


@pytest.mark.parametrize("name, n, first_answer", [
    ("gsm8k_train.jsonl", 7473, "72"),
    ("gsm8k_test.jsonl", 1319, "18"),
    ("math500_test.jsonl", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("amc23_test.jsonl", 40, "27"),
])
def test_real_datasets(name, n, first_answer):
    path = os.path.join(DATASETS, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    problems = load_problems(path)
    assert len(problems) == n
    assert problems[0].answer == first_answer
    assert all(p.prompt.strip() and p.answer for p in problems)


# ----------------------------------------------------------------------------- prompts


class FakeTokenizer:
    """Just enough of model.Tokenizer: characters as ids."""

    def __init__(self, chat_style=None, bos_id=None):
        self.chat_style, self.bos_id = chat_style, bos_id

    def encode(self, text):
        return [ord(c) for c in text]

    def apply_chat(self, messages, add_generation_prompt=True):
        return [-1] + self.encode(messages[0]["content"]) + [-2]


def test_build_prompt_raw_and_chat():
    text = tasks.format_question("What is 1+1?")
    assert text.endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    raw = build_prompt("What is 1+1?", FakeTokenizer(bos_id=7))
    assert raw == [7] + [ord(c) for c in text + "\n"]
    assert build_prompt("hi", FakeTokenizer(), "plain") == [ord("h"), ord("i"), ord("\n")]
    chat = build_prompt("What is 1+1?", FakeTokenizer(chat_style="chatml"))
    assert chat == [-1] + [ord(c) for c in text] + [-2]
    with pytest.raises(ValueError, match="unknown prompt template"):
        build_prompt("x", FakeTokenizer(), "nope")


# ----------------------------------------------------------------------------- synthetic task


def evaluate_solution(solution):
    """Checks each line 'a op b=c' of a worked solution; returns the boxed number."""
    *steps, last = solution.split("\n")
    for step in steps:
        lhs, rhs = step.split("=")
        assert eval(lhs) == int(rhs), step  # the lines are plain integer arithmetic
    assert last.startswith("\\boxed{") and last.endswith("}")
    return last[len("\\boxed{"):-1]


@pytest.mark.parametrize("level", sorted(tasks.LEVELS))
def test_synthetic_answers_are_exact(level):
    for p in synthetic_problems(200, seed=3, level=level):
        assert evaluate_solution(p.solution) == p.answer
        assert int(p.answer) >= 0
        if p.prompt.startswith("What is "):
            assert eval(p.prompt[len("What is "):-1]) == int(p.answer)


def test_synthetic_is_deterministic_and_seeded():
    a = synthetic_problems(50, seed=1, level=3)
    assert a == synthetic_problems(50, seed=1, level=3)
    assert a != synthetic_problems(50, seed=2, level=3)
    assert synthetic_problems(80, seed=1, level=3)[:50] == a  # a longer list extends a shorter one
    assert synthetic_problems(50, seed=1, split="test") != synthetic_problems(50, seed=1, split="train")


def test_synthetic_train_and_test_are_disjoint_across_seeds():
    train = {tasks.chain_key(c) for s in (0, 1) for c in tasks.sample_chains(3000, s, "train", 3)}
    test = {tasks.chain_key(c) for s in (0, 1) for c in tasks.sample_chains(500, s, "test", 3)}
    assert train and test and not train & test
    assert len(test) > 300  # held-out problems are varied, not a handful repeated


def test_synthetic_size_is_unbounded_and_styles():
    assert len(synthetic_problems(5000, seed=0, level=1)) == 5000  # level 1 has few distinct chains
    assert all(p.prompt.startswith("What is") for p in synthetic_problems(20, 0, style="expr"))
    assert all("How many" in p.prompt for p in synthetic_problems(20, 0, style="word"))
    with pytest.raises(ValueError, match="split"):
        synthetic_problems(1, 0, split="dev")
    with pytest.raises(ValueError, match="level"):
        synthetic_problems(1, 0, level=99)


def test_slipped_solutions_stay_consistent():
    rng = random.Random(0)
    chains = tasks.sample_chains(300, 0, "train", 4)
    slipped = [tasks.worked_solution(c, slip_rate=0.5, rng=rng) for c in chains]
    wrong = 0
    for chain, solution in zip(chains, slipped):
        *steps, last = solution.split("\n")
        total = chain.start
        for step in steps:
            lhs, rhs = step.split("=")
            if "*" not in lhs:  # a running-total line starts from the previous total, right or wrong
                assert lhs.startswith(str(total)) and lhs[len(str(total))] in "+-", (solution, step)
                total = int(rhs)
        assert last == f"\\boxed{{{total}}}"
        wrong += total != tasks.chain_value(chain)
    assert 100 < wrong < 300


# ----------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def shipped():
    if not os.path.exists(os.path.join(DEFAULT_MODEL, "config.json")):
        pytest.skip("data/default_model not built (python tools/train_default_model.py)")
    import model

    return model.load(DEFAULT_MODEL)


def test_shipped_model_folder(shipped):
    net, tok = shipped
    with open(os.path.join(DEFAULT_MODEL, "config.json")) as f:
        assert json.load(f)["model_type"] == "llama"
    size = sum(os.path.getsize(os.path.join(DEFAULT_MODEL, f)) for f in os.listdir(DEFAULT_MODEL))
    assert size <= 20e6
    assert tok.chat_style is None and tok.bos_id is not None and tok.eos_ids
    for p in synthetic_problems(20, 0, "test", level=5):  # the tokenizer spells every level exactly
        text = tasks.format_question(p.prompt) + "\n" + p.solution
        assert tok.decode(tok.encode(text)) == text
        assert len(build_prompt(p.prompt, tok)) + 64 <= net.config.max_position_embeddings


def test_shipped_model_solves_held_out_problems_greedily(shipped):
    """Its most likely answer is usually right (sampling is what makes it unsure): RL has
    correct answers to find. A fixed 20 problems, greedy, so deterministic."""
    import model
    import verifier

    net, tok = shipped
    problems = synthetic_problems(20, 0, "test")
    completions, _ = model.generate(net, [build_prompt(p.prompt, tok) for p in problems], 48, 0.0,
                                    eos_ids=tok.eos_ids)
    right = sum(verifier.score(tok.decode(c), p.answer) for c, p in zip(completions, problems))
    assert right >= 14, [tok.decode(c) for c in completions]


# ----------------------------------------------------------------------------- search task

SEARCH_MODEL = os.path.join(ROOT, "data", "search_model")


def replay_search(problem_text, solution):
    """Checks every line of a search: 'a*k+b=p+b=v verdict' with the equation of the prompt,
    p = a*k, v = p+b and the verdict exact. -> (tried candidates, boxed answer, whether a 'yes'
    came last before the box)."""
    lhs, target = problem_text[len(f"Which n from 1 to {tasks.SEARCH_MAX_N} gives "):-1].split("=")
    a, b = (int(x) for x in lhs.split("n+"))
    *lines, last = solution.split("\n")
    tried, said_yes = [], False
    for line in lines:
        check, verdict = line.split(" ")
        expr, step, value = check.split("=")
        k = int(expr[len(f"{a}*"):-len(f"+{b}")])
        assert expr == f"{a}*{k}+{b}" and step == f"{a * k}+{b}" and int(value) == a * k + b, line
        assert verdict == {-1: "low", 0: "yes", 1: "high"}[(a * k + b > int(target)) - (a * k + b < int(target))]
        assert not said_yes, "a try after the one that worked"
        tried.append(k)
        said_yes = verdict == "yes"
    assert last.startswith("\\boxed{") and last.endswith("}")
    return tried, last[len("\\boxed{"):-1], said_yes


def test_search_solutions_check_every_try_exactly():
    import verifier

    for p in tasks.search_problems(300, seed=0):
        tried, boxed, said_yes = replay_search(p.prompt, p.solution)
        assert said_yes and boxed == p.answer and tried[-1] == int(p.answer)
        assert len(set(tried)) == len(tried) and set(tried) <= set(range(1, tasks.SEARCH_MAX_N + 1))
        assert verifier.score(p.solution, p.answer) == 1.0
    lengths = [len(p.solution.split("\n")) - 1 for p in tasks.search_problems(300, seed=0)]
    assert min(lengths) == 1 and max(lengths) == tasks.SEARCH_MAX_N  # the order is random: any length


def test_search_guesses_and_bisection():
    import verifier

    rng = random.Random(0)
    searches = tasks.sample_searches(400, 0)
    guessed = [tasks.search_solution(s, rng, guess_rate=1.0) for s in searches]
    text = lambda s: tasks.search_text(s)
    outcomes = [replay_search(text(s), g) for s, g in zip(searches, guessed)]
    assert not any(yes for _, _, yes in outcomes)  # a guess is boxed without its check
    right = sum(verifier.score(g, str(s.n)) for s, g in zip(searches, guessed))
    assert 20 < right < 200  # right only by luck
    for s in searches:  # the verdicts allow a search of at most 4 tries
        tried, boxed, said_yes = replay_search(text(s), tasks.bisection_solution(s))
        assert said_yes and boxed == str(s.n) and len(tried) <= 4


def test_search_split_is_disjoint_and_deterministic():
    train = set(tasks.sample_searches(6000, 0, "train")) | set(tasks.sample_searches(6000, 1, "train"))
    test = set(tasks.sample_searches(1000, 0, "test")) | set(tasks.sample_searches(1000, 1, "test"))
    assert len(train) == len(tasks.all_searches("train")) and len(test) == len(tasks.all_searches("test")) == 300
    assert not train & test
    assert tasks.search_problems(40, 0, "test") == tasks.search_problems(40, 0, "test")
    assert tasks.search_problems(40, 0, "test") != tasks.search_problems(40, 1, "test")
    assert len({tasks.search_text(s) for s in tasks.sample_searches(300, 0, "test")}) == 300  # no repeats
    with pytest.raises(ValueError, match="split"):
        tasks.search_problems(1, 0, split="dev")


@pytest.fixture(scope="module")
def search_model():
    if not os.path.exists(os.path.join(SEARCH_MODEL, "config.json")):
        pytest.skip("data/search_model not built (python tools/train_search_model.py)")
    import model

    return model.load(SEARCH_MODEL)


def test_search_model_folder(search_model):
    net, tok = search_model
    size = sum(os.path.getsize(os.path.join(SEARCH_MODEL, f)) for f in os.listdir(SEARCH_MODEL))
    assert size <= 20e6
    for p in tasks.search_problems(20, 0, "test"):
        text = tasks.format_question(p.prompt) + "\n" + p.solution
        assert tok.decode(tok.encode(text)) == text
        assert len(build_prompt(p.prompt, tok)) + tasks.SEARCH_MAX_NEW_TOKENS <= net.config.max_position_embeddings


def test_search_model_samples_checked_searches_of_many_lengths(search_model):
    """Sampled at temperature 1, its tries are exact checks, some responses find n and some do
    not, and their lengths spread (fixed seed: deterministic)."""
    import torch

    import model
    import verifier

    net, tok = search_model
    problems = tasks.search_problems(8, 0, "test")
    prompts = [build_prompt(p.prompt, tok) for p in problems for _ in range(8)]
    out, _ = model.generate(net, prompts, tasks.SEARCH_MAX_NEW_TOKENS, 1.0, eos_ids=tok.eos_ids,
                            generator=torch.Generator().manual_seed(0))
    right = [verifier.score(tok.decode(r), problems[i // 8].answer) for i, r in enumerate(out)]
    lengths = sorted(len(r) for r in out)
    assert 0.05 < sum(right) / len(right) < 0.9
    assert lengths[-len(lengths) // 10] >= 3 * lengths[len(lengths) // 10]  # p90 / p10 >= 3
    finished = [tok.decode(r) for r in out if r[-1] in tok.eos_ids]
    lines = [line.split(" ")[0].split("=") for t in finished for line in t.split("\n")[:-1]]
    checks = [line for line in lines if len(line) == 3 and all(x and set(x) <= set("0123456789*+") for x in line)]
    exact = sum(eval(x) == eval(y) == int(z) for x, y, z in checks)
    assert len(checks) >= 0.9 * len(lines) and exact >= 0.8 * len(checks)


def test_gold_helpers():
    assert tasks.gsm8k_gold('She sold 1,080 <<a=b>>.\n#### 1,080') == '1080'
    assert tasks.gsm8k_gold('x\n#### -3') == '-3'
    with pytest.raises(ValueError):
        tasks.gsm8k_gold('no marker')
    assert tasks.math_gold({'answer': '\\frac{1}{2}', 'solution': '\\boxed{0.5}'}) == '\\frac{1}{2}'
    assert tasks.math_gold({'solution': 'so \\boxed{1} then \\boxed{4.5e33} ergs.'}) == '4.5e33'
    assert tasks.math_gold({'answer': 27.0}) == '27' and tasks.math_gold({'answer': -1.0}) == '-1'
    assert tasks.math_gold({'answer': '025'}) == '025'
    with pytest.raises(ValueError):
        tasks.math_gold({'solution': 'nothing boxed'})
    rec = {'final_answer': ['$(1,1), (3,2)$'], 'solution': ['...']}
    assert tasks.olympiad_gold(rec) == '(1,1), (3,2)' and tasks.gold_answer(rec) == '(1,1), (3,2)'
    assert tasks.gold_answer({'question': 'q', 'answer': 'x\n#### 72'}) == '72'
    assert tasks.gold_answer({'problem': 'p', 'answer': 36.0}) == '36'
