"""The reward cannot be earned without doing the task.

A task that asks to compute a number (our synthetic and search tasks, GSM8K) rewards only that
number written out: a response that boxes the question's own arithmetic, unevaluated, scores 0.
MATH-style tasks keep full equivalence. Training and evaluation score with the same function.
"""
import dataclasses

import pytest
import torch

import a3po
import runs
import model
import verifier
from data import tasks
from test_trainer import write_jsonl


def restatements(arithmetic: str) -> list[str]:
    """Ways to hand the question's arithmetic back as the answer, not evaluated."""
    spaced = arithmetic.replace("+", " + ").replace("-", " - ")
    dotted = arithmetic.replace("*", " \\cdot ")
    return [f"\\boxed{{{arithmetic}}}", f"So the answer is \\boxed{{{spaced}}}.", f"The answer is {arithmetic}",
            f"\\boxed{{x = {arithmetic}}}", f"#### {arithmetic}", f"\\boxed{{{dotted}}}"]


def synthetic_cases(level: int, n: int = 40):
    """(problem, its arithmetic): the expression itself, or the sum a word problem tells."""
    for style in ("expr", "word"):
        yield from zip(tasks.synthetic_problems(n, 1, "train", level, style),
                       map(tasks.chain_key, tasks.sample_chains(n, 1, "train", level)))


def search_cases(n: int = 60):
    for p in tasks.search_problems(n, 1, "train"):
        a, rest = p.prompt[len("Which n from 1 to 12 gives "):-1].split("n+")
        b, target = rest.split("=")
        yield p, [f"({target}-{b})/{a}", f"\\frac{{{target}-{b}}}{{{a}}}", f"{target}/{a}-{b}/{a}"]


@pytest.mark.parametrize("level", sorted(tasks.LEVELS))
def test_restating_the_synthetic_question_earns_nothing(level):
    refused = 0
    for p, arithmetic in synthetic_cases(level):
        assert p.numeric and a3po.reward(p.solution, p) == 1.0  # the worked answer is right
        assert a3po.reward(f"The answer is {p.answer} apples.", p) == 1.0
        for text in restatements(arithmetic):
            assert verifier.score(text, p.answer) == 1.0, text  # equal in value: the loophole the default reading has
            assert a3po.reward(text, p) == 0.0, (text, p.answer)
            assert a3po.reward(text, p, fallback=True) == 0.0, (text, p.answer)
            refused += 1
    assert refused >= 400


def test_restating_the_search_question_earns_nothing():
    refused = 0
    for p, forms in search_cases():
        assert p.numeric and a3po.reward(p.solution, p) == 1.0
        assert a3po.reward(f"\\boxed{{n = {p.answer}}}", p) == 1.0
        for form in forms:
            for text in (f"\\boxed{{{form}}}", f"The answer is {form}.", f"\\boxed{{n = {form}}}"):
                assert verifier.score(text, p.answer) == 1.0, text
                assert a3po.reward(text, p) == 0.0, text
                refused += 1
    assert refused >= 500


