"""verifier.py: is a free-form math answer right? The reward of RL with verifiable rewards.

    score(response, gold, fallback=False, number_only=False, question=None) -> 1.0 or 0.0; never raises
    extract_answer(response, fallback=False) -> the final answer in a response, or None
    gold_text(gold) -> the gold answer in a gold field (a GSM8K rationale, a solution)
    is_equivalent(pred, gold, number_only=False) -> are they the same answer?
    restates(answer, gold, question) -> is the answer the question's own math, not worked out?

score = extract -> normalise -> parse -> compare, in that order, each a section below:
1. Extract the final answer: an R1-style <answer>...</answer>, else the last \\boxed{}
   (boxes joined by "and" / "," form one list), unless a marker after it ("The answer
   is", "Answer:", "####", "答案是") gives one. Only with fallback=True (evaluation):
   the whole response when it is a bare answer, else what its last sentence states
   ("... is 42."), else its last math span, else its last number, else its last
   "(A)".."(E)". Nothing found is a reward of 0.
2. Normalise both sides to one canonical string: LaTeX spacing and synonyms, unicode,
   \\text{}, units and currency after a number, degrees, thousands separators, number
   words, repeating decimals, plain-text maths (sqrt(3)/3, pi/2), mixed numbers (1 1/2),
   times of day (8:34 PM = 20:34). Equal strings are a match. Before that, two answers
   that both carry a known unit must agree on it or convert exactly (2 h = 120 min).
3. Parse each into a tree (verifier_forms.py): unordered lists ("1, 2", sets, \\pm),
   tuples and intervals (brackets must match), matrices, equations, relations, and
   values computed by our own small evaluator (model output is never run as code).
4. Compare the trees: lists one to one in any order; tuples in order; exact rationals
   exactly (0.33 != 1/3, and a decimal never equals an irrational); expressions with
   sqrt, pi, e or variables at fixed sample points to 1e-9 (noise, never a near miss;
   what floats cannot tell apart, like 2^{1/2^{1000}} and 1, is refused);
   equations and inequalities up to a constant factor; a gold inequality accepts its
   interval, never the reverse; a gold "75%" also accepts 0.75.
number_only=True (tasks that ask to compute a number): against a numeric gold, only a
number written out counts, so restating the question's arithmetic ("12+11+3") earns 0.
question= (the problem's text): an answer that restates its math equal to the gold, however
dressed ("(\\sqrt{242})" for "Simplify $\\sqrt{242}$."), earns 0 (restates).

Every rule with its examples: docs/verifier.md. Standard library only; inputs are cut
(50,000 characters of response, 1,000 of answer) and numbers bounded, so a call takes
milliseconds whatever the input.
"""
import functools
import math
import re
from collections import Counter
from fractions import Fraction

from verifier_forms import (
    FALLBACK_CHARS, MAX_ANSWER_CHARS, TAIL_CHARS, Alt, Equation, Items, Leaf, Matrix, Named,
    Relation, Seq, Unsupported, after_marker, analyse, answer_tag, as_text, base_subscript,
    brace_fracs, brackets_commas, choice_letter, clock_time, close, decimal_comma,
    drop_modulus, drop_thousands, has_percent, is_bare, is_digits, is_name, last_boxed,
    last_choice, last_number, math_spans, mixed_numbers, number_word, plain_text_math,
    precision, quantity, ratio, repeating_decimals, replace_word, rewrite_commands, rounding,
    same_quantity, sanitize, scale_word, squeeze_spaces, stated, strip_chat,
    strip_plain_units, strip_wrappers, unicode_to_latex)


