"""Benchmark of verifier.py against HuggingFace math-verify, and its speed.

    .venv/bin/python bench/verifier.py [--show N] [--table-only]
    (math-verify: pip install -r requirements-bench.txt; without it only ours is graded)

1. The labelled table: tests/test_verifier.py's EQUIV (each prediction boxed in a short
   response) and RESPONSES, tests/verifier_cases.py's CASES and the cases it builds from
   ../shared/datasets (MATH-500 solutions, GSM8K answer fields). Each case is graded by
   verifier.score(response, gold, fallback=True) and by math-verify configured as verl
   does (gold parsed from \\boxed{gold} with LaTeX extraction, the prediction with
   expression and LaTeX extraction): accuracy, false accepts, false rejects, time per
   case (mean, p99, worst), and accuracy by source class.
2. Every gold of ../shared/datasets/*.jsonl against itself and rewritten forms of itself
   (boxed in a response, spaces added, \\frac <-> \\dfrac, trailing period, $...$):
   cases/second, the slowest case, and any rewrite we fail to accept.
3. Copies of the question: every piece of a dataset question's math that equals its gold,
   dressed ten ways (in brackets, times one, plus zero, named, after a number, terms turned,
   ...) and scored with the question: the problems where a copy is paid, and any gold refused.
4. The hostile inputs of tests/test_verifier.py, strict and with the fallback: the slowest.
The outside table (tests/verifier_outside_cases.py: other projects' grader tests and
verifier issue threads, not used to write the rules) is graded like the labelled table
and reported apart from it, for ours and for math-verify.
"""
import argparse
import glob
import importlib.util
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import verifier as V  # noqa: E402
from data.tasks import gold_answer  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'datasets')
if not os.path.isdir(DATA):
    DATA = '/work/shared/datasets'