def test_gsm8k_rewards_the_number_and_math_keeps_equivalence(tmp_path):
    gsm = tmp_path / "gsm8k.jsonl"
    write_jsonl(gsm, [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
                       "answer": "In May 48/2 = <<48/2=24>>24.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"},
                      {"question": "A shirt costs $12.50 and a hat $7.25. What do both cost?",
                       "answer": "12.50 + 7.25 = 19.75\n#### 19.75"}])
    clips, shirt = tasks.load_problems(str(gsm))
    assert clips.numeric and shirt.numeric
    for text in ("\\boxed{72}", "#### 72", "The answer is 72 clips.", "\\boxed{\\$72}", "48+24=72 so \\boxed{72}",
                 "\\boxed{72.0}", "\\boxed{seventy-two}"):
        assert a3po.reward(text, clips) == 1.0, text
    for text in ("\\boxed{48+48/2}", "#### 48 + 24", "\\boxed{\\frac{3 \\cdot 48}{2}}", "\\boxed{144/2}",
                 "\\boxed{48 \\times 1.5}", "\\boxed{72 = 48+24}"):
        assert verifier.score(text, clips.answer) == 1.0, text
        assert a3po.reward(text, clips) == 0.0, text
    assert a3po.reward("\\boxed{\\$19.75}", shirt) == 1.0 and a3po.reward("\\boxed{12.50+7.25}", shirt) == 0.0
    assert a3po.reward("\\boxed{\\frac{79}{4}}", shirt) == 1.0  # a fraction in lowest terms is a number

    math_file = tmp_path / "math.jsonl"
    write_jsonl(math_file, [{"problem": "Rationalise 1/sqrt(3).", "answer": "\\frac{1}{\\sqrt{3}}"},
                            {"problem": "What is 2+3?", "answer": "5"},
                            {"problem": "Compute $\\dbinom{8}{4}$.", "answer": "70"}])
    surd, five, binom = tasks.load_problems(str(math_file))
    assert not surd.numeric and not five.numeric
    assert a3po.reward("\\boxed{\\frac{\\sqrt{3}}{3}}", surd) == 1.0
    assert a3po.reward("\\boxed{\\frac{10}{2}}", five) == 1.0  # equivalence, as MATH graders do
    # but never the question's own math handed back, in training or in evaluation's lenient read
    assert verifier.score("\\boxed{\\dbinom{8}{4}}", binom.answer) == 1.0
    assert a3po.reward("\\boxed{\\dbinom{8}{4}}", binom) == a3po.reward("$\\binom{8}{4}$", binom, fallback=True) == 0.0
    assert a3po.reward("\\boxed{70}", binom) == 1.0

    # --answer-check overrides the task's own choice, for every problem of a run
    def loaded(check, data):
        cfg = a3po.apply_preset("a3po", dict(data=str(data), eval_data=str(data), eval_size=2, answer_check=check))
        train, (held_out,) = runs.load_problems(cfg)
        return train, held_out.problems
    train, held_out = loaded("number", math_file)
    assert all(p.numeric for p in train + held_out) and a3po.reward("\\boxed{\\frac{10}{2}}", held_out[1]) == 0.0
    train, held_out = loaded("equivalence", gsm)
    assert not any(p.numeric for p in train + held_out) and a3po.reward("\\boxed{48+48/2}", train[0]) == 1.0
    assert all(p.numeric for p in loaded("auto", gsm)[0])
    with pytest.raises(ValueError, match="--answer-check"):
        a3po.apply_preset("a3po", dict(answer_check="strict"))


def test_number_only_changes_nothing_against_a_gold_that_is_not_a_number():
    for pred, gold in (("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt{3}}"), ("\\boxed{(1,2)}", "(1, 2)"),
                       ("\\boxed{x^2+2x+1}", "(x+1)^2"), ("\\boxed{2\\pi}", "2\\pi")):
        assert verifier.score(pred, gold, number_only=True) == verifier.score(pred, gold) == 1.0


def test_training_and_evaluation_score_with_the_same_reward(monkeypatch):
    """Rollouts and held-out samples whose text restates the question score 0 in both places
    (and in lenient_acc); the worked answers score 1 in both."""
    net, tok = model.load(runs.resolve_model_path("data/default_model"))
    problems = tasks.synthetic_problems(4, 0, "test", 3, "expr")
    ids = [tasks.build_prompt(p.prompt, tok) for p in problems]
    cfg = a3po.apply_preset("a3po", dict(group_size=2, eval_k=(2,), max_new_tokens=64))

    def answer_with(texts):
        by_prompt = {tuple(i): t for i, t in zip(ids, texts)}
        def fake(policy, prompts, *a, **k):
            ids = [tok.encode(by_prompt[tuple(p)]) + tok.eos_ids[:1] for p in prompts]
            return ids, [[0.0] * len(i) for i in ids]
        monkeypatch.setattr(a3po.model, "generate", fake)

    answer_with([f"\\boxed{{{p.prompt[len('What is '):-1]}}}" for p in problems])
    rollouts, _, _ = a3po.rollout_groups(net, tok, cfg, problems, ids, torch.zeros(8, dtype=torch.long))
    assert [r.correct for r in rollouts] == [0.0] * 8
    ev = a3po.evaluate(net, tok, cfg, problems, ids)
    assert ev["pass@1"] == ev["lenient_acc"] == ev["greedy_acc"] == 0.0

    answer_with([p.solution for p in problems])
    rollouts, _, _ = a3po.rollout_groups(net, tok, cfg, problems, ids, torch.zeros(8, dtype=torch.long))
    assert [r.correct for r in rollouts] == [1.0] * 8
    ev = a3po.evaluate(net, tok, cfg, problems, ids)
    assert ev["pass@1"] == ev["lenient_acc"] == ev["greedy_acc"] == 1.0
    # the same problems read with equivalence (--answer-check equivalence) would pay the restatement
    eq = [dataclasses.replace(p, numeric=False) for p in problems]
    assert all(a3po.reward(f"\\boxed{{{p.prompt[len('What is '):-1]}}}", p) == 1.0 for p in eq)