# ------------------------------------------------------------------------- public API
def score(response, gold, fallback=False, number_only=False, question=None):
    """1.0 if the response's final answer matches gold, else 0.0. Never raises.
    fallback=True: see extract_answer. question: the problem's text; an answer that restates its
    math instead of working it out earns nothing (see restates), whatever its value.
    number_only=True, for tasks that ask to compute a number (the reward of the synthetic
    task, the search task, GSM8K): against a gold that is a number, the answer must be a
    number written out (integer, decimal, fraction in lowest terms, mixed number; units,
    currency and percent as the default reading allows), so restating the question's
    arithmetic unevaluated ("12+11+3", "\\frac{56-6}{5}", "2 \\cdot 7") earns nothing.
    The default (False) accepts any mathematically equal answer."""
    try:
        answer = extract_answer(response, fallback)
        gold = gold_text(gold)
        if answer is None or gold is None:
            return 0.0
        if not is_equivalent(answer, gold, number_only):
            return 0.0
        return 0.0 if question is not None and restates(answer, gold, question) else 1.0
    except Exception:  # a reward function must not crash a training run
        return 0.0


def restates(answer, gold, question):
    """Is the answer the question's own expression of the gold, not worked out? "Compute
    $\\dbinom{31}{28}$." answered \\dbinom{31}{28}, "Simplify $\\sqrt{242}$." answered \\sqrt{242},
    "Express $0.\\overline{7}$ as a common fraction." answered 0.\\overline{7}: each equals the
    gold, and each would be a reward for restating the question. A piece of the question's math
    that equals the gold (question_pieces) is restated when the answer still holds every number
    and letter of the piece, in any order and whatever surrounds or rewrites them: wrapping the
    copy ("(\\sqrt{242})", "1 \\cdot \\sqrt{242}", "\\sqrt{242}+0"), reordering it
    ("10+2a+5b+ab") or changing its functions ("242^{1/2}") hides nothing. Of an answer of several
    sides, the last is the one compared with the gold, so it is the one read ("\\binom{31}{28} =
    4495" is worked out, "2 = \\sqrt{242}" is not), a side that only names the answer ("x")
    aside. An answer whose numbers and letters are exactly the gold's is the gold's own form, and
    always stands."""
    pieces = question_pieces(as_text(question) or '', gold)
    sides = [s for s in answer.split('=') if s.strip() and not is_name(s)] if pieces else []
    if not sides:  # most questions hold no piece equal to the gold: nothing to read
        return False
    have, golds = _values(sides[-1]), _values(gold)
    return any(_copies(have, need, golds) for _, need in pieces)


def _copies(have, need, golds):
    """Does an answer holding `have` restate a piece holding `need`, for a gold holding `golds`
    (each a Counter of numbers and letters)? It holds the piece, and is not the gold's own
    numbers and letters (the gold's form, in any order). Holding more than the gold does not
    clear it: "1 \\cdot" and "\\frac{2(...)}{2}" would add a gold's 1 or 2."""
    return not need - have and have != golds


@functools.lru_cache(maxsize=4096)  # a question is scored once per sample of its group
def question_pieces(question, gold):
    """(piece, its numbers and letters) for each piece of the question's math (a math span cut
    at every "=" and ",") that equals the gold and has an operation on two values or more, or a
    function of one ("\\sqrt{242}"): what restates looks for."""
    pieces = set()
    for _, _, span in math_spans(question[-TAIL_CHARS:]):
        pieces.update(part.strip() for part in span.replace(',', '=').split('='))
    found = []
    for piece in sorted(pieces):
        need, written = _values(piece), _written(piece)
        if ((sum(need.values()) >= 2 and _OPERATION.search(written) or need and _FUNCTION.search(written))
                and is_equivalent(piece, gold)):
            found.append((piece, need))
    return tuple(found)


# x^25 is x^{2}5 and \log_264 is \log_{2}64; a word of three letters or more is prose or a unit
_TOKEN = re.compile(r'\\[A-Za-z]+|(?<=[_^])\d|\d*\.?\d+|[A-Za-z]{3,}|[A-Za-z]')
_FUNCTION = re.compile(r'\\(?!text|mathrm|mathbf|textbf|displaystyle|q?quad)[A-Za-z]+')
_OPERATION = re.compile(r'[-+*/^!|]|[\w)]\s*\(|' + _FUNCTION.pattern)