def load_tests():
    """The case tables of tests/test_verifier.py and tests/verifier_cases.py (no pytest run)."""
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    path = os.path.join(ROOT, 'tests', 'test_verifier.py')
    spec = importlib.util.spec_from_file_location('test_verifier_tables', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import verifier_cases
    mod.CASES = verifier_cases
    return mod


def dataset_golds():
    golds = []
    for path in sorted(glob.glob(os.path.join(DATA, '*.jsonl'))):
        name = os.path.basename(path).replace('.jsonl', '')
        with open(path, encoding='utf-8') as f:
            golds += [(name, gold_answer(json.loads(line))) for line in f]
    return golds


def rewrites(gold):
    """Forms a correct model might write the gold in: (label, response, is_response)."""
    # a space after a comma, except inside a grouped number ("58,500", "10,\\!080")
    spaced = ''.join(', ' if ch == ',' and not gold[k + 1:k + 2].isdigit() and
                     not gold.startswith('\\!', k + 1) else ch for k, ch in enumerate(gold))
    spaced = spaced.replace('+', ' + ').replace('=', ' = ')
    frac = gold.replace('\\frac', '\\dfrac') if '\\frac' in gold else gold.replace('\\dfrac', '\\frac')
    return [('self', gold, False),
            ('boxed', 'Reasoning ... so the final answer is $\\boxed{%s}$.' % gold, True),
            ('spaces', spaced, False), ('dfrac', frac, False), ('period', gold + '.', False),
            ('dollars', '$' + gold + '$', False)]


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def bench_datasets(golds):
    n, total, slowest, misses = 0, 0.0, (0.0, ''), []
    for name, gold in golds:
        for label, text, is_response in rewrites(gold):
            ok, dt = timed(V.score if is_response else V.is_equivalent, text, gold)
            n, total = n + 1, total + dt
            slowest = max(slowest, (dt, '%s %s %r' % (name, label, text[-60:])))
            if not ok:
                misses.append((name, label, text, gold))
    print('dataset golds: %d golds, %d cases in %.2f s = %.0f cases/s; mean %.3f ms; slowest %.2f ms: %s'
          % (len(golds), n, total, n / total, 1e3 * total / n, 1e3 * slowest[0], slowest[1]))
    print('  rewrites not accepted: %d' % len(misses))
    for m in misses[:15]:
        print('   ', m)


def disguises(piece):
    """A copy of a question piece, dressed so that it is no longer written as in the question."""
    terms = [t for t in re.split(r'(?=[+-])', piece.replace(' ', '')) if t]
    rotated = '+'.join(terms[1:] + terms[:1]).replace('+-', '-').lstrip('+') if len(terms) > 1 else None
    forms = [('as written', piece), ('brackets', '(%s)' % piece), ('times one', '1 \\cdot %s' % piece),
             ('plus zero', '%s + 0' % piece), ('named', 'x = %s' % piece), ('named after', '%s = x' % piece),
             ('over one', '\\frac{%s}{1}' % piece), ('twice, halved', '\\frac{2(%s)}{2}' % piece),
             ('after a number', '2 = %s' % piece)]
    return forms + ([('terms turned', rotated)] if rotated else [])


def bench_copies():
    """Every record of ../shared/datasets with its question: each disguise of each piece of
    the question's math that equals the gold (verifier.question_pieces), boxed, scored with
    the question (a3po.reward's call). A paid disguise is a reward for restating the question;
    the gold itself must always be paid."""
    problems, paid, cases, by_form, golds_refused = 0, [], 0, {}, 0
    for path in sorted(glob.glob(os.path.join(DATA, '*.jsonl'))):
        name = os.path.basename(path).replace('.jsonl', '')
        with open(path, encoding='utf-8') as f:
            for line in f:
                record = json.loads(line)
                question, gold = record.get('problem') or record.get('question'), gold_answer(record)
                if V.score('So \\boxed{%s}.' % gold, gold, question=question) != 1.0:
                    golds_refused += 1
                # a piece with the gold's own numbers and letters is the gold's form: nothing to catch
                pieces = [piece.rstrip('.').strip() for piece, need in V.question_pieces(question, gold)
                          if need != V._values(gold)]
                problems += bool(pieces)
                hits = []
                for piece in pieces:
                    for label, text in disguises(piece):
                        cases += 1
                        if V.score('So \\boxed{%s}.' % text, gold, question=question) == 1.0:
                            hits.append((label, text))
                            by_form[label] = by_form.get(label, 0) + 1
                if hits:
                    paid.append((name, gold, hits[0]))
    print('copies of the question: %d problems with a piece equal to the gold, %d disguised copies; '
          'paid on %d problems (%s); golds refused: %d'
          % (problems, cases, len(paid), ', '.join('%s %d' % kv for kv in sorted(by_form.items())) or 'none',
             golds_refused))
    for p in paid[:15]:
        print('   ', p)


def bench_hostile(hostile):
    n, total, slowest = 0, 0.0, (0.0, '')
    for text in hostile:
        for fn, args in ((V.score, (text, '42')), (V.score, ('\\boxed{%s}' % text, text[:2000])),
                         (V.score, (text, '42', True)), (V.score, ('42', text)),
                         (V.is_equivalent, (text, '1')), (V.is_equivalent, ('1', text))):
            _, dt = timed(fn, *args)
            n, total = n + 1, total + dt
            slowest = max(slowest, (dt, '%s(%r...)' % (fn.__name__, args[0][:40])))
    print('hostile inputs: %d cases in %.2f s = %.0f cases/s; slowest %.2f ms: %s'
          % (n, total, n / total, 1e3 * slowest[0], slowest[1]))


def math_verify_scorer():
    """math-verify as verl configures it: gold parsed from \\boxed{gold} with LaTeX
    extraction, the prediction with expression and LaTeX extraction; None if absent."""
    try:
        from math_verify.metric import math_metric
        from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig
    except ImportError:
        return None
    verify = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                         pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))

    def score(response, gold):
        try:
            return float(verify(['\\boxed{%s}' % gold], [response])[0])
        except BaseException:  # its timeouts raise outside Exception
            return 0.0
    return score


