"""Benchmark of verifier.py: speed on the dataset golds and on hostile inputs, and the
cases where it disagrees with HuggingFace math-verify (when that is installed).

    .venv/bin/python bench/verifier.py [--mv-limit N]

1. Every gold of ../shared/datasets/*.jsonl against itself and rewritten forms of itself
   (boxed in a response, spaces added, \\frac <-> \\dfrac, trailing period, $...$):
   cases/second, the slowest case, and any rewrite we fail to accept.
2. The hostile inputs of tests/test_verifier.py: the slowest one.
3. math-verify vs ours on the labelled table of tests/test_verifier.py (accuracy of
   each against the labels) and on dataset golds vs rewritten forms: counts and a
   short table of disagreements.
"""
import argparse
import glob
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import verifier as V  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'datasets')
if not os.path.isdir(DATA):
    DATA = '/work/shared/datasets'


def load_tests():
    """The case tables of tests/test_verifier.py (no pytest run)."""
    path = os.path.join(ROOT, 'tests', 'test_verifier.py')
    spec = importlib.util.spec_from_file_location('test_verifier_tables', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dataset_golds():
    golds = []
    for path in sorted(glob.glob(os.path.join(DATA, '*.jsonl'))):
        name = os.path.basename(path).replace('.jsonl', '')
        with open(path, encoding='utf-8') as f:
            golds += [(name, V.gold_answer(json.loads(line))) for line in f]
    return golds


def rewrites(gold):
    """Forms a correct model might write the gold in: (label, response, is_response)."""
    spaced = gold.replace(',', ', ').replace('+', ' + ').replace('=', ' = ')
    frac = gold.replace('\\frac', '\\dfrac') if '\\frac' in gold else gold.replace('\\dfrac', '\\frac')
    return [('self', gold, False),
            ('boxed', 'Reasoning ... so the final answer is $\\boxed{%s}$.' % gold, True),
            ('spaces', spaced, False), ('dfrac', frac, False), ('period', gold + '.', False),
            ('dollars', '$' + gold + '$', False)]


def wrong_forms(gold):
    """Near misses a lenient checker accepts: (label, text). Both checkers should say no."""
    out = []
    k = min((gold.find(d) % (len(gold) + 1) for d in '0123456789'))
    if k < len(gold):
        wrong = gold[:k] + str((int(gold[k]) + 1) % 10) + gold[k + 1:]
        out += [('digit', wrong), ('hedge', gold + ' \\text{ or } ' + wrong)]
    if gold.lstrip('-').isdigit() and int(gold):
        out.append(('x100', str(int(gold) * 100)))
    if gold[:1] in '([' and gold[-1:] in ')]':
        swap = {'(': '[', '[': '(', ')': ']', ']': ')'}
        out.append(('bracket', swap[gold[0]] + gold[1:-1] + swap[gold[-1]]))
    return out


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


def bench_hostile(hostile):
    n, total, slowest = 0, 0.0, (0.0, '')
    for text in hostile:
        for fn, args in ((V.score, (text, '42')), (V.score, ('\\boxed{%s}' % text, text[:2000])),
                         (V.is_equivalent, (text, '1')), (V.is_equivalent, ('1', text))):
            _, dt = timed(fn, *args)
            n, total = n + 1, total + dt
            slowest = max(slowest, (dt, '%s(%r...)' % (fn.__name__, args[0][:40])))
    print('hostile inputs: %d cases in %.2f s = %.0f cases/s; slowest %.2f ms: %s'
          % (n, total, n / total, 1e3 * slowest[0], slowest[1]))


def math_verify_equal(mv, pred_text, gold):
    try:
        g = mv.parse('$' + gold + '$')
        p = mv.parse(pred_text)
        return bool(mv.verify(g, p))
    except Exception:
        return False


def bench_math_verify(tests, golds, limit):
    try:
        import math_verify as mv
    except ImportError:
        print('math-verify is not installed: no outside reference')
        return
    # Labelled pairs: accuracy of each checker against the labels of the test table.
    labelled = [('\\boxed{%s}' % p, g, e) for p, g, e in tests.EQUIV]
    labelled += [(r, g, bool(e)) for r, g, e in tests.RESPONSES if r]
    ours_right = mv_right = 0
    rows = []
    t_mv = t_ours = 0.0
    for resp, gold, expected in labelled:
        a, dt = timed(V.score, resp, gold)
        t_ours += dt
        b, dt = timed(math_verify_equal, mv, resp, gold)
        t_mv += dt
        ours_right += bool(a) == expected
        mv_right += b == expected
        if bool(a) != b:
            rows.append((expected, bool(a), b, resp, gold))
    n = len(labelled)
    print('labelled table (%d pairs): ours right on %d, math-verify right on %d; '
          'disagree on %d (ours %.2f ms/case, math-verify %.2f ms/case)'
          % (n, ours_right, mv_right, len(rows), 1e3 * t_ours / n, 1e3 * t_mv / n))
    print('  %-5s %-5s %-5s  %-40s %s' % ('label', 'ours', 'mv', 'response (tail)', 'gold'))
    for e, a, b, r, g in rows[:40]:
        print('  %-5s %-5s %-5s  %-40r %r' % (e, a, b, r[-40:], g[:30]))
    # Unlabelled pairs: dataset golds (GSM8K's plain integers left out, the rest sampled
    # evenly) vs rewritten forms that should match and near misses that should not.
    golds = [(n, g) for n, g in golds if not n.startswith('gsm8k')]
    golds = golds[::max(1, 6 * len(golds) // max(limit, 1))]
    right = [('\\boxed{%s}' % t if not r else t, g, label) for _, g in golds
             for label, t, r in rewrites(g) if label in ('boxed', 'spaces', 'dfrac')]
    wrong = [('\\boxed{%s}' % t, g, label) for _, g in golds for label, t in wrong_forms(g)]
    for title, pairs, want in (('correct rewrites', right, True), ('near misses', wrong, False)):
        both = only_ours = only_mv = neither = 0
        odd = []
        for resp, gold, label in pairs:
            a, b = V.score(resp, gold) == 1.0, math_verify_equal(mv, resp, gold)
            both += a and b
            only_ours += a and not b
            only_mv += b and not a
            neither += not a and not b
            if a != b:
                odd.append((label, a, b, resp, gold))
        print('dataset golds vs %s (%d pairs, want %s): both accept %d, only ours %d, '
              'only math-verify %d, neither %d' % (title, len(pairs), want, both, only_ours,
                                                  only_mv, neither))
        for label, a, b, r, g in odd[:12]:
            print('  %-7s ours=%-5s mv=%-5s %r vs gold %r' % (label, a, b, r[-40:], g[:40]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mv-limit', type=int, default=3000, help='dataset pairs given to math-verify')
    args = ap.parse_args()
    tests = load_tests()
    golds = dataset_golds()
    if golds:
        bench_datasets(golds)
    else:
        print('no datasets under', DATA)
    bench_hostile(tests.HOSTILE)
    bench_math_verify(tests, golds, args.mv_limit)


if __name__ == '__main__':
    main()