def _written(s):
    """s with LaTeX synonyms, \\left / \\right and \\frac12 = \\frac{1}{2} rewritten."""
    s = rewrite_commands(unicode_to_latex(sanitize(s)))
    return brace_fracs(s) if '\\frac' in s else s


def _values(s):
    """The numbers and letters of s as written (LaTeX synonyms and \\frac12 = \\frac{1}{2}
    aside), counted, in no order: what an answer must drop some of to count as worked out.
    Operators, functions, layout and words ("15 each") are not values."""
    return Counter(t for t in _TOKEN.findall(_written(s)) if t[0] != '\\' and (len(t) == 1 or not t.isalpha()))


def extract_answer(response, fallback=False):
    """The final answer in a response, or None. Strict (the default): the last box, or a
    marked answer ("the answer is", "Answer:", "####") that comes after it. fallback=True:
    else the whole response when it is a bare answer, else the answer its last sentence
    states, else its last math span, else its last number, else its last choice letter."""
    try:
        text = as_text(response)
        if text is None:
            return None
        text = strip_chat(sanitize(text[-TAIL_CHARS:]))
        tagged = answer_tag(text)
        if tagged is not None:  # R1-style "<answer>42</answer>" marks its answer
            inner = extract_answer(tagged, fallback)  # a box or marker inside it decides
            return inner if inner is not None or not is_bare(tagged) else tagged.strip()
        boxed, box_end = last_boxed(text, is_equivalent)
        marked, pos = after_marker(text, is_equivalent)
        # a marked answer after the last box wins ("Final Answer: The final answer is $13$"),
        # if it is an answer and not a remark ("this answer is checked by ...")
        if boxed is not None and (marked is None or pos < box_end or
                                  not any(c.isdigit() or c in '\\$' for c in marked)):
            return boxed
        if marked is not None:
            return marked or None
        if not fallback:
            return None
        if is_bare(text):
            return text.strip().strip('*').strip()
        tail = text[-FALLBACK_CHARS:]
        if len(text) > FALLBACK_CHARS and '\n' in tail:
            tail = tail[tail.find('\n') + 1:]  # start on a line, so $ pairs line up
        said = stated(tail)
        if said is not None:
            return said
        return _last_span_or_number(tail)
    except Exception:  # a reward function must not crash a training run
        return None


def gold_text(gold):
    """The gold answer in a gold field: after GSM8K's '####', the last box (or boxes joined
    by connectives) of a whole solution, the marked answer of a gold written as a
    response, else the field itself."""
    text = as_text(gold)
    if text is None:
        return None
    text = sanitize(text[-TAIL_CHARS:])
    if '####' in text:
        return text.rsplit('####', 1)[1].strip()
    if '\\boxed' in text or '\\fbox' in text:
        boxed, _ = last_boxed(text, is_equivalent)
        if boxed is not None:
            return boxed
    if not is_bare(text.replace('$', ' ')):  # a gold written as a response
        marked, _ = after_marker(text, is_equivalent)
        if marked is not None:
            return marked
    return text