def labelled_table(tests):
    """(response, gold, expected, source) of every labelled case we keep."""
    table = [('Reasoning...\nSo the answer is $\\boxed{%s}$.' % p, g, e, 'ours')
             for p, g, e in tests.EQUIV]
    table += [(r, g, bool(e), 'ours') for r, g, e in tests.RESPONSES]
    table += list(tests.CASES.CASES) + tests.CASES.dataset_cases(DATA)
    return table


def grade(fn, table):
    """Right / false accepts / false rejects / per-source counts / times of one checker."""
    out = {'right': 0, 'fa': 0, 'fr': 0, 'times': [], 'wrong': [], 'by_source': {}}
    for resp, gold, expected, source in table:
        t = time.perf_counter()
        got = fn(resp, gold) == 1.0
        out['times'].append(time.perf_counter() - t)
        ok = got == expected
        out['right'] += ok
        out['fa'] += got and not expected
        out['fr'] += expected and not got
        n, r = out['by_source'].get(source, (0, 0))
        out['by_source'][source] = (n + 1, r + ok)
        if not ok:
            out['wrong'].append((expected, resp, gold, source))
    return out


def report(name, res, n):
    times = sorted(res['times'])
    print('  %-12s right %4d/%d = %5.1f%%  false accepts %3d  false rejects %3d  '
          'mean %.3f ms  p99 %.2f ms  worst %.2f ms'
          % (name, res['right'], n, 100.0 * res['right'] / n, res['fa'], res['fr'],
             1e3 * sum(times) / n, 1e3 * times[int(0.99 * (n - 1))], 1e3 * times[-1]))
    print('    by source: ' + ', '.join('%s %d/%d' % (s, r, k) for s, (k, r)
                                         in sorted(res['by_source'].items())))


def bench_table(tests, show):
    table = labelled_table(tests)
    n = len(table)
    print('labelled table: %d cases (%s)' % (n, ', '.join(
        '%s %d' % (s, sum(1 for c in table if c[3] == s))
        for s in sorted({c[3] for c in table}))))
    ours = grade(lambda r, g: V.score(r, g, fallback=True), table)
    report('ours', ours, n)
    mv = math_verify_scorer()
    if mv is None:
        print('  math-verify is not installed (pip install -r requirements-bench.txt)')
    else:
        report('math-verify', grade(mv, table), n)
    for e, r, g, src in ours['wrong'][:show]:
        print('    ours wrong (label %s, %s): %r vs gold %r' % (e, src, r[-70:], g[:40]))


def bench_outside(show):
    """The outside table (tests/verifier_outside_cases.py): other projects' grader tests
    and verifier issue threads, collected after the rules were written; reported apart."""
    from verifier_outside_cases import OUTSIDE_CASES
    n = len(OUTSIDE_CASES)
    print('outside table: %d cases from %d sources (not used to write the rules)'
          % (n, len({c[3] for c in OUTSIDE_CASES})))
    ours = grade(lambda r, g: V.score(r, g, fallback=True), OUTSIDE_CASES)
    report('ours', ours, n)
    mv = math_verify_scorer()
    if mv is not None:
        report('math-verify', grade(mv, OUTSIDE_CASES), n)
    for e, r, g, src in ours['wrong'][:show]:
        print('    ours wrong (label %s, %s): %r vs gold %r' % (e, src, r[-70:], str(g)[:40]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--show', type=int, default=30, help='our wrong cases to print')
    ap.add_argument('--table-only', action='store_true', help='skip the speed runs')
    args = ap.parse_args()
    tests = load_tests()
    bench_table(tests, args.show)
    bench_outside(args.show)
    if args.table_only:
        return
    golds = dataset_golds()
    if golds:
        bench_datasets(golds)
        bench_copies()
    else:
        print('no datasets under', DATA)
    bench_hostile(tests.HOSTILE)


if __name__ == '__main__':
    main()