def is_equivalent(pred, gold, number_only=False):
    """Are pred and gold the same mathematical answer? number_only=True: against a gold
    that is a number, pred must be a number written out (see score)."""
    try:
        p, g = as_text(pred), as_text(gold)
        if p is None or g is None:
            return False
        p, g = sanitize(p).strip(), sanitize(g).strip()
        if not p or not g:
            return False
        if p == g:
            return True
        if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
            return False
        pq, gq = quantity(p), quantity(g)
        if pq and gq:  # both carry a known unit: it must agree, or convert exactly
            same = same_quantity(pq, gq)
            if same is not None:
                return same
        pc, gc = _canonical(p), _canonical(g)
        if not pc or not gc:
            return False
        if pc == gc:
            return True
        percent = has_percent(g) and not has_percent(p)
        pa, ga = analyse(pc), analyse(gc)
        if number_only and _written_numbers(ga) is not None:
            pa = _written_numbers(pa)  # the gold is a number: so must pred be, written out
            if pa is None:
                return False
        if _same(pa, ga, percent):
            return True
        # a decimal comma ("1,22", "0,111", "1000,99") against a decimal written with a point
        pd, gd = decimal_comma(pc), decimal_comma(gc)
        if pd and '.' in gc and precision(gc):
            return _same(analyse(pd), analyse(gc), percent)
        if gd and '.' in pc and precision(pc):
            return _same(analyse(pc), analyse(gd), percent)
        return False
    except Exception:  # a reward function must not crash a training run
        return False


# ---------------------------------------------------------------------------- extract
def _last_span_or_number(text):
    """The last math span, or the last number after it, whichever comes later ("... the
    error grows by 100%."); spans joined by "or" / "and" / "," are one list."""
    spans = [sp for sp in math_spans(text) if sp[2].strip()]
    if spans and not any(c.isdigit() for c in text[spans[-1][1]:]):
        last = [spans[-1][2].strip()]  # "so $x=2$ or $x=3$."
        for a, b in zip(spans[-2::-1], spans[:0:-1]):
            if text[a[1]:b[0]].strip() not in ('', ',', 'or', 'and', ', or', ', and'):
                break
            last.append(a[2].strip())
        return ', '.join(reversed(last))
    number = last_number(text[spans[-1][1]:] if spans else text)
    if number is not None or spans:
        return number if number is not None else spans[-1][2].strip()
    return last_choice(text)


# -------------------------------------------------------------------------- normalise
def _canonical(s):
    """The normalised string of an answer. The order matters: unicode before wrappers,
    \\ge before commands, commands (which drop \\text units) before plain units, spaces
    squeezed last but for number words, thousands and fractions."""
    s = unicode_to_latex(s)
    if len(s) > 2 * MAX_ANSWER_CHARS:  # 1000 x '½' grows 11-fold
        raise Unsupported('answer too long')
    s = strip_wrappers(s)
    time = clock_time(s)
    if time:  # "08:34 P.M." is 20:34
        return time
    for a, b in (('>=', '\\ge '), ('<=', '\\le '), ('!=', '\\ne '), ('=<', '\\le '),
                 ('=>', '\\ge ')):
        s = s.replace(a, b)
    s = repeating_decimals(s)
    for pat in ('^{\\circ}', '^\\circ', '{}^{\\circ}', '^{\\prime}', '^\\prime'):
        s = s.replace(pat, "'" if 'prime' in pat else '')
    s = drop_modulus(rewrite_commands(drop_modulus(s)))
    for a, b in (('^{}', ''), ('~', ' '), ('\n', ' '), ('\t', ' '), ('\r', ' '), ('$', ''),
                 ('%', ''), ('{,}', ','), ('{, }', ',')):
        s = s.replace(a, b)
    s = brackets_commas(s)
    s = replace_word(replace_word(s, 'or', ','), 'and', ',')
    s = plain_text_math(s)
    s = scale_word(strip_plain_units(scale_word(s.strip())))
    spaced_comma = bool(s.count(', ')) and not s.strip().startswith(('(', '[', '\\{'))
    s = squeeze_spaces(s)
    s = s.strip().rstrip('.').strip(',;')
    while s.endswith('\\\\'):
        s = s[:-2]
    if s.startswith('+'):
        s = s[1:]
    s = number_word(s)
    if not spaced_comma:  # "21, 345" is a list of two numbers, "21,345" one number
        s = drop_thousands(s)
    return mixed_numbers(brace_fracs(s) if '\\frac' in s else s)


# ---------------------------------------------------------------------------- compare
def _same(p, g, percent):
    """Is the parsed prediction p the parsed gold g? percent: the gold had a "%" the
    prediction lacks, so gold/100 is right too."""
    if isinstance(p, Items) and len(p.items) == 1:
        p = p.items[0]
    if isinstance(g, Items) and len(g.items) == 1:
        g = g.items[0]
    if isinstance(p, Alt):  # "x = 1/3 \approx 0.33": either form
        return any(_same(x, g, percent) for x in p.forms)
    if isinstance(g, Alt):
        return any(_same(p, x, percent) for x in g.forms)
    if isinstance(p, Named) and isinstance(g, Equation):  # "y = 2x - 1" vs "4x - 2y - 2 = 0"
        return _same_equation(p.equation, g)
    if isinstance(g, Named) and isinstance(p, Equation):
        return _same_equation(p, g.equation)
    if isinstance(p, Named) and isinstance(g, Named):  # the values, else the equations
        return _same(p.value, g.value, percent) or _same_equation(p.equation, g.equation)
    if isinstance(p, Named):
        return _same(p.value, g, percent)
    if isinstance(p, Items) and isinstance(g, Items) and _names(p) and _names(p) == _names(g):
        # "a_{12} = 7, a_2 = 5" against "a_2 = 5, a_{12} = 7": match by name
        by_name = {x.name: x for x in p.items}
        return all(_same(by_name[x.name].value, x.value, percent) for x in g.items)
    if isinstance(g, Named):
        return g.strong and _same(p, g.value, percent)
    if isinstance(g, Relation):  # a gold inequality accepts its interval; not the reverse
        if isinstance(p, Relation):
            return _same_relation(p, g, percent)
        return g.interval is not None and _same(p, g.interval, percent)
    if isinstance(p, Relation):
        return False
    if isinstance(p, Items) and isinstance(g, Seq) and g.brackets == '()':
        p = Seq('()', p.items)  # "1, 2" against "(1, 2)": in order
    if isinstance(g, Items) and isinstance(p, Seq) and p.brackets == '()':
        g = Seq('()', g.items)
    if isinstance(p, Matrix) and isinstance(g, (Matrix, Seq)):
        p = _as_vector(p)
    if isinstance(g, Matrix) and isinstance(p, (Matrix, Seq)):
        g = _as_vector(g)
    if type(p) is not type(g):
        return False
    if isinstance(p, Leaf):
        return _same_leaf(p, g, percent)
    if isinstance(p, Equation):
        return _same_equation(p, g)
    if isinstance(p, Items):
        return _same_items(p.items, g.items, percent)
    if isinstance(p, Seq):
        return p.brackets == g.brackets and len(p.items) == len(g.items) and all(
            _same(a, b, percent) for a, b in zip(p.items, g.items))
    return len(p.rows) == len(g.rows) and all(
        len(a) == len(b) and all(_same(x, y, percent) for x, y in zip(a, b))
        for a, b in zip(p.rows, g.rows))


def _same_leaf(p, g, percent):
    if p.text == g.text:
        return True
    letter = choice_letter(g.text, False)
    if letter:
        return choice_letter(p.text, True) == letter
    if (p.text.isalpha() and len(p.text) >= 3) or (g.text.isalpha() and len(g.text) >= 3):
        return p.text.lower() == g.text.lower()  # words: "east", "\text{Evelyn}"
    if p.value is None or g.value is None or p.value.names != g.value.names:
        return False
    pb, gb = base_subscript(p.text), base_subscript(g.text)
    if None not in (pb, gb) and pb != gb:
        return False  # 4343_6 vs 4343_7 (a base subscript alone may be left out)
    if p.precision and ('.' in p.text or 'e' in p.text.lower()) and not g.precision and not all(
            isinstance(x, Fraction) for x in g.value.points):
        return False  # a decimal is an exact rational: 1.41421356237 is not sqrt(2)
    tol = rounding(p, g)
    targets = [g.value.points]
    if percent:  # gold 75%: 0.75 is right too
        targets.append(tuple(x / 100 for x in g.value.points))
    return any(all(close(a, b, tol) for a, b in zip(p.value.points, t)) for t in targets)


def _same_equation(p, g):
    """Equations are equal when (lhs - rhs) of one is a nonzero multiple of the other's."""
    if p.value is None or g.value is None or p.value.names != g.value.names:
        return p.text == g.text
    return ratio(p.value.points, g.value.points) is not None or p.text == g.text


def _same_relation(p, g, percent):
    """Inequalities a < b are equal when (a - b) of one is a positive multiple of the
    other's (any nonzero multiple for !=); else compare their intervals, else the text."""
    pi, gi = p.inequality, g.inequality
    if (pi and gi and pi.op == gi.op and pi.value and gi.value and pi.value.names
            and pi.value.names == gi.value.names):
        r = ratio(pi.value.points, gi.value.points)
        if r is not None and (pi.op == '!=' or (abs(r.imag) < 1e-9 and r.real > 0)):
            return True
    if p.interval is not None and g.interval is not None:
        return _same(p.interval, g.interval, percent)
    return p.text == g.text


def _same_items(ps, gs, percent):
    """One-to-one matching, order free; a tuple the prediction repeats counts once."""
    if len(ps) > len(gs):
        unique = []
        for p in ps:
            if not (isinstance(p, Seq) and any(_same(p, q, percent) for q in unique)):
                unique.append(p)
        ps = unique
    if len(ps) != len(gs):
        return False
    used = [False] * len(ps)
    for g in gs:
        for k, p in enumerate(ps):
            if not used[k] and _same(p, g, percent):
                used[k] = True
                break
        else:
            return False
    return True


def _as_vector(node):
    """A one-row or one-column matrix as the tuple of its cells."""
    if len(node.rows) == 1 or all(len(r) == 1 for r in node.rows):
        return Seq('()', tuple(c for r in node.rows for c in r))
    return node


def _names(node):
    """The names of a list whose items all name their value, each once; else None."""
    names = [x.name if isinstance(x, Named) else None for x in node.items]
    return set(names) if None not in names and len(set(names)) == len(names) else None


# ------------------------------------------------------------------------ number_only
def _numeral(s):
    """Is s (canonical) a number written out: an integer, a decimal, e-notation, a fraction of
    two integers in lowest terms, or a mixed number? Not an expression still to evaluate."""
    body = s[1:] if s[:1] == '-' else s
    if precision(body) is not None:
        return True
    if body.startswith('(') and body.endswith(')') and '+' in body:  # "1 1/2" -> "(1+\\frac{1}{2})"
        whole, _, frac = body[1:-1].partition('+')
        return is_digits(whole) and _numeral(frac)
    if body.startswith('\\frac{') and body.endswith('}') and '}{' in body:
        a, _, b = body[6:-1].partition('}{')
    else:
        a, _, b = body.partition('/')
    return (is_digits(a) and is_digits(b) and int(b) > 1
            and math.gcd(int(a), int(b)) == 1)


def _written_numbers(node):
    """The parts of a parsed answer that are numbers written out ("x = 26" gives 26;
    "12+11+3 = 26" gives 26; "26 = 12+11+3" and "\\frac{56-6}{5}" give nothing), or None."""
    if isinstance(node, Items) and len(node.items) == 1:
        return _written_numbers(node.items[0])
    if isinstance(node, Named):
        return _written_numbers(node.value)
    if isinstance(node, Alt):  # "x = 1/3 \\approx 0.33": only the written forms may match
        parts = [x for x in map(_written_numbers, node.forms) if x is not None]
        return None if not parts else parts[0] if len(parts) == 1 else Alt(tuple(parts))
    return node if isinstance(node, Leaf) and _numeral(node.text) else None
