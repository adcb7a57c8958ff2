"""verifier.py: decide whether a free-form math answer is right (the reward of RLVR).

    score(response, gold, fallback=False) -> 1.0 / 0.0   the reward; never raises
    extract_answer(response, fallback=False) -> str | None  the final answer in a response
    gold_text(gold) -> str                 the gold answer in a gold field (GSM8K, solution)
    is_equivalent(pred, gold) -> bool      same mathematical answer?
    gsm8k_gold, math_gold, olympiad_gold, gold_answer: the gold answer of a dataset record

Standard library only. Model output is never run as code: expressions go through the
small tokenizer/parser/evaluator below, with caps on length, depth and number size.
The pipeline, one section each below: extract -> normalise -> parse -> compare.

Rules
-----
Extraction (strict, the default, for training): the last \\boxed{} / \\fbox{} (nested
  braces balanced; an unclosed last box, i.e. truncated output, is skipped). Boxes on one
  line joined by a connective form one answer list: only joiners (",", "and", "or", "$",
  "\\quad", "y_2 =") or up to four words with "and" or a comma ("\\boxed{(2,1)} for part
  (a) and \\boxed{(0,4)}", "\\boxed{3} trucks and \\boxed{4} vans"), never a number; so the
  hedge "\\boxed{3} or \\boxed{4}" is the list {3, 4}; a correction between two boxes
  ("but", "wait", "then", "actually", ...) leaves the last box alone. Boxes restating one
  answer count once, unless "and" or a comma lists them ("\\boxed{90} and \\boxed{90}",
  "\\boxed{1}, \\boxed{1}" for the answer 1, 1). Markers: the
  rest of the line after the last "final answer is" / "answer is" / "answer:" / "####",
  cut at ". ", ", since", ", because", a remark in brackets ("12 (at x = 3)"); a bare
  "Answer" followed by a math span ("Answer $ 42 $", "Answer \\[ 42 \\]"; inline math broken
  over lines, "Answer $ \\n 42 \\n $", is no answer, as in Math-Verify); the text before
  "is the answer" / "is our answer" ("so 31 is the answer", "So \\frac{14}{3} is the
  answer"; a box there speaks for itself). A marked line that is a sentence (has an
  English word; "MR=SRMC" is kept whole) gives the answer in it: what follows its last
  " is ", else its last math span, else its last number ("Final Answer: The area is
  58." -> 58). A marker after the last box wins over it when its line is itself an
  answer (Minerva's "Final Answer: The final answer is $X$. I hope it is correct." after
  an earlier box); a remark does not ("The answer is consistent with the 2 cases").
  Chat tokens ("<|im_start|>user") are dropped; LaTeX escaped twice ("\\\\frac") is
  halved. Only the last 50,000 characters are read.
Extraction with fallback=True (for evaluation; last_number=True is its old name): with
  no box and no marker, the response itself when it is a bare answer (at most one word
  of two or more letters outside LaTeX: "$\\frac27$", "t \\in (1, 9]", "30 dollars",
  "prime", "all real numbers"), else the bare answer its last sentence states after
  " is " / " are " ("The solutions are x = 2 and x = -3.", "The vertex is at (2, -1)";
  a clause of reasons is cut off: "... is $\\frac16$ since there are 6 faces"), else the
  last math span ($...$, $$...$$, \\(...\\), \\[...\\]; inline ones never cross a line)
  with the spans joined to it by "or" / "and" / "," ("so $x=2$ or $x=3$" is a list),
  unless a number comes after it ("... the error grows by 100%."), else the last number
  (not one glued to letters before it, as in "XK7Q"; "2,74" and "1000,99" read as
  decimal commas), else the last "(A)".."(E)". Math spans and numbers are looked for in
  the last 8,000 characters.
Gold fields: the text after GSM8K's "####"; the last box(es) of a whole solution; the
  marked answer of a gold written as a response; else the field itself.
Normalisation: spaces, \\left \\right \\! \\, \\; \\quad, \\dfrac \\tfrac \\cfrac \\frac12, \\text{}
  \\mathrm{} \\textbf{} \\mbox{}, units after a number ("5 \\text{ cm}^2", "18 dollars",
  "300 \\mathrm{~km}/\\mathrm{s}", "$\\frac13 \\textbf{meters}$"; a bare one-letter word like
  "566 m" stays a variable), degrees, currency before or after ("\\$18", "8 \u20ac", "USD 15",
  "30 dollars"), a residue's modulus ("3 \\pmod{7}"), "7 \\text{ thousand}" = 7000 (also
  million, billion), trailing period, unicode (minus, times, dot, pi, sqrt, 1/2,
  superscripts, full width, <= >= !=), >= <= != \\geq \\leq \\neq \\gt \\lt, \\langle \\rangle,
  number words (zero..ninety-nine), thousands separators (only when the whole answer is
  one grouped number with no space after its commas: "1,080", "10,\\!080", "12 500" and
  "14{,}916" are one number while "1,3" and "21, 345" stay lists), mixed numbers (137
  \\frac{1}{2} = 137.5), base subscripts (204 = 204_5, but 204_6 != 204_5), repeating
  decimals (0.\\overline{6} = 2/3, 2.\\overline{1} = 19/9, exactly), ";" inside brackets
  as "," ("(0;-2;6)").
Numbers: exact rationals (integers, fractions, finite decimals) must be exactly equal:
  0.33 != 1/3, 12 != 1/2, 10001 != 10000, 100 != 1, and a decimal never equals an
  irrational (1.41421356237 != sqrt 2). Decimal digits rule: a decimal with at least 10
  significant digits (LONG_DECIMAL) is a rounded value. Written by the prediction, it
  equals a gold fraction whose decimal never ends when it is that fraction rounded to its
  last digit (0.142857142857143 = 1/7, 0.8333333333 = 5/6, but 0.8333333334 != 5/6 and
  0.333333333, nine digits, != 1/3); written by the gold, any prediction that rounds to it
  is right (sqrt 17 for 4.123105625618). Values with sqrt, pi, e, logs or variables compare
  with relative tolerance 1e-9 (floating noise only, never a near miss). A gold in
  e-notation (Minerva's 4.5e33) is a rounded value: a prediction within half a unit of
  its last digit is right (4.46e33), as is the gold rounded to >= 2 significant digits
  (2.78e-6 for 2.7778e-6); 4.5e33 = 4.5 \\times 10^{33} = 45e32. A decimal comma ("1,22",
  "0,111", "1000,99") equals the decimal written with a point, never a grouped number
  ("1,080") nor one digit after the comma ("1,5" stays the list 1, 5).
Percent: "%" (and "percent", "pct") is dropped on both sides (75\\% reads as 75). When the
  gold carries "%", a prediction without it may also equal gold/100 (0.75 for 75%).
  Never the other way: against gold 0.75, "75%" is wrong; against gold 1, "100" is wrong.
Several answers: top-level commas, ";", "and", "or" make an unordered list that must
  match the gold's list one to one, so "3 or 4" is wrong against 3 and "1, 2" equals
  "2, 1". \\{...\\} sets and bare {...} groups are such lists too ("{1, 4, 6}"); "a \\pm b"
  is the list {a+b, a-b} (so \\pm 17 = \\{-17, 17\\}, but not 17); a tuple the prediction
  repeats in a list counts once. A list equals a tuple "(a, b)" in order ("{2,5}" =
  "(2,5)" != "(5,2)").
Named answers: a left side that only names the answer is dropped: "x =", "k=", "f(x) =",
  "(x, y) =", "x \\in", segment and figure names ("PQ=6", "|PQ|=3", "S_{ABC}:S=3:8",
  "\\angle ABC ="), ratios and quotients of names ("V_1:V_2=5:9", "\\frac{AM}{MC}="), also
  on the right ("3 = x"). A sum of names in a predicted equation gives its value ("m + n =
  13" against 13, never "2x = 12"); in a gold it stays an equation ("x + y = 7" is not
  answered by 7). Two named answers are equal when their values are, or their equations
  ("y = -x + 4" = "x + y = 4"). "PQ=6, RS=2" gives the list {6, 2}; when both sides name all
  their values, values are matched by name ("a_2=5, a_{12}=7" != "a_2=7, a_{12}=5"); groups
  between ";" that name their values are tuples ("m=3,n=1;m=5,n=1" = "(3,1),(5,1)").
Structured: "(a,b)" "[a,b)" etc. are ordered and the bracket characters must match
  ((1,2) != [1,2], open/closed interval ends matter); unions are unordered lists of
  parts; "all real numbers" = \\mathbb{R} = (-\\infty, +\\infty); \\{\\} = \\emptyset.
Matrices: pmatrix / bmatrix / matrix / array (also inside \\left[ \\right] or parentheses)
  compare cell by cell; a one-row or one-column matrix equals the tuple of its cells and
  the other vector shape. Sums, differences, scalar multiples and products of numeric
  matrices are evaluated before comparing.
Equations: a chain a = b = c keeps its last part; "a = b" of two numbers is a step and
  keeps b; "x = 1/3 \\approx 0.33" is right for either form. Other equations are equal
  when their (left - right) sides are proportional ("y = 2x - 1" = "4x - 2y - 2 = 0":
  a named equation is compared as an equation against a gold equation).
Relations: < > \\le \\ge \\ne compare as (left - right) op 0: equal when one side is a
  positive multiple of the other's (any nonzero multiple for \\ne), so flipped sides,
  negation and scaling are the same relation (2 \\le t = t \\ge 2, -y \\le -4 = y \\ge 4,
  2x \\ge 10 = x \\ge 5). A variable bounded by constants also has its interval (x \\ge 3:
  [3, \\infty); -2 < x \\le 5: (-2, 5]; |x| < 3: (-3, 3); 1 \\le |z| \\le 2: [-2,-1] \\cup
  [1,2]; x \\ne 1: (-\\infty,1) \\cup (1,\\infty)). The asymmetry (Math-Verify's, kept on
  purpose): a gold relation accepts a predicted interval or "x \\in interval" that is
  its solution set, but a gold interval rejects a predicted relation, since an
  inequality often echoes the question's condition rather than answering it. Other chains ("f(2) < f(1) < f(4)")
  compare as normalised strings.
Expressions: evaluated by our own parser (implicit products, \\frac, \\sqrt[n], ^, !,
  \\binom, floor/ceil, |x|, trig/log/exp; i is the imaginary unit, and so is j after a
  number when i is not used: 1-4j = 1-4i; e is Euler's number) at 4 fixed sample points
  per free variable; both sides need the same free variables. n! and \\binom{n}{k} of an
  expression use Gamma (\\binom{n}{2} = n(n-1)/2, (n+1)!/n! = n+1).
Text: words of >= 3 letters compare case-insensitively ("prime" = \\text{prime}); choice
  letters (A)..(E) match "B", "(B)", "\\text{(B)}", "(B) 42". Anything else: equality of
  normalised strings.
Limits: answers over 1,000 characters only match the identical gold string; exact
  numbers over 20,000 bits, exponents over 100,000, factorials over 1000!, 400 tokens,
  64 list items and nesting over 60 levels are refused (10^10^10 is not computed, and
  a refused expression falls back to string equality). Every scan over a response is
  linear. Every call takes milliseconds.
"""
import cmath
import math
import operator
import random
import unicodedata
from fractions import Fraction

TAIL_CHARS = 50_000       # the final answer sits at the end; a 1 MB response is cut
MAX_BOX_CHARS = 4_000     # a boxed "answer" longer than this is not an answer
FALLBACK_CHARS = 8_000    # the fallback looks for math spans and numbers in this tail
MAX_BOXES = 8             # boxes looked at, from the end
MAX_ANSWER_CHARS = 1_000  # longer answers only match the identical gold string
MAX_TOKENS = 400
MAX_DEPTH = 60            # parser nesting (\frac nested 1000 deep is refused, not recursed)
MAX_BITS = 20_000         # exact rationals larger than this are refused
MAX_ITEMS = 64            # elements of a list / tuple / matrix
REL_TOL = 1e-9            # for non-rational values: floating noise only
LONG_DECIMAL = 10         # significant digits that make a decimal a rounded value
N_POINTS = 4              # sample points for expressions with free variables
_rng = random.Random(20250611)
_SAMPLE = [[_rng.uniform(1.5, 7.5) for _ in range(16)] for _ in range(N_POINTS)]


class _Unsupported(Exception):
    """The text is outside what the small evaluator handles (compare it as a string)."""


# ----------------------------------------------------------------------------- text
def _as_text(x):
    """Golds come as str, or as numbers (AMC stores 27.0): give the answer's text."""
    if isinstance(x, str):
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return str(int(x)) if x.is_integer() else repr(x)
    return str(x)


def _sanitize(text):
    # Model output may hold NUL bytes or lone surrogates (bytes decoded with
    # surrogateescape): drop NULs, turn anything UTF-8 cannot encode into '?'.
    text = text.replace('\x00', '').encode('utf-8', 'replace').decode('utf-8')
    return _unescape(text) if '\\\\' in text else text


def _unescape(text):
    """LaTeX escaped once more (a JSON or Python string written out: "\\\\frac{1}{2}"):
    when every command's backslashes come in pairs, halve every run of backslashes."""
    runs, i = [], text.find('\\')
    while i >= 0 and len(runs) < 100_000:
        j = i
        while j < len(text) and text[j] == '\\':
            j += 1
        if j < len(text) and _is_letter(text[j]):
            if (j - i) % 2:
                return text  # a single-backslash command: the text is not escaped
            runs.append(i)
        i = text.find('\\', j)
    if not runs:
        return text
    out, i = [], 0
    while True:
        k = text.find('\\', i)
        if k < 0:
            out.append(text[i:])
            return ''.join(out)
        j = k
        while j < len(text) and text[j] == '\\':
            j += 1
        out.append(text[i:k] + '\\' * ((j - k + 1) // 2))
        i = j


def _is_letter(ch):
    return 'a' <= ch <= 'z' or 'A' <= ch <= 'Z'


def _is_digits(t):
    return bool(t) and all('0' <= ch <= '9' for ch in t)


def _match(s, opens='{', closes='}'):
    """{index of an opening bracket: index of its closing one}, one linear pass."""
    stack, pairs = [], {}
    for i, ch in enumerate(s):
        if ch in opens:
            stack.append(i)
        elif ch in closes and stack:
            pairs[stack.pop()] = i
    return pairs


# -------------------------------------------------------------------------- extract
def _brace_end(text, i, limit):
    """Index of the '}' closing the '{' at i, or -1; str.find jumps keep it linear."""
    depth, k, stop = 0, i, min(len(text), i + limit)
    o = c = -2
    while True:
        if o < k and o != -1:
            o = text.find('{', k, stop)
        if c < k:
            c = text.find('}', k, stop)
            if c < 0:
                return -1
        if 0 <= o < c:
            depth, k = depth + 1, o + 1
        else:
            depth, k = depth - 1, c + 1
            if depth == 0:
                return c


def _box_at(text, i):
    """(content, end) of the \\boxed / \\fbox starting at i, or (None, end)."""
    k = i + (6 if text.startswith('\\boxed', i) else 5)
    while k < len(text) and text[k] == ' ':
        k += 1
    if text.startswith('{', k):
        end = _brace_end(text, k, MAX_BOX_CHARS)
        return (text[k + 1:end], end + 1) if end > 0 else (None, k)
    j = k  # "\boxed 5": up to the next space or '$'
    while j < len(text) and j - k < 100 and text[j] not in ' $\n':
        j += 1
    return (text[k:j], j) if j > k else (None, k)


_JOINERS = ('\\text', '\\quad', '\\qquad', '\\,', '\\(', '\\)', '\\[', '\\]', '$', '{', '}', '=',
            ' ')


_CORRECTIONS = {'but', 'actually', 'wait', 'instead', 'not', 'no', 'then', 'rather', 'correct',
                'corrected', 'mistake', 'wrong', 'oops', 'hmm', 'so', 'thus', 'hence'}


def _is_connective(gap):
    """Text between two boxes that makes them one answer list: only joiners ("$, $",
    " or ", "$y = $"), or a few words that contain "and" or a comma ("\\boxed{(2,1)} for
    part (a) and \\boxed{(0,4)}", "\\boxed{3} trucks and \\boxed{4} vans")."""
    if len(gap) > 40 or '\n' in gap.strip() or '.' in gap:
        return False
    bare = gap
    for tok in _JOINERS + ('and', 'or', ',', ';'):
        bare = bare.replace(tok, '')
    if bare == '' or (len(bare) == 1 and _is_letter(bare)):
        return True  # "$x = \boxed{3}$ or $x = \boxed{4}$"
    words = gap.replace(',', ' , ').replace('{', ' ').replace('}', ' ').split()
    if not ('and' in words or ',' in words) or any(w.lower() in _CORRECTIONS for w in words):
        return False  # "\boxed{3}, and then I saw it is \boxed{4}": the last box is the answer
    if sum(1 for w in words if w != 'and' and w[:1] != '\\' and any(map(_is_letter, w))) > 4:
        return False
    # "y_2 =", "for part (a)": names, short words, letters in brackets; never a number
    return not any(ch.isdigit() and gap[max(0, k - 1)] != '_' for k, ch in enumerate(gap))


def _last_boxed(text):
    """(content, end) of the last box, or of the last boxes joined by connectives."""
    answers, end, prev, stop_last = [], len(text), None, -1
    for _ in range(MAX_BOXES):
        i = max(text.rfind('\\boxed', 0, end), text.rfind('\\fbox', 0, end))
        if i < 0:
            break
        content, stop = _box_at(text, i)
        end = i
        if content is None or not content.strip():
            if answers:
                break
            continue  # an unclosed or empty box (truncated output): look further back
        if prev is not None and (stop > prev or not _is_connective(text[stop:prev])):
            break
        content = content.strip()
        if stop_last < 0:
            stop_last = stop
        # "\boxed{5} $\boxed{5}$" or "\boxed{15\frac{39}{40}} or \boxed{\frac{639}{40}}"
        # restate one answer: keep the last form of it ("\boxed{90} and \boxed{90}": two).
        gap = text[stop:prev].replace('{', ' ').replace('}', ' ') if prev is not None else ''
        listed = (' and ' in gap or ',' in gap) and ' or ' not in gap  # "\boxed{1}, \boxed{1}"
        if listed or not any(is_equivalent(content, a) for a in answers):
            answers.append(content)
        prev = i
    return (', '.join(reversed(answers)), stop_last) if answers else (None, -1)


def _math_spans(text):
    """[(start, end, content)] of $...$, $$...$$, \\(...\\), \\[...\\] in one left-to-right
    pass; inline spans ($, \\() do not cross a line break, \\$ is an escaped dollar."""
    seen = {}  # token -> its first position at or after the last search: stays linear

    def find(tok, k):
        p = seen.get(tok, -2)
        if p == -1 or p >= k:
            return p
        seen[tok] = text.find(tok, k)
        return seen[tok]

    spans, i, n = [], 0, len(text)
    while i < n:
        j = min((k for k in (find('$', i), find('\\(', i), find('\\[', i)) if k >= 0), default=-1)
        if j < 0:
            break
        if text.startswith('\\$', j - 1) and text[j] == '$':  # an escaped dollar
            i = j + 1
            continue
        if text.startswith('$$', j):
            opener, closer = '$$', '$$'
        elif text[j] == '$':
            opener, closer = '$', '$'
        else:
            opener, closer = text[j:j + 2], '\\)' if text[j + 1] == '(' else '\\]'
        k = j + len(opener)
        while True:
            e = find(closer, k)
            if e > 0 and closer == '$' and text[e - 1] == '\\':
                k = e + 1
                continue
            break
        newline = find('\n', j)
        if e < 0 or e - j > MAX_BOX_CHARS or (opener in ('$', '\\(') and -1 < newline < e):
            i = j + len(opener)
            continue
        spans.append((j, e + len(closer), text[j + len(opener):e]))
        i = e + len(closer)
    return spans


_CONNECTIVE_WORDS = {'and', 'or', 'pi'}
_PHRASES = {'all real numbers', 'no solution', 'no solutions', 'none', 'undefined',
            'infinitely many', 'does not exist'}


def _is_bare(text):
    """Is the text itself an answer ("$\\frac27$", "t \\in (1, 9]", "30 dollars", "prime")
    rather than prose around one? At most one word of two or more letters outside LaTeX,
    and none before a number ("Soucis : 2,74" is prose)."""
    t = text.strip().strip('*').strip()
    if not t or len(t) > 200:
        return False
    if t.lower().rstrip('.') in _PHRASES:
        return True
    words, last = 0, 0
    for i, j in _letter_runs(t):
        word = t[i:j].lower()
        if j - i >= 2 and not _in_latex(t, i) and word not in _CONNECTIVE_WORDS \
                and word not in _FUNCS:  # "sin 2x" written without the backslash
            words += 1
            last = j
    if words == 0:
        return True
    # one word: the answer itself ("prime") or a unit after the number ("30 dollars",
    # "864 inches^2"), the last thing written; never "Therefore \[ x \]" or "Soucis : 2,74"
    if words > 1 or '\n' in t:
        return False
    rest = t[last:]
    for exponent in ('^{2}', '^{3}', '^2', '^3', '\u00b2', '\u00b3'):
        rest = rest.replace(exponent, '')
    return all(c in ' .,;:!?}$)]*~%' for c in rest)


def _is_prose(t):
    """Does t hold an English word ("area", "Adding": three or more letters, lower case
    after the first), outside LaTeX? "MR=SRMC" and "dM/dt" do not."""
    for i, j in _letter_runs(t):
        word = t[i:j]
        if len(word) >= 3 and word[1:].islower() and not _in_latex(t, i) and \
                word.lower() not in _CONNECTIVE_WORDS and word.lower() not in _FUNCS:
            return True
    return False


def _letter_runs(t):
    """(start, end) of each maximal run of letters in t, left to right."""
    i = 0
    while i < len(t):
        if not _is_letter(t[i]):
            i += 1
            continue
        j = i
        while j < len(t) and _is_letter(t[j]):
            j += 1
        yield i, j
        i = j


def _in_latex(t, i):
    """Is the word at t[i] a \\command, or the first word of a command's argument
    (\\begin{pmatrix}, \\text{ thousand}, \\mathbb{R})?"""
    if i > 0 and t[i - 1] == '\\':
        return True
    k = i
    while k > 0 and t[k - 1] in ' ~':
        k -= 1
    if k == 0 or t[k - 1] != '{':
        return False
    k -= 1
    while k > 0 and _is_letter(t[k - 1]):
        k -= 1
    return k > 0 and t[k - 1] == '\\' and k < i


def _number_spans(text):
    """(start, end) of each number in text: digits with thousands commas or a decimal
    point, a sign; not a digit glued to letters before it (x2, AZ7Q)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if not ('0' <= text[i] <= '9'):
            i += 1
            continue
        j = i
        while j < n and ('0' <= text[j] <= '9' or
                         (text[j] in ',./' and j + 1 < n and '0' <= text[j + 1] <= '9')):
            j += 1
        start = i - 1 if i > 0 and text[i - 1] in '-\u2212' else i
        if i > 0 and text[i - 1] == '.':
            start = i - 1  # ".25"
        if not (i > 0 and _is_letter(text[i - 1])) and not (j < n and text[j] == '_'):
            out.append((start, j))
        i = j
    return out


def _last_number(text):
    spans = _number_spans(text[-2000:])
    if not spans:
        return None
    a, b = spans[-1]
    num = text[-2000:][a:b]
    whole, comma, rest = num.rpartition(',')
    if comma and '.' not in num and '/' not in num and ',' not in whole and (
            len(rest) != 3 or whole.lstrip('-') == '0'):
        num = whole + '.' + rest  # a decimal comma: "2,74", "0,111"
    return num.strip('.') if not num.endswith('.') else num[:-1]


_LEADS = ('at', 'about', 'around', 'approximately', 'exactly', 'equal to', 'just', 'only',
          'then', 'therefore', 'thus', 'now')


def _stated(text):
    """The bare answer a last sentence states after " is " / " are " ("The solutions are
    x = 2 and x = -3."), or None."""
    t = text.rstrip().rstrip('.').rstrip()
    cut = max(t.rfind('. '), t.rfind('\n'), t.rfind('.\n'))
    sentence = t[cut + 1:].strip()
    for reason in (' since ', ' because ', ', so ', ', as ', ', which ', ' where '):
        k = sentence.find(reason)  # "... is $\frac16$ since there are 6 faces"
        if k > 0:
            sentence = sentence[:k]
    low = sentence.lower()
    k = max(low.rfind(' is '), low.rfind(' are '))
    if k < 0 or len(sentence) > 300:
        return None
    tail = sentence[k + 4 if low.startswith(' is ', k) else k + 5:].strip()
    for lead in _LEADS:  # "The vertex is at (2, -1)."
        if tail.lower().startswith(lead + ' '):
            tail = tail[len(lead) + 1:].strip()
    if not (tail and _is_bare(tail.replace('$', ' '))
            and any(c.isdigit() or c in '\\$' for c in tail)):
        return None
    numbers = _number_spans(tail)
    if len(numbers) == 1 and numbers[0][0] == 0 and _is_letter(tail[numbers[0][1]:][:1]):
        return _last_number(tail)  # "2,500.5m\u00b2": a unit glued to the number
    return tail


def _last_choice(text):
    """The last multiple-choice letter written as (A)..(E) in text, or None."""
    best = max(text.rfind('(%s)' % c) for c in 'ABCDE')
    return text[best:best + 3] if best >= 0 else None


def _answer_in(text):
    """The answer inside an answer sentence: the text itself when it is bare, else what
    follows its last " is " / " = ", else its last math span, else its last number."""
    t = text.strip().strip('"\'*').strip()
    if not t:
        return None
    if _is_bare(t):
        return t
    low = t.lower()
    for sep in (' is ', ' are ', ' = ', ' was '):
        k = low.rfind(sep)
        if k >= 0 and _is_bare(t[k + len(sep):]):
            return t[k + len(sep):].strip()
    spans = _math_spans(t)
    if spans:
        return spans[-1][2].strip() or None
    if _number_word(t.rstrip('.')) != t.rstrip('.'):  # "twenty-five"
        return t.rstrip('.')
    return _last_number(t)


_OPENERS = ('so', 'thus', 'hence', 'therefore', 'then', 'and', 'finally', 'clearly')
_MARKERS = ('final answer is', 'answer is', 'answer:', 'answer =', '####')


def _after_marker(text):
    """(answer, position) after the last 'answer is' / 'answer:' / '####' / a bare
    'Answer $...$', or before a final 'is the answer'; (None, -1) when there is none."""
    low = text.lower()
    best, end = -1, -1
    for marker in _MARKERS:
        j = low.rfind(marker)
        if j >= 0 and j + len(marker) > end:
            best, end = j, j + len(marker)
    j = low.rfind('answer')  # "Answer $ 42 $", "Answer \[ 42 \]": the next math span
    if j > best:
        rest = text[j + 6:j + 6 + MAX_BOX_CHARS]
        lead = rest.lstrip(' \t\n*:')
        spans = _math_spans(lead) if lead[:1] in ('$', '\\') else []
        if spans and spans[0][0] == 0:
            return spans[0][2].strip() or None, j
        if lead[:1] == '$' or lead[:2] == '\\(':  # "Answer $ \n 9 \n $": inline math broken
            return '', j  # over lines is no answer
    for tail in ('is the answer', 'is our answer', 'is the final answer'):
        k = low.rfind(tail)
        if k > best and k >= 0:  # "so 31 is the answer"
            start = max(0, k - 300)
            head = text[start:k]
            cut = max(head.rfind('. '), head.rfind('\n')) + 1
            if '\\boxed' in head[cut:] or '\\fbox' in head[cut:]:
                break  # "Hence \boxed{5} is the answer.": the box says it
            said = head[cut:].strip().rstrip(',').strip()
            for lead in _OPENERS:  # "So \frac{14}{3} is the answer."
                if said.lower().startswith(lead + ' '):
                    said = said[len(lead) + 1:].strip().lstrip(',').strip()
            if said and (_is_bare(said.replace('$', ' ')) or not _is_prose(said)
                         or _number_word(said) != said):  # "twenty-five is the answer"
                return said, k
            spans = _math_spans(head[cut:])
            if spans:  # the position is where the answer starts: a box inside it wins
                return spans[-1][2].strip(), start + cut + spans[-1][0]
            return _last_number(head[cut:]), k
    if best < 0:
        return None, -1
    rest = text[end:end + 2000].lstrip(' \t\n:*')
    line = rest.split('\n', 1)[0]
    cut = line.find('. ')  # "The answer is 42. Let me check." -> 42
    if cut >= 0:
        line = line[:cut]
    for reason in (', since ', ' since ', ', because ', ' because ', ', as ', ', which '):
        cut = line.find(reason)  # "The answer is 9, since 3^2 = 9"
        if cut > 0:
            line = line[:cut]
    line = line.rstrip(' .')
    cut = line.rfind(' (')
    if cut > 0 and line.endswith(')') and any(  # a word, not a command like \infty
            _is_letter(line[k]) and _is_letter(line[k + 1]) and not _is_letter(line[k - 1])
            and not _in_latex(line, k) for k in range(cut + 1, len(line) - 1)):
        line = line[:cut]  # "12 (at x = 3)", "100 (dollars)": a remark in brackets
    line = line.strip(' \t*').rstrip('.').strip()[:300]  # ".0000672" keeps its point
    if line.startswith('\\"') and line.endswith('\\"'):  # 'is \\"$12 $ and $13 $\\".'
        line = line[2:-2]
    line = line.strip().strip('"').strip()
    if not line:
        return None, -1
    if '\\boxed' in line or '\\fbox' in line:
        return _last_boxed(line)[0], best
    if _is_bare(line.replace('$', ' ')) or not _is_prose(line):  # "MR=SRMC" is no sentence
        return line, best
    # "Final Answer: The area is 58.": the answer in the sentence; a position of -1 lets
    # an earlier box win over a remark ("The answer is consistent with the 2 cases")
    return _answer_in(line), -1


def _strip_chat(text):
    """Drop chat-template tokens a sampler left in ("<|im_start|>user")."""
    k = text.find('<|')
    while k >= 0:
        e = text.find('|>', k)
        if e < 0:
            break
        text = text[:k] + ' ' + text[e + 2:]
        k = text.find('<|', k)
    return text


def extract_answer(response, fallback=False, last_number=False):
    """The final answer in a response, or None. Strict (the default): the last box, or a
    marked answer ("the answer is", "Answer:", "####") that comes after it. fallback=True
    (last_number=True is the old name): else the whole response when it is a bare answer,
    else its last math span, else its last number."""
    try:
        text = _as_text(response)
        if text is None:
            return None
        text = _strip_chat(_sanitize(text[-TAIL_CHARS:]))
        boxed, box_end = _last_boxed(text)
        marked, pos = _after_marker(text)
        # a marked answer after the last box wins ("Final Answer: The final answer is $13$"),
        # if it is an answer and not a remark ("this answer is checked by ...")
        if boxed is not None and (marked is None or pos < box_end or
                                  not any(c.isdigit() or c in '\\$' for c in marked)):
            return boxed
        if marked is not None:
            return marked or None
        if not (fallback or last_number):
            return None
        if _is_bare(text):
            return text.strip().strip('*').strip()
        # the last math span or the last number after it, whichever comes later
        # ("... the error increases by 100%.")
        tail = text[-FALLBACK_CHARS:]
        if len(text) > FALLBACK_CHARS and '\n' in tail:
            tail = tail[tail.find('\n') + 1:]  # start on a line, so $ pairs line up
        text = tail
        stated = _stated(text)
        if stated is not None:
            return stated
        spans = [sp for sp in _math_spans(text) if sp[2].strip()]
        if spans and not any(c.isdigit() for c in text[spans[-1][1]:]):
            # "so $x=2$ or $x=3$.": spans joined by a connective are one answer list
            last = [spans[-1][2].strip()]
            for a, b in zip(spans[-2::-1], spans[:0:-1]):
                gap = text[a[1]:b[0]]
                if not (gap.strip() in (',', 'or', 'and', ', or', ', and') or gap.strip() == ''):
                    break
                last.append(a[2].strip())
            return ', '.join(reversed(last))
        number = _last_number(text[spans[-1][1]:] if spans else text)
        if number is not None or spans:
            return number if number is not None else spans[-1][2].strip()
        return _last_choice(text)
    except Exception:  # a reward function must not crash a training run
        return None


def gold_text(gold):
    """The gold answer in a gold field: after GSM8K's '####', the last box (or boxes joined
    by connectives) of a whole solution, else the field itself."""
    text = _as_text(gold)
    if text is None:
        return None
    text = _sanitize(text[-TAIL_CHARS:])
    if '####' in text:
        return text.rsplit('####', 1)[1].strip()
    if '\\boxed' in text or '\\fbox' in text:
        boxed, _ = _last_boxed(text)
        if boxed is not None:
            return boxed
    if not _is_bare(text.replace('$', ' ')):  # a gold written as a response
        marked, _ = _after_marker(text)
        if marked is not None:
            return marked
    return text


# ------------------------------------------------------------------------ normalise
_UNICODE = {
    '\u2212': '-', '\u2013': '-', '\u2014': '-', '\u2010': '-', '\u2011': '-', '\ufe63': '-',
    '\u00d7': '\\times ', '\u22c5': '\\cdot ', '\u00b7': '\\cdot ', '\u2219': '\\cdot ',
    '\u00f7': '/', '\u2215': '/', '\u2044': '/', '\u03c0': '\\pi ', '\u221e': '\\infty ',
    '\u00b0': '^\\circ ', '\u2264': '\\le ', '\u2265': '\\ge ', '\u2260': '\\ne ',
    '\u00b1': '\\pm ', '\u2213': '\\mp ', '\u222a': '\\cup ', '\u2229': '\\cap ',
    '\u2208': '\\in ', '\u2248': '\\approx ', '\u2032': "'", '\u20ac': '', '\u00a3': '',
    '\u00a5': '', '\u221a': '\\sqrt', '\u221b': '\\sqrt[3]',
    '\u00bd': '\\frac{1}{2}', '\u2153': '\\frac{1}{3}', '\u2154': '\\frac{2}{3}',
    '\u00bc': '\\frac{1}{4}', '\u00be': '\\frac{3}{4}', '\u215b': '\\frac{1}{8}',
}
_SUPERSCRIPTS = dict(zip('\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b\u207a',
                         '0123456789-+'))


def _unicode_to_latex(s):
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch in _SUPERSCRIPTS:  # x\u00b2 -> x^{2}, 10\u207b\u00b3 -> 10^{-3}
            j = i
            while j < len(s) and s[j] in _SUPERSCRIPTS:
                j += 1
            out.append('^{' + ''.join(_SUPERSCRIPTS[c] for c in s[i:j]) + '}')
            i = j
            continue
        if ch == '\u221a' and s[i + 1:i + 2].isdigit():  # \u221a12 is sqrt(12), not sqrt(1)*2
            j = i + 1
            while j < len(s) and s[j].isdigit():
                j += 1
            out.append('\\sqrt{' + s[i + 1:j] + '}')
            i = j
            continue
        out.append(_UNICODE.get(ch, ch))
        i += 1
    return unicodedata.normalize('NFKC', ''.join(out))  # full-width digits, odd spaces


def _strip_wrappers(s):
    """$...$, \\(...\\), \\[...\\], \\boxed{...} around the whole answer; trailing period."""
    for _ in range(8):
        t = s.strip().rstrip('.').strip()
        for a, b in (('$$', '$$'), ('$', '$'), ('\\(', '\\)'), ('\\[', '\\]')):
            if len(t) >= len(a) + len(b) and t.startswith(a) and t.endswith(b):
                t = t[len(a):-len(b)]
                break
        for cmd in ('\\boxed', '\\fbox'):
            if t.startswith(cmd + '{') and _brace_end(t, len(cmd), len(t) + 1) == len(t) - 1:
                t = t[len(cmd) + 1:-1]
        if t == s:
            return t
        s = t
    return s


_SPACING = {'left', 'right', 'big', 'Big', 'bigg', 'Bigg', 'bigl', 'bigr', 'Bigl', 'Bigr',
            'biggl', 'biggr', 'displaystyle', 'textstyle', 'quad', 'qquad', 'limits', 'rm'}
_TEXT_CMDS = {'text', 'textbf', 'textit', 'textrm', 'textsf', 'texttt', 'textnormal', 'mathrm',
              'mathbf', 'mathit', 'mathsf', 'mbox', 'hbox', 'operatorname', 'boldsymbol', 'bm'}
_RENAME = {'dfrac': '\\frac', 'tfrac': '\\frac', 'cfrac': '\\frac', 'dbinom': '\\binom',
           'tbinom': '\\binom', 'lt': '<', 'gt': '>', 'cdot': '*', 'times': '*', 'ast': '*',
           'div': '/',
           'leq': '\\le', 'leqslant': '\\le', 'geq': '\\ge', 'geqslant': '\\ge', 'neq': '\\ne',
           'lbrace': '\\{', 'rbrace': '\\}', 'langle': '(', 'rangle': ')', 'circ': '', 'degree': '',
           'prime': "'",
           'varnothing': '\\emptyset', 'lvert': '|', 'rvert': '|', 'vert': '|', 'colon': ':'}
_SYMBOLS = {',': ' ', '!': '', ';': ' ', ':': ' ', ' ': ' ', '%': '%', '$': '', '#': ''}


def _is_unit_text(t, spaced=False):
    """Does \\text{t} after a number look like a unit ("cm", " degrees", "~m/s^2")?"""
    core = t.strip(' ~')
    if not core or core.lower() in ('or', 'and') or not all(
            _is_letter(c) or c in ' ~/^-{}.' or c.isdigit() for c in core):
        return False
    run = best = 0
    for c in core:
        run = run + 1 if _is_letter(c) else 0
        best = max(best, run)
    return best >= 2 or (best == 1 and (spaced or t[:1] in ' ~'))


def _skip_unit(s, i, pairs):
    """Past the exponent of a dropped unit (cm^2) and the units it is divided or
    multiplied by (\\mathrm{~km} / \\mathrm{s}, \\mathrm{kcal} \\mathrm{m}^{-2})."""
    while True:
        if s[i:i + 1] == '^':
            i = pairs.get(i + 1, i + 1) + 1 if s[i + 1:i + 2] == '{' else i + 2
        k = i
        while k < len(s) and s[k] in ' /*':
            k += 1
        if s.startswith('\\cdot', k):
            k += 5
        while k < len(s) and s[k] == ' ':
            k += 1
        j = k + 1
        while j < len(s) and _is_letter(s[j]):
            j += 1
        if s[k:k + 1] != '\\' or s[k + 1:j] not in _TEXT_CMDS or s[j:j + 1] != '{' or j not in pairs:
            return i
        unit = s[j + 1:pairs[j]].strip(' ~')
        if not unit or not all(_is_letter(c) or c in ' ~' for c in unit):
            return i
        i = pairs[j] + 1


def _rewrite_commands(s):
    """One pass over the LaTeX commands: drop spacing, unwrap \\text, rename synonyms."""
    pairs = _match(s)
    out, i, n = [], 0, len(s)
    close_as_space, seen_digit = set(), False
    while i < n:
        ch = s[i]
        if ch != '\\':
            out.append(' ' if i in close_as_space else ch)
            seen_digit = seen_digit or ch.isdigit()
            i += 1
            continue
        j = i + 1
        while j < n and _is_letter(s[j]):
            j += 1
        name = s[i + 1:j]
        if not name:  # a control symbol: \, \! \% \$ \{ \\ ...
            sym = s[i + 1:i + 2]
            out.append(_SYMBOLS.get(sym, '\\' + sym))
            i += 2
            if sym == '!':  # "11,\! 111": a negative space joins what it stands between
                while i < n and s[i] == ' ':
                    i += 1
            continue
        i = j
        if name in _SPACING:
            out.append(' ')
            if name in ('left', 'right') and s[i:i + 1] == '.':
                i += 1  # the invisible delimiter \right.
        elif name in _TEXT_CMDS:
            k = i
            while k < n and s[k] == ' ':
                k += 1
            end = pairs.get(k, -1) if s[k:k + 1] == '{' else -1
            if end < 0:
                continue
            spaced = bool(out) and out[-1].endswith(' ')  # "5\\,\\text{m}"
            if seen_digit and s[k + 1:end].strip(' ~').lower() in _SCALES:
                out.append(' ' + s[k + 1:end].strip(' ~').lower())  # "7 \text{ thousand}"
                i = end + 1
                continue
            if seen_digit and _is_unit_text(s[k + 1:end], spaced):
                i = _skip_unit(s, end + 1, pairs)  # a unit after a number: drop it
                continue
            out.append(' ')
            close_as_space.add(end)
            i = k + 1
        else:
            out.append(_RENAME.get(name, '\\' + name))
    return ''.join(out)


_SCALES = {'thousand': 1000, 'million': 10 ** 6, 'billion': 10 ** 9}


def _scale_word(s):
    """'7 thousand' -> '7000', '2.5 million' -> '2500000' (a number, then the word)."""
    words = s.split()
    if len(words) == 2 and words[1].lower() in _SCALES:
        try:
            v = Fraction(words[0].replace(',', '')) * _SCALES[words[1].lower()]
        except (ValueError, ZeroDivisionError):
            return s
        return str(v.numerator) if v.denominator == 1 else s
    return s


def _repeating_decimals(s):
    """0.\\overline{6} -> \\frac{2}{3}, 2.1\\overline{36} -> its fraction (exact)."""
    k = s.find('\\overline{')
    while k >= 0:
        e = s.find('}', k)
        rep = s[k + 10:e] if e > 0 else ''
        j = k
        while j > 0 and (s[j - 1].isdigit() or s[j - 1] == '.'):
            j -= 1
        head = s[j:k]
        if not (_is_digits(rep) and head.count('.') == 1 and len(rep) <= 12 and len(head) <= 20
                and _is_digits(head.replace('.', ''))):
            k = s.find('\\overline{', k + 1)
            continue
        whole, _, frac = head.partition('.')
        # x = whole.frac(rep)(rep)...: 10^len(frac) (10^len(rep) - 1) x is an integer
        num = int((whole or '0') + frac + rep) - int((whole or '0') + frac)
        den = (10 ** len(rep) - 1) * 10 ** len(frac)
        v = Fraction(num, den)
        s = s[:j] + '\\frac{%d}{%d}' % (v.numerator, v.denominator) + s[e + 1:]
        k = s.find('\\overline{', j + 1)
    return s


def _brackets_commas(s):
    """';' inside brackets separates coordinates ("(0;-2;6)"): make it ','."""
    if ';' not in s:
        return s
    out, depth = [], 0
    for ch in s:
        depth += 1 if ch in '([' else -1 if ch in ')]' else 0
        out.append(',' if ch == ';' and depth > 0 else ch)
    return ''.join(out)


def _replace_word(s, word, repl):
    """Replace a standalone ASCII word (not part of a longer word or a \\command)."""
    out, last, i = [], 0, s.find(word)
    while i >= 0:
        j = i + len(word)
        before = s[i - 1] if i else ' '
        after = s[j] if j < len(s) else ' '
        if not _is_letter(before) and before != '\\' and not _is_letter(after):
            out.append(s[last:i] + repl)
            last = j
        i = s.find(word, j)
    return ''.join(out) + s[last:]


def _is_unit_word(w):
    """'cm', 'dollars', 'm/s', 'cm^2', 'km/h': words of letters after a number."""
    base, _, exp = w.partition('^')
    if exp and not _is_digits(exp.strip('{}-')):
        return False
    parts = base.split('/')
    return (all(p and all(_is_letter(c) for c in p) for p in parts)
            and sum(len(p) for p in parts) >= 2 and not base.startswith('\\'))


_CURRENCIES = {'usd', 'eur', 'gbp', 'rs', 'inr', 'rmb', 'cny', 'jpy', 'us$'}


def _strip_plain_units(s):
    """'5 cm', '18 dollars', '100 parsecs' -> the number (the words need a space)."""
    words = s.split()
    if len(words) == 2 and words[0].lower().rstrip('.') in _CURRENCIES and _is_digits(
            words[1].replace(',', '').replace('.', '')):
        return words[1]  # "USD 15", "Rs. 250"
    # "5 ways", "864 square inches", "12 m/s": up to three unit words after the number
    k = len(words)
    while k > 1 and len(words) - k < 3 and _is_unit_word(words[k - 1]):
        k -= 1
    while k < len(words):
        rest = ' '.join(words[:k]).rstrip()
        if rest and any(c.isdigit() for c in rest) and rest[-1] in '0123456789}).%':
            return rest
        k += 1
    return s


def _squeeze_spaces(s):
    """Remove spaces, except one between a \\command and a letter (\\cot x, \\pi r)."""
    out, in_cmd, pending = [], False, False
    for ch in s:
        if ch == ' ':
            pending = pending or in_cmd
            continue
        if pending and _is_letter(ch):
            out.append(' ')
        pending = False
        out.append(ch)
        in_cmd = ch == '\\' or (in_cmd and _is_letter(ch))
    return ''.join(out)


def _drop_modulus(s):
    """'3 \\pmod{7}', '3 (\\mod 7)', '3 \\bmod 7' -> '3': the residue is the answer."""
    for cmd in ('(\\mod', '(\\bmod', '\\pmod', '\\bmod', '\\mod', '( mod', '(mod', ' mod',
                '(\\mathrm{mod}', '(\\text{mod}', '\\mathrm{mod}', '\\text{mod}'):
        k = s.rfind(cmd)
        if k > 0 and not _is_letter(s[k + len(cmd):k + len(cmd) + 1]):
            rest = s[k + len(cmd):]
            for space in ('\\ ', '\\,', '~'):
                rest = rest.replace(space, ' ')
            rest = rest.strip(' {}()')
            if rest and len(rest) <= 12 and all(c.isalnum() or c == ' ' for c in rest):
                head = s[:k].rstrip(' ~')
                if head.endswith('\\') and not head.endswith('\\\\'):
                    head = head[:-1].rstrip()  # the control space of "5 \\ (\\mathrm{mod}\\ 11)"
                return head
    return s


def _brace_fracs(s):
    """\\frac14 -> \\frac{1}{4}, \\frac1{19} -> \\frac{1}{19}: one-digit arguments braced."""
    k = s.find('\\frac')
    while k >= 0:
        j = k + 5
        for _ in range(2):
            if j < len(s) and s[j].isdigit():
                s = s[:j] + '{' + s[j] + '}' + s[j + 1:]
                j += 3
            elif j < len(s) and s[j] == '{':
                e = _brace_end(s, j, len(s))
                if e < 0:
                    break
                j = e + 1
            else:
                break
        k = s.find('\\frac', k + 5)
    return s


def _mixed_numbers(s):
    # In MATH golds "137 \frac{1}{2}" is 137.5: an integer directly before a numeric
    # \frac is a mixed number, never a product.
    if '\\frac{' not in s:
        return s
    pairs = _match(s)
    out, last, i = [], 0, s.find('\\frac{')
    while i >= 0:
        a = pairs.get(i + 5, -1)
        b = pairs.get(a + 1, -1) if a > 0 and s[a + 1:a + 2] == '{' else -1
        j = i
        while j > last and s[j - 1].isdigit():
            j -= 1
        if (b > 0 and j < i and _is_digits(s[i + 6:a]) and _is_digits(s[a + 2:b])
                and (j == 0 or s[j - 1] in '+-(,=[{ ')):
            out.append(s[last:j] + '(' + s[j:i] + '+' + s[i:b + 1] + ')')
            last = b + 1
        i = s.find('\\frac{', max(i + 1, last))
    return ''.join(out) + s[last:]


_NUMBER_WORDS = {w: k for k, w in enumerate(
    'zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen '
    'fifteen sixteen seventeen eighteen nineteen twenty'.split())}
_NUMBER_WORDS.update({w: 10 * k for k, w in enumerate(
    'thirty forty fifty sixty seventy eighty ninety'.split(), start=3)})


def _number_word(s):
    low = s.lower()
    if low in _NUMBER_WORDS:
        return str(_NUMBER_WORDS[low])
    tens, _, unit = low.partition('-')
    if tens in _NUMBER_WORDS and _NUMBER_WORDS[tens] >= 20 and 0 < _NUMBER_WORDS.get(unit, 0) < 10:
        return str(_NUMBER_WORDS[tens] + _NUMBER_WORDS[unit])
    return s


def _drop_thousands(s):
    """'1,080' / '-11,111,111,100.5' -> without commas, only if the whole answer is one."""
    body = s[1:] if s[:1] in '+-' else s
    whole, _, frac = body.partition('.')
    groups = whole.split(',')
    if (len(groups) >= 2 and 1 <= len(groups[0]) <= 3 and groups[0][0] != '0'
            and all(_is_digits(g) for g in groups) and all(len(g) == 3 for g in groups[1:])
            and (not frac or _is_digits(frac))):
        return s.replace(',', '')
    return s


def _canonical(s):
    """The normalised string of an answer (see the rules at the top)."""
    s = _unicode_to_latex(s)
    if len(s) > 2 * MAX_ANSWER_CHARS:  # 1000 x '½' grows 11-fold
        raise _Unsupported('answer too long')
    s = _strip_wrappers(s)
    for a, b in (('>=', '\\ge '), ('<=', '\\le '), ('!=', '\\ne '), ('=<', '\\le '),
                 ('=>', '\\ge ')):
        s = s.replace(a, b)
    s = _repeating_decimals(s)
    for pat in ('^{\\circ}', '^\\circ', '{}^{\\circ}', '^{\\prime}', '^\\prime'):
        s = s.replace(pat, "'" if 'prime' in pat else '')
    s = _drop_modulus(_rewrite_commands(_drop_modulus(s)))
    for a, b in (('^{}', ''), ('~', ' '), ('\n', ' '), ('\t', ' '), ('\r', ' '), ('$', ''),
                 ('%', ''), ('{,}', ','), ('{, }', ',')):
        s = s.replace(a, b)
    s = _brackets_commas(s)
    s = _replace_word(_replace_word(s, 'or', ','), 'and', ',')
    s = _scale_word(_strip_plain_units(_scale_word(s.strip())))
    spaced_comma = bool(s.count(', ')) and not s.strip().startswith(('(', '[', '\\{'))
    s = _squeeze_spaces(s)
    s = s.strip().rstrip('.').strip(',;')
    while s.endswith('\\\\'):
        s = s[:-2]
    if s.startswith('+'):
        s = s[1:]
    s = _number_word(s)
    if not spaced_comma:  # "21, 345" is a list of two numbers, "21,345" one number
        s = _drop_thousands(s)
    return _mixed_numbers(_brace_fracs(s) if '\\frac' in s else s)


# -------------------------------------------------------- parse: values (evaluator)
_FUNCS = {'sin': cmath.sin, 'cos': cmath.cos, 'tan': cmath.tan, 'cot': lambda z: 1 / cmath.tan(z),
          'sec': lambda z: 1 / cmath.cos(z), 'csc': lambda z: 1 / cmath.sin(z),
          'arcsin': cmath.asin, 'arccos': cmath.acos, 'arctan': cmath.atan, 'sinh': cmath.sinh,
          'cosh': cmath.cosh, 'tanh': cmath.tanh, 'ln': cmath.log, 'log': cmath.log,
          'exp': cmath.exp}
_STRUCTURAL = {'frac', 'sqrt', 'binom', 'lfloor', 'rfloor', 'lceil', 'rceil'}
_NOT_EXPR = {'le', 'ge', 'ne', 'lt', 'gt', 'in', 'notin', 'cup', 'cap', 'infty', 'pm', 'mp',
             'begin', 'end', 'emptyset', 'to', 'rightarrow', 'Rightarrow', 'implies', 'iff',
             'approx', 'dots', 'ldots', 'cdots', 'setminus', 'subset', 'subseteq', 'forall',
             'exists', 'neg', 'land', 'lor', 'not', 'equiv', 'sim', 'simeq', 'propto', 'mod',
             'pmod', 'bmod', 'sum', 'prod', 'int', 'lim', 'max', 'min', 'gcd', 'lcm'}


def _read_name(s, i, j, braces):
    """A variable name from s[i:j] plus its subscript (x_1, x_{10}) and primes (y')."""
    name = s[i:j]
    if s[j:j + 1] == '_':
        if s[j + 1:j + 2] == '{' and j + 1 in braces:
            name += '_' + s[j + 2:braces[j + 1]]
            j = braces[j + 1] + 1
        elif j + 1 < len(s):
            name += '_' + s[j + 1]
            j += 2
    while s[j:j + 1] == "'":
        name, j = name + "'", j + 1
    return name, j


def _number(text):
    _, _, exp = text.lower().partition('e')
    if exp and abs(int(exp)) > 400:
        raise _Unsupported('exponent too large')
    return Fraction(text)


def _tokenize(s):
    """Tokens: ('num', Fraction, text) ('var', name) ('const', complex) ('func', name, base)
    ('cmd', name) ('op', char)."""
    braces, toks, i, n = _match(s), [], 0, len(s)
    while i < n:
        ch = s[i]
        if ch == ' ':
            i += 1
        elif ch.isdigit() and ch <= '9' or (ch == '.' and s[i + 1:i + 2].isdigit()):
            j = i
            while j < n and '0' <= s[j] <= '9':
                j += 1
            if s[j:j + 1] == '.':
                j += 1
                while j < n and '0' <= s[j] <= '9':
                    j += 1
            if s[j:j + 1] in ('e', 'E'):  # 4.5e33 is scientific notation, not 4.5*e*33
                k = j + 2 if s[j + 1:j + 2] in ('+', '-') else j + 1
                if s[k:k + 1].isdigit():
                    j = k
                    while j < n and '0' <= s[j] <= '9':
                        j += 1
            toks.append(('num', _number(s[i:j]), s[i:j]))
            i = j
            if s[i:i + 1] == '_':  # 204_5: a base subscript, the digits are compared
                _, i = _read_name(s, i, i, braces)
        elif _is_letter(ch):
            j = i  # the longest function name has 6 letters: never scan a long word
            while j < n and j - i < 7 and _is_letter(s[j]):
                j += 1
            if s[i:j] in _FUNCS:  # sin x written without the backslash
                toks.append(('func', s[i:j], None))
                i = j
                continue
            if j - i >= 4:  # a word ("where b is ..."), not a product of 4 variables
                raise _Unsupported('word')
            name, i = _read_name(s, i, i + 1, braces)
            toks.append(('const', cmath.e) if name == 'e' else ('const', 1j) if name == 'i'
                        else ('var', name))
        elif ch == '\\':
            j = i + 1
            while j < n and _is_letter(s[j]):
                j += 1
            name = s[i + 1:j]
            if not name or name in _NOT_EXPR:
                raise _Unsupported(name)
            if name in _FUNCS:
                base = None
                if s[j:j + 1] == '_':
                    sub, j = _read_name(s, j, j, braces)
                    base = sub[1:]
                toks.append(('func', name, base))
                i = j
            elif name in _STRUCTURAL:
                toks.append(('cmd', name))
                i = j
            elif name == 'pi':
                toks.append(('const', complex(math.pi)))
                i = j
            else:  # \alpha, \omega_{n}, \hbar: a variable
                var, i = _read_name(s, i, j, braces)
                toks.append(('var', var))
        elif ch in '+-*/^!()[]{}|':
            if s.startswith('**', i):
                toks.append(('op', '^'))
                i += 2
            else:
                toks.append(('op', ch))
                i += 1
        else:
            raise _Unsupported(ch)
        if len(toks) > MAX_TOKENS:
            raise _Unsupported('too long')
    return toks


def _checked(x):
    if isinstance(x, Fraction):
        if max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_BITS:
            raise _Unsupported('number too large')
        return x
    x = complex(x)
    if not cmath.isfinite(x):
        raise _Unsupported('overflow')
    return x


def _root(x, q):
    """Exact q-th root of a Fraction >= 0, or None."""
    if x.numerator >= 2 ** 1000 or x.denominator >= 2 ** 1000:
        return None
    parts = []
    for v in (x.numerator, x.denominator):
        r = round(v ** (1.0 / q))
        r = next((c for c in (r - 1, r, r + 1) if c >= 0 and c ** q == v), None)
        if r is None:
            return None
        parts.append(r)
    return Fraction(parts[0], parts[1])


def _pow(x, y):
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        if y.denominator == 1:
            bits = max(x.numerator.bit_length(), x.denominator.bit_length())
            if abs(y.numerator) > 100_000 or (bits > 1 and bits * abs(y.numerator) > MAX_BITS):
                raise _Unsupported('power too large')  # 10^10^10 is refused, not computed
            return x ** y.numerator
        if x > 0 and y.denominator <= 12:
            r = _root(x, y.denominator)
            if r is not None:
                return _pow(r, Fraction(y.numerator))
    z, w = complex(x), complex(y)
    if z == 0:
        if w.real > 0:
            return complex(0)
        raise ZeroDivisionError
    if abs(w) > 1e6 or abs(w) * (abs(math.log(abs(z))) + math.pi) > 700:
        raise _Unsupported('power too large')
    if z.imag == 0 and w.imag == 0 and z.real > 0:
        return complex(z.real ** w.real)
    return z ** w


def _sqrt(x, n=2):
    if isinstance(x, Fraction) and x >= 0:
        r = _root(x, n)
        if r is not None:
            return r
    if isinstance(x, Fraction) and x < 0 and n % 2:
        return -_pow(-x, Fraction(1, n))  # the real cube root of a negative number
    return cmath.sqrt(x) if n == 2 else _pow(x, Fraction(1, n))


def _factorial(x):
    """n! exactly for an integer n <= 1000; Gamma(x + 1) at the sample points of a
    variable (so (n+1)!/n! = n + 1)."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return Fraction(math.factorial(_integer(x)))
    x = _real(x)
    if not -1 < x < 170:
        raise _Unsupported('factorial')
    return complex(math.gamma(float(x) + 1))


def _binom(x, y):
    """\\binom{n}{k} for an integer n, or n(n-1)...(n-k+1)/k! for an expression n."""
    if not (isinstance(y, Fraction) and y.denominator == 1):  # \binom{2n}{n}: Gammas
        return _factorial(x) / (_factorial(y) * _factorial(x - y))
    k = _integer(y)
    if isinstance(x, Fraction) and x.denominator == 1 and x >= 0:
        return Fraction(math.comb(_integer(x), k))
    if k > 50:
        raise _Unsupported('binomial too large')
    v = Fraction(1)
    for j in range(k):
        v = v * (x - j) / (j + 1)
    return v


def _integer(x, lo=0, hi=1000):
    if isinstance(x, Fraction) and x.denominator == 1 and lo <= x <= hi:
        return int(x)
    raise _Unsupported('needs a small integer')


def _real(x):
    if isinstance(x, Fraction):
        return x
    if abs(x.imag) > 1e-12 * max(1.0, abs(x.real)):
        raise _Unsupported('not real')
    return x.real


class _Parser:
    """Precedence climbing over the tokens; every rule returns the expression's values at
    the sample points (a tuple), so no tree is built and nothing is run as code."""

    def __init__(self, toks, env, k):
        self.toks, self.pos, self.depth, self.env, self.k = toks, 0, 0, env, k

    def peek(self, kind=None, value=None):
        t = self.toks[self.pos] if self.pos < len(self.toks) else None
        if t is None or (kind and t[0] != kind) or (value and t[1] != value):
            return None
        return t

    def expect(self, value):
        if not self.peek('op', value):
            raise _Unsupported('expected ' + value)
        self.pos += 1

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Unsupported('nested too deep')

    def lift(self, f, *args):
        return tuple(_checked(f(*xs)) for xs in zip(*args))

    def parse(self):
        v = self.expr()
        if self.pos != len(self.toks):
            raise _Unsupported('trailing tokens')
        return v

    def expr(self):
        self.nest()
        v = self.term()
        while self.peek('op', '+') or self.peek('op', '-'):
            op = self.toks[self.pos][1]
            self.pos += 1
            w = self.term()
            v = self.lift(_OPS[op], v, w)
        self.depth -= 1
        return v

    def starts_factor(self):
        t = self.peek()
        if t is None or t[0] == 'cmd' and t[1] in ('rfloor', 'rceil'):
            return False
        return t[0] != 'op' or t[1] in '([{'

    def term(self):
        v = self.unary()
        while True:
            if self.peek('op', '*') or self.peek('op', '/'):
                op = self.toks[self.pos][1]
                self.pos += 1
                w = self.unary()
                v = self.lift(_OPS[op], v, w)
            elif self.starts_factor():  # implicit product: 2x, 3\sqrt{2}, (a+5)(b+2)
                v = self.lift(operator.mul, v, self.power())
            else:
                return v

    def unary(self):
        sign = 1
        while self.peek('op', '-') or self.peek('op', '+'):
            sign = -sign if self.toks[self.pos][1] == '-' else sign
            self.pos += 1
        v = self.power()
        return self.lift(operator.neg, v) if sign < 0 else v

    def power(self):
        self.nest()
        v = self.primary()
        while self.peek('op', '!'):
            self.pos += 1
            v = self.lift(_factorial, v)
        if self.peek('op', '^'):
            self.pos += 1
            v = self.lift(_pow, v, self.exponent())
        self.depth -= 1
        return v

    def exponent(self):
        """After '^': an optional sign (x^-1), then a power: 2^3^2 = 2^9."""
        negative = bool(self.peek('op', '-'))
        self.pos += negative
        v = self.power()
        return self.lift(operator.neg, v) if negative else v

    def group(self):
        """A braced argument {...}, or a single factor; \\frac12 is \\frac{1}{2}."""
        t = self.peek('num')
        if t and len(t[2]) > 1 and _is_digits(t[2]):  # an unbraced argument is one digit
            self.toks[self.pos] = ('num', Fraction(t[2][1:]), t[2][1:])
            return (Fraction(t[2][0]),) * self.k
        if self.peek('op', '{'):
            self.pos += 1
            v = self.expr()
            self.expect('}')
            return v
        return self.power()

    def primary(self):
        t = self.peek()
        if t is None:
            raise _Unsupported('missing operand')
        self.pos += 1
        kind = t[0]
        if kind in ('num', 'const'):
            return (t[1],) * self.k
        if kind == 'var':
            return self.env[t[1]]
        if kind == 'func':
            return self.function(t[1], t[2])
        if kind == 'op' and t[1] in '([{|':
            v = self.expr()
            close = {'(': ')', '[': ']', '{': '}', '|': '|'}[t[1]]
            if t[1] == '(' and self.peek('op', ']') or t[1] == '[' and self.peek('op', ')'):
                raise _Unsupported('interval, not a value')
            self.expect(close)
            return self.lift(abs, v) if close == '|' else v
        if kind == 'cmd':
            return self.command(t[1])
        raise _Unsupported('unexpected ' + str(t[1]))

    def command(self, name):
        if name in ('frac', 'binom'):
            a, b = self.group(), self.group()
            if name == 'frac':
                return self.lift(operator.truediv, a, b)
            return self.lift(_binom, a, b)
        if name == 'sqrt':
            n = 2
            if self.peek('op', '['):
                self.pos += 1
                idx = self.expr()
                self.expect(']')
                n = _integer(idx[0], 2, 12)
            return self.lift(lambda x: _sqrt(x, n), self.group())
        if name in ('lfloor', 'lceil'):
            v = self.expr()
            t = self.peek('cmd')
            if not t or t[1] != ('rfloor' if name == 'lfloor' else 'rceil'):
                raise _Unsupported('unclosed ' + name)
            self.pos += 1
            f = math.floor if name == 'lfloor' else math.ceil
            return self.lift(lambda x: Fraction(f(_real(x))), v)
        raise _Unsupported(name)

    def function(self, name, base):
        exponent = None
        if self.peek('op', '^'):  # \sin^2 x
            self.pos += 1
            exponent = self.exponent()
        if self.peek('op', '(') or self.peek('op', '{'):
            arg = self.primary()
        else:  # \sin 2x: the implicit product up to the next operator or function
            arg = self.power()
            while self.starts_factor() and not self.peek('func'):
                arg = self.lift(operator.mul, arg, self.power())
        v = self.lift(lambda z: _FUNCS[name](complex(z)), arg)
        if base is not None:  # \log_{10} 250
            b = _number(base.strip('{}')) if base.strip('{}').replace('.', '').isdigit() else None
            if not b or b == 1:
                raise _Unsupported('log base')
            v = tuple(x / cmath.log(complex(b)) for x in v)
        return self.lift(_pow, v, exponent) if exponent else v


_OPS = {'+': operator.add, '-': operator.sub, '*': operator.mul, '/': operator.truediv}


def _evaluate(s):
    """(free variables, values at the sample points) of an expression, or None."""
    try:
        toks = _tokenize(s)
        names = sorted({t[1] for t in toks if t[0] == 'var'})
        if names == ['j'] and all(toks[k - 1][0] == 'num' for k, t in enumerate(toks)
                                  if t == ('var', 'j') and k > 0) and toks[0] != ('var', 'j') \
                and not any(t == ('const', 1j) for t in toks):
            toks = [('const', 1j) if t == ('var', 'j') else t for t in toks]  # 1-4j = 1-4i
            names = []
        if len(names) > len(_SAMPLE[0]):
            return None
        k = N_POINTS if names else 1
        env = {v: tuple(complex(_SAMPLE[p][j]) for p in range(k)) for j, v in enumerate(names)}
        return tuple(names), _Parser(toks, env, k).parse()
    except (_Unsupported, ArithmeticError, ValueError, TypeError, KeyError, IndexError):
        return None


# -------------------------------------------------------------- parse: structure
def _split_top(s, sep):
    """Split at sep outside any brackets."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif depth == 0 and s.startswith(sep, i) and not (
                _is_letter(sep[-1]) and i + len(sep) < len(s) and _is_letter(s[i + len(sep)])):
            parts.append(s[last:i])
            last = i + len(sep)
            i = last
            continue
        i += 1
    parts.append(s[last:])
    return parts


def _outer_pair(s):
    """('(', ']', inner) when s is one bracketed group like (3,4] or \\{1,2\\}, else None."""
    if s.startswith('\\{') and s.endswith('\\}'):
        opening, closing, start = '\\{', '\\}', 1
    elif len(s) >= 2 and s[0] in '([' and s[-1] in ')]':
        opening, closing, start = s[0], s[-1], 0
    else:
        return None
    depth = 0
    for i in range(start, len(s)):
        depth += 1 if s[i] in '([{' else -1 if s[i] in ')]}' else 0
        if depth == 0:
            if i != len(s) - 1:
                return None
            break
    inner = s[2:-2] if opening == '\\{' else s[1:-1]
    return opening, closing, inner


def _is_name(s):
    """x, k, x_1, m_{\\max}, \\theta, f(x), y', (x, y), PQ, |PQ|, S_{ABC}, V_1:V_2, \\frac{AM}{MC},
    \\angle ABC: a left side that only names the answer."""
    s = s.strip()
    if len(s) > 2 and s[0] == '(' and s[-1] == ')' and ',' in s:
        return all(_is_name(p.strip()) for p in s[1:-1].split(','))
    if len(s) > 2 and s[0] == '|' and s[-1] == '|':
        return _is_name(s[1:-1])
    if ':' in s:
        return all(_is_name(p) for p in s.split(':'))
    for cmd in ('\\angle', '\\overline', '\\triangle', 'm\\angle'):
        if s.startswith(cmd) and len(s) > len(cmd):
            s = s[len(cmd):].replace(' ', '')
            s = s[1:-1] if s[:1] == '{' and s[-1:] == '}' else s
    if s.startswith('\\frac{'):
        pairs = _match(s)
        a = pairs.get(5, -1)
        if a > 0 and s[a + 1:a + 2] == '{' and pairs.get(a + 1) == len(s) - 1:
            return _is_name(s[6:a]) and _is_name(s[a + 2:-1])
        return False
    if s[:1] == '\\':
        j = 1
        while j < len(s) and _is_letter(s[j]):
            j += 1
        if j == 1 or s[1:j] in _NOT_EXPR or s[1:j] in _STRUCTURAL or s[1:j] in _FUNCS:
            return False
    elif s[:1] and _is_letter(s[0]):
        j = 1
        while j < len(s) and j < 5 and 'A' <= s[j] <= 'Z' and 'A' <= s[0] <= 'Z':
            j += 1  # a segment or figure named by its points: PQ, ABCD
    else:
        return False
    _, j = _read_name(s, 0, j, _match(s))
    if s[j:j + 1] == '(' and s.endswith(')') and '(' not in s[j + 1:-1]:
        j = len(s)
    return j == len(s)


def _is_constant(s):
    """Does s evaluate to a number (no free variables)?"""
    v = _evaluate(s)
    return v is not None and not v[0]


def _leaf(s):
    s = s[1:] if s.startswith('+') else s  # (2, +\\infty)
    return ('leaf', s, _evaluate(s), _precision(s))


def _precision(s):
    """(half unit of the last digit, significant digits, e-notation?) of a numeral."""
    body = s[1:] if s[:1] in '+-' else s
    mant, e, exp = body.lower().partition('e')
    if e and not (_is_digits(exp.lstrip('+-')) and len(exp) < 5):
        return None
    whole, _, frac = mant.partition('.')
    if not (_is_digits(whole + frac) and (whole or frac)):
        return None
    digits = (whole + frac).lstrip('0')
    unit = Fraction(10) ** (int(exp or 0) - len(frac))
    return unit / 2, len(digits), bool(e)


_REALS = {'\\mathbb{r}', '\\mathbb r', '\\r', 'allrealnumbers', 'allreals', '\\mathbb{r}^1',
          '(-\\infty,\\infty)', 'allrealnumbersx', 'allrealvalues', 'therealnumbers'}
_RELATIONS = (('\\le', '<='), ('\\ge', '>='), ('\\ne', '!='), ('<', '<'), ('>', '>'))


def _analyse(s, depth=0):
    """The structure of a canonical answer: nested ('list' | 'seq' | 'matrix' | 'eq' | 'rel'
    | 'named' | 'alt' | 'leaf', ...)."""
    if depth > 8 or not s:
        return _leaf(s)
    if '\\approx' in s:  # "x = 1/3 \approx 0.33": the exact value or its approximation
        head, tail = s[:s.rfind('\\approx')].strip(), s[s.rfind('\\approx') + 7:].strip()
        after = _analyse(tail, depth + 1)
        if not head or _is_name(head):
            return after
        return ('alt', (_analyse(head.split('\\approx')[0].strip(), depth + 1), after))
    parts = _split_top(s, ';')
    if len(parts) > 1:  # "m=3,n=1;m=5,n=1": groups of named values are tuples
        return _collection(parts, depth, groups=True)
    parts = _split_top(s, ',')
    if len(parts) > 1:
        return _collection(parts, depth)
    parts = _split_top(s, '\\cup')
    if len(parts) > 1:
        return _collection(parts, depth)
    if s in ('\\{\\}', '{}'):
        return _leaf('\\emptyset')
    if '\\begin{' in s:
        node = _matrix_expression(s, depth)
        if node is not None:
            return node
    pair = _outer_pair(s)
    if pair and (pair[0] == '\\{' or len(_split_top(pair[2], ',')) > 1):
        items = _split_top(pair[2], ',')
        if pair[0] == '\\{':
            return _collection(items, depth)
        if len(items) <= MAX_ITEMS:
            return ('seq', pair[0] + pair[1], tuple(_analyse(x.strip(), depth + 1) for x in items))
    if s[0] == '{' and _match(s).get(0) == len(s) - 1:  # "{1, 4, 6}": braces only group
        return _analyse(s[1:-1].strip(), depth + 1)
    parts, ops = _split_relations(s)
    if ops and '=' not in s:
        return _relation(s, parts, ops, depth)
    sides = _split_top(s, '=')
    if len(sides) >= 3:  # a chain of steps: its last part is the result
        return _analyse(sides[-1].strip(), depth + 1)
    if len(sides) == 2:
        left, right = sides[0].strip(), sides[1].strip()
        eq = ('eq', s, _evaluate('(' + left + ')-(' + right + ')'))
        if _is_name(left):
            return ('named', _analyse(right, depth + 1), eq, left, True)
        if _is_name(right) and _is_constant(left):  # "3 = x"
            return ('named', _analyse(left, depth + 1), eq, right, True)
        if _is_constant(right) and all(_is_name(x) for x in left.split('+')):
            # a prediction "m + n = 13" gives 13; a gold "x + y = 7" is an equation (weak)
            return ('named', _analyse(right, depth + 1), eq, left, False)
        if _is_constant(left) and _is_constant(right):  # "\frac12 = \frac{10}{9}": a step
            return _analyse(right, depth + 1)
        return eq
    k = s.find('\\in')
    if k > 0 and not _is_letter(s[k + 3:k + 4]) and _is_name(s[:k].strip()):
        return _analyse(s[k + 3:].strip(), depth + 1)
    if s.count('\\pm') == 1 or s.count('\\mp') == 1:
        cmd = '\\pm' if '\\pm' in s else '\\mp'
        return ('list', (_leaf(s.replace(cmd, '+')), _leaf(s.replace(cmd, '-'))))
    if s.lower() in _REALS:
        return _analyse('(-\\infty,\\infty)', depth + 1) if s != '(-\\infty,\\infty)' else _leaf(s)
    return _leaf(s)


def _split_relations(s):
    """Parts and operators ('<', '<=', '>', '>=', '!=') of a relation at the top level."""
    parts, ops, depth, last, i = [], [], 0, 0, 0
    while i < len(s):
        ch = s[i]
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif depth == 0:
            for tok, op in _RELATIONS:
                after = s[i + len(tok):i + len(tok) + 1]
                if s.startswith(tok, i) and not (tok[0] == '\\' and _is_letter(after)):
                    parts.append(s[last:i].strip())
                    ops.append(op)
                    i += len(tok)
                    last = i
                    break
            else:
                i += 1
            continue
        i += 1
    parts.append(s[last:].strip())
    return parts, ops


def _relation(s, parts, ops, depth):
    """('rel', text, interval, inequality). An inequality a < b is kept as (a - b, '<')
    so that flipped, negated and scaled forms compare equal; a variable bounded by
    constants (x >= 3, -2 < x <= 5, 1 <= |z| <= 2, x != 1) also gets its interval."""
    if not all(parts) or len(ops) > 2:
        return ('rel', s, None, None)
    if ops[0] == '!=':
        if len(ops) > 1:
            return ('rel', s, None, None)
        ineq = (_evaluate('(' + parts[0] + ')-(' + parts[1] + ')'), '!=')
        a, b = parts
        if _is_name(b) and _is_constant(a):
            a, b = b, a
        interval = None
        if _is_name(a) and _is_constant(b):
            interval = _analyse('(-\\infty,%s)\\cup(%s,\\infty)' % (b, b), depth + 1)
        return ('rel', s, interval, ineq)
    up = [op in ('<', '<=') for op in ops]
    if len(set(up)) > 1:
        return ('rel', s, None, None)
    if not up[0]:  # a > b > c is c < b < a
        parts, ops = parts[::-1], [op.replace('>', '<') for op in ops[::-1]]
    if len(ops) == 1:
        a, b = parts
        ineq = (_evaluate('(' + a + ')-(' + b + ')'), ops[0])
        interval = None
        closed_l, closed_r = ('[', ']') if ops[0] == '<=' else ('(', ')')
        if a[:1] == '|' and _is_name(a) and _is_constant(b):  # |x| < 3: (-3, 3)
            interval = '%s-(%s),%s%s' % (closed_l, b, b, closed_r)
        elif b[:1] == '|' and _is_name(b) and _is_constant(a):  # 3 < |x|: two rays
            interval = '(-\\infty,-(%s)%s\\cup%s%s,\\infty)' % (a, closed_r, closed_l, a)
        elif _is_name(a) and _is_constant(b):
            interval = '(-\\infty,%s%s' % (b, closed_r)
        elif _is_name(b) and _is_constant(a):
            interval = '%s%s,\\infty)' % (closed_l, a)
        return ('rel', s, interval and _analyse(interval, depth + 1), ineq)
    lo, mid, hi = parts
    if not (_is_constant(lo) and _is_constant(hi)):
        return ('rel', s, None, None)
    left = '[' if ops[0] == '<=' else '('
    right = ']' if ops[1] == '<=' else ')'
    if len(mid) > 2 and mid[0] == '|' and mid[-1] == '|' and _is_name(mid[1:-1]):
        # lo <= |z| <= hi: z in [-hi, -lo] or [lo, hi]
        text = '%s-(%s),-(%s)%s\\cup%s%s,%s%s' % ('[' if right == ']' else '(', hi, lo,
                                                 ']' if left == '[' else ')', left, lo, hi, right)
        return ('rel', s, _analyse(text, depth + 1), None)
    if _is_name(mid):
        return ('rel', s, _analyse('%s%s,%s%s' % (left, lo, hi, right), depth + 1), None)
    return ('rel', s, None, None)


def _collection(parts, depth, groups=False):
    """An unordered list; items that are themselves \\pm-lists are spliced in. With groups
    (parts between ';'), a part that lists named values ("m=3,n=1") is the tuple (3, 1)."""
    if len(parts) > MAX_ITEMS:
        raise _Unsupported('too many items')
    items = []
    for p in (p for p in parts if p.strip()):  # "3, 5, and 7" leaves an empty item
        node = _analyse(p.strip(), depth + 1)
        if groups and node[0] == 'list' and all(x[0] == 'named' for x in node[1]):
            node = ('seq', '()', tuple(x[1] for x in node[1]))
        if node[0] == 'named' and node[1][0] == 'list':  # "x = \frac{-1 \pm \sqrt{13}}{4}"
            node = node[1]
        items.extend(node[1] if node[0] == 'list' else (node,))
    return ('list', tuple(items))


_MATRIX_ENVS = ('pmatrix', 'bmatrix', 'matrix', 'Bmatrix', 'vmatrix', 'smallmatrix', 'array')


def _matrix(s, depth):
    env = s[len('\\begin{'):s.find('}')]
    body = s[s.find('}') + 1:s.rfind('\\end{')]
    if env == 'array' and body.startswith('{'):  # \begin{array}{cc}: drop the column spec
        body = body[body.find('}') + 1:]
    rows = [r for r in _split_top(body, '\\\\') if r.strip()]
    cells = [_split_top(r, '&') for r in rows]
    if env not in _MATRIX_ENVS or env == 'vmatrix' or sum(len(r) for r in cells) > MAX_ITEMS:
        return _leaf(s)
    return ('matrix', tuple(tuple(_analyse(c.strip(), depth + 1) for c in r) for r in cells))


def _matrix_blocks(s):
    """[(start, end)] of the top-level \\begin{..}...\\end{..} blocks of s."""
    blocks, i = [], 0
    while len(blocks) < 8:
        k = s.find('\\begin{', i)
        if k < 0:
            return blocks
        env = s[k + 7:s.find('}', k)]
        tail = '\\end{' + env + '}'
        e = s.find(tail, k)
        if env not in _MATRIX_ENVS or e < 0:
            return None
        blocks.append((k, e + len(tail)))
        i = e + len(tail)
    return None


def _matrix_expression(s, depth):
    """A matrix, (matrix), [array], or a sum / product / scalar multiple of numeric
    matrices, evaluated cell by cell; None if s is not one."""
    blocks = _matrix_blocks(s)
    if not blocks:
        return None
    outside = s[:blocks[0][0]] + s[blocks[-1][1]:]
    if len(blocks) == 1 and outside in ('', '()', '[]'):
        return _matrix(s[blocks[0][0]:blocks[0][1]], depth)
    if s[:1] in '([' and s[-1:] in ')]' and len(blocks) == 1:
        return None
    # terms: [sign, scalar text, [matrices]]
    terms, scalar, sign = [], s[:blocks[0][0]].strip(), 1
    if scalar.startswith('-'):
        sign, scalar = -1, scalar[1:].strip()
    current = [sign, scalar.rstrip('*').strip(), []]
    for n, (a, b) in enumerate(blocks):
        m = _matrix(s[a:b], depth)
        if m[0] != 'matrix':
            return None
        current[2].append(m)
        gap = s[b:blocks[n + 1][0]].strip() if n + 1 < len(blocks) else s[b:].strip()
        if n + 1 == len(blocks):
            if gap:
                return None
        elif gap in ('+', '-'):
            terms.append(current)
            current = [1 if gap == '+' else -1, '', []]
        elif gap not in ('', '*'):
            return None
    terms.append(current)
    total = None
    for sign, scalar, mats in terms:
        k = Fraction(sign)
        if scalar:
            v = _evaluate(scalar)
            if v is None or v[0]:
                return None
            k = k * v[1][0] if isinstance(v[1][0], Fraction) else complex(k) * v[1][0]
        value = _matrix_values(mats[0])
        for m in mats[1:]:
            value = _matrix_product(value, _matrix_values(m))
        if value is None:
            return None
        value = [[k * x for x in row] for row in value]
        if total is None:
            total = value
        elif len(total) != len(value) or any(len(r) != len(q) for r, q in zip(total, value)):
            return None
        else:
            total = [[x + y for x, y in zip(r, q)] for r, q in zip(total, value)]
    return ('matrix', tuple(tuple(('leaf', '#value', ((), (_checked(x),)), None) for x in row)
                            for row in total))


def _matrix_values(m):
    """The numbers of a matrix node's cells, or None if one is not a number."""
    if m is None:
        return None
    rows = []
    for row in m[1]:
        if any(c[0] != 'leaf' or c[2] is None or c[2][0] for c in row):
            return None
        rows.append([c[2][1][0] for c in row])
    return rows


def _matrix_product(a, b):
    if a is None or b is None or any(len(r) != len(b) for r in a):
        return None
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0))
             for j in range(len(b[0]))] for i in range(len(a))]


# -------------------------------------------------------------------------- compare
def _close(p, g, tol=None):
    """Exact for two rationals, relative REL_TOL otherwise; tol: a rounding allowance."""
    if isinstance(p, Fraction) and isinstance(g, Fraction):
        return p == g or (tol is not None and abs(p - g) <= tol)
    d = abs(complex(p) - complex(g))
    if tol is not None and d <= float(tol) * (1 + 1e-12):
        return True
    return d <= REL_TOL * max(abs(complex(p)), abs(complex(g))) + 1e-15


def _repeats(g):
    """Is the gold a rational whose decimal expansion never ends (1/7, 5/6)?"""
    return all(isinstance(x, Fraction) and x.denominator // (
        2 ** _twos(x.denominator) * 5 ** _fives(x.denominator)) > 1 for x in g[2][1])


def _twos(n):
    return (n & -n).bit_length() - 1


def _fives(n):
    k = 0
    while n % 5 == 0 and k < 64:
        n, k = n // 5, k + 1
    return k


def _rounding(p, g):
    """The allowance for a rounded value: a gold in e-notation (4.5e33) or with at least
    LONG_DECIMAL significant digits (4.123105625618 for sqrt 17) stands for whatever
    rounds to it, half its last digit (or half the prediction's last digit when the
    prediction is that gold rounded further); a prediction with at least LONG_DECIMAL
    significant digits may round a gold whose decimal never ends (0.8333333333 for 5/6)."""
    gp, pp = g[3], p[3]
    if gp and (gp[2] or gp[1] >= LONG_DECIMAL):
        tol = gp[0]
        if pp and 2 <= pp[1] < gp[1] and gp[2]:
            tol = max(tol, pp[0])
        return tol
    if pp and not pp[2] and pp[1] >= LONG_DECIMAL and g[2] is not None and _repeats(g):
        return pp[0]
    return None


def _choice(s, prefix_ok):
    """The letter of a multiple-choice answer: B, (B), or (for a prediction) (B) 42."""
    if len(s) == 1 and s.upper() in 'ABCDE':
        return s.upper()
    if len(s) >= 3 and s[0] == '(' and s[2] == ')' and s[1].upper() in 'ABCDE' and (
            prefix_ok or len(s) == 3):
        return s[1].upper()
    return None


def _base(s):
    """The base subscript of a numeral like 204_5 or 4210_{5}, else None."""
    digits, _, base = s.partition('_')
    return base.strip('{}') if base and _is_digits(digits) else None


def _same_leaf(p, g, percent):
    if p[1] == g[1]:
        return True
    letter = _choice(g[1], False)
    if letter:
        return _choice(p[1], True) == letter
    if (p[1].isalpha() and len(p[1]) >= 3) or (g[1].isalpha() and len(g[1]) >= 3):
        return p[1].lower() == g[1].lower()  # words: "east", "\text{Evelyn}"
    if p[2] is None or g[2] is None or p[2][0] != g[2][0]:
        return False
    if None not in (_base(p[1]), _base(g[1])) and _base(p[1]) != _base(g[1]):
        return False  # 4343_6 vs 4343_7 (a base subscript alone may be left out)
    if p[3] and ('.' in p[1] or 'e' in p[1].lower()) and not g[3] and not all(
            isinstance(x, Fraction) for x in g[2][1]):
        return False  # a decimal is an exact rational: 1.41421356237 is not sqrt(2)
    tol = _rounding(p, g)
    targets = [g[2][1]]
    if percent:  # gold 75%: 0.75 is right too
        targets.append(tuple(x / 100 for x in g[2][1]))
    return any(all(_close(a, b, tol) for a, b in zip(p[2][1], t)) for t in targets)


def _ratio(pv, gv):
    """The constant c with p = c g at every sample point, or None."""
    ratio = None
    for a, b in zip(pv, gv):
        a, b = complex(a), complex(b)
        if abs(b) < 1e-12 or abs(a) < 1e-12:
            if abs(a) >= 1e-12 or abs(b) >= 1e-12:
                return None
            continue
        if ratio is None:
            ratio = a / b
        elif abs(a / b - ratio) > 1e-8 * abs(ratio):
            return None
    return ratio


def _same_equation(p, g):
    """Equations are equal when (lhs - rhs) of one is a nonzero multiple of the other's."""
    if p[2] is None or g[2] is None or p[2][0] != g[2][0]:
        return p[1] == g[1]
    return _ratio(p[2][1], g[2][1]) is not None or p[1] == g[1]


def _same_relation(p, g, percent):
    """Inequalities a < b are equal when (a - b) of one is a positive multiple of the
    other's (any nonzero multiple for !=); else compare their intervals, else the text."""
    pi, gi = p[3], g[3]
    if pi and gi and pi[1] == gi[1] and pi[0] and gi[0] and pi[0][0] and pi[0][0] == gi[0][0]:
        r = _ratio(pi[0][1], gi[0][1])
        if r is not None and (pi[1] == '!=' or (abs(r.imag) < 1e-9 and r.real > 0)):
            return True
    if p[2] is not None and g[2] is not None:
        return _same(p[2], g[2], percent)
    return p[1] == g[1]


def _same_items(ps, gs, percent):
    """One-to-one matching, order free; a tuple the prediction repeats counts once."""
    if len(ps) > len(gs):
        unique = []
        for p in ps:
            if not (p[0] == 'seq' and any(_same(p, q, percent) for q in unique)):
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
    rows = node[1]
    if len(rows) == 1 or all(len(r) == 1 for r in rows):
        return ('seq', '()', tuple(c for r in rows for c in r))
    return node


def _same(p, g, percent):
    if p[0] == 'list' and len(p[1]) == 1:
        p = p[1][0]
    if g[0] == 'list' and len(g[1]) == 1:
        g = g[1][0]
    if p[0] == 'alt':  # "x = 1/3 \approx 0.33": either form
        return any(_same(x, g, percent) for x in p[1])
    if g[0] == 'alt':
        return any(_same(p, x, percent) for x in g[1])
    if p[0] == 'named' and g[0] == 'eq':  # "y = 2x - 1" against "4x - 2y - 2 = 0"
        return _same_equation(p[2], g)
    if g[0] == 'named' and p[0] == 'eq':
        return _same_equation(p, g[2])
    if p[0] == 'named' and g[0] == 'named':  # the values, else the equations
        return _same(p[1], g[1], percent) or _same_equation(p[2], g[2])
    if p[0] == 'named':
        return _same(p[1], g, percent)
    if p[0] == 'list' and g[0] == 'list' and _names(p) and _names(p) == _names(g):
        # "a_{12} = 7, a_2 = 5" against "a_2 = 5, a_{12} = 7": match by name
        by_name = {x[3]: x for x in p[1]}
        return all(_same(by_name[x[3]][1], x[1], percent) for x in g[1])
    if g[0] == 'named':
        return g[4] and _same(p, g[1], percent)
    if g[0] == 'rel':  # a gold inequality accepts its interval; the reverse is refused
        if p[0] == 'rel':
            return _same_relation(p, g, percent)
        return g[2] is not None and _same(p, g[2], percent)
    if p[0] == 'rel':
        return False
    if p[0] == 'list' and g[0] == 'seq' and g[1] == '()':  # "1, 2" against "(1, 2)": in order
        p = ('seq', '()', p[1])
    if g[0] == 'list' and p[0] == 'seq' and p[1] == '()':
        g = ('seq', '()', g[1])
    if p[0] == 'matrix' and g[0] == 'matrix':
        p, g = _as_vector(p), _as_vector(g)
    if p[0] == 'matrix' and g[0] == 'seq':
        p = _as_vector(p)
    if g[0] == 'matrix' and p[0] == 'seq':
        g = _as_vector(g)
    if p[0] != g[0]:
        return False
    if p[0] == 'leaf':
        return _same_leaf(p, g, percent)
    if p[0] == 'eq':
        return _same_equation(p, g)
    if p[0] == 'list':
        return _same_items(p[1], g[1], percent)
    if p[0] == 'seq':
        return p[1] == g[1] and len(p[2]) == len(g[2]) and all(
            _same(a, b, percent) for a, b in zip(p[2], g[2]))
    return len(p[1]) == len(g[1]) and all(  # matrix
        len(a) == len(b) and all(_same(x, y, percent) for x, y in zip(a, b))
        for a, b in zip(p[1], g[1]))


def _names(node):
    """The names of a list whose items all name their value, each once; else None."""
    names = [x[3] if x[0] == 'named' else None for x in node[1]]
    return set(names) if None not in names and len(set(names)) == len(names) else None


def _has_percent(s):
    return '%' in s or 'percent' in s.lower() or 'pct' in s.lower()


def _decimal_comma(s):
    """'1,22' -> '1.22' when the comma cannot be a thousands separator and is unlikely to
    separate two answers ('1,5' stays a list), else None."""
    head, comma, tail = s.lstrip('-').partition(',')
    if comma and _is_digits(head) and _is_digits(tail) and (
            head == '0' or (len(tail) == 2) or (len(head) >= 4 and len(tail) != 3)):
        return s.replace(',', '.')
    return None


def _numeral(s):
    """Is s (canonical) a number written out: an integer, a decimal, e-notation, a fraction of
    two integers in lowest terms, or a mixed number? Not an expression still to evaluate."""
    body = s[1:] if s[:1] == '-' else s
    if _precision(body) is not None:
        return True
    if body.startswith('(') and body.endswith(')') and '+' in body:  # "1 1/2" -> "(1+\\frac{1}{2})"
        whole, _, frac = body[1:-1].partition('+')
        return _is_digits(whole) and _numeral(frac)
    if body.startswith('\\frac{') and body.endswith('}') and '}{' in body:
        a, _, b = body[6:-1].partition('}{')
    else:
        a, _, b = body.partition('/')
    return (_is_digits(a) and _is_digits(b) and int(b) > 1
            and math.gcd(int(a), int(b)) == 1)


def _written_numbers(node):
    """The parts of an analysed answer that are numbers written out ("x = 26" gives 26;
    "12+11+3 = 26" gives 26; "26 = 12+11+3" and "\\frac{56-6}{5}" give nothing), or None."""
    if node[0] == 'list' and len(node[1]) == 1:
        return _written_numbers(node[1][0])
    if node[0] == 'named':
        return _written_numbers(node[1])
    if node[0] == 'alt':  # "x = 1/3 \\approx 0.33": only the written forms may match
        parts = [x for x in map(_written_numbers, node[1]) if x is not None]
        return None if not parts else parts[0] if len(parts) == 1 else ('alt', tuple(parts))
    return node if node[0] == 'leaf' and _numeral(node[1]) else None


def is_equivalent(pred, gold, number_only=False):
    """Are pred and gold the same mathematical answer? (rules at the top of the file)
    number_only=True: against a gold that is a number, pred must be a number written out
    (see score)."""
    try:
        p, g = _as_text(pred), _as_text(gold)
        if p is None or g is None:
            return False
        p, g = _sanitize(p).strip(), _sanitize(g).strip()
        if not p or not g:
            return False
        if p == g:
            return True
        if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
            return False
        pc, gc = _canonical(p), _canonical(g)
        if not pc or not gc:
            return False
        if pc == gc:
            return True
        percent = _has_percent(g) and not _has_percent(p)
        pa, ga = _analyse(pc), _analyse(gc)
        numeric = number_only and _written_numbers(ga) is not None
        if numeric:  # the gold is a number: only what pred writes out as a number may match
            pa = _written_numbers(pa)
            if pa is None:
                return False
        if _same(pa, ga, percent):
            return True
        # a decimal comma ("1,22", "0,111", "1000,99") against a decimal written with a point
        pd, gd = _decimal_comma(pc), _decimal_comma(gc)
        if pd and '.' in gc and _precision(gc):
            return _same(_analyse(pd), _analyse(gc), percent)
        if gd and '.' in pc and _precision(pc):
            return _same(_analyse(pc), _analyse(gd), percent)
        return False
    except Exception:  # a reward function must not crash a training run
        return False


def score(response, gold, fallback=False, last_number=False, number_only=False):
    """1.0 if the response's final answer matches gold, else 0.0. Never raises.
    fallback=True (or its old name last_number=True): see extract_answer.
    number_only=True, for tasks that ask to compute a number (the reward of the synthetic
    task, the search task, GSM8K): against a gold that is a number, the answer must be a
    number written out (integer, decimal, fraction in lowest terms, mixed number; units,
    currency and percent as the default reading allows), so restating the question's
    arithmetic unevaluated ("12+11+3", "\\frac{56-6}{5}", "2 \\cdot 7") earns nothing.
    The default (False) accepts any mathematically equal answer."""
    try:
        answer = extract_answer(response, fallback, last_number)
        gold = gold_text(gold)
        if answer is None or gold is None:
            return 0.0
        return 1.0 if is_equivalent(answer, gold, number_only) else 0.0
    except Exception:
        return 0.0


# ----------------------------------------------------------------------- gold answers
def last_boxed(text):
    """The content of the last \\boxed{} / \\fbox{} in text (a solution), or None."""
    text = _as_text(text)
    if text is None:
        return None
    end = len(text)
    while True:
        i = max(text.rfind('\\boxed', 0, end), text.rfind('\\fbox', 0, end))
        if i < 0:
            return None
        content, _ = _box_at(text, i)
        if content is not None:
            return content.strip()
        end = i


def gsm8k_gold(answer_field):
    """GSM8K: the number after '####' (thousands commas removed)."""
    text = _as_text(answer_field) or ''
    if '####' not in text:
        raise ValueError('GSM8K answer field has no "####" line: %r' % text[-80:])
    return text.rsplit('####', 1)[1].strip().replace(',', '')


def math_gold(record):
    """MATH / AIME / AMC / Minerva: the 'answer' field (27.0 -> '27'), else the last
    \\boxed{} of 'solution'."""
    answer = _as_text(record.get('answer'))
    if answer is not None and answer.strip():
        return answer.strip()
    solution = record.get('solution')
    if isinstance(solution, list):
        solution = '\n'.join(x for x in solution if isinstance(x, str))
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError('record has no answer field and no \\boxed{} in its solution')
    return boxed


def olympiad_gold(record):
    """OlympiadBench: final_answer (a list of strings, often '$...$'), joined by ', '."""
    answers = record.get('final_answer')
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError('OlympiadBench record has no final_answer')
    return ', '.join(a.strip().replace('$', '').strip() for a in answers)


def gold_answer(record):
    """The gold answer of a record of any of the formats in ../shared/datasets/."""
    if 'final_answer' in record:
        return olympiad_gold(record)
    answer = record.get('answer')
    if isinstance(answer, str) and '####' in answer:
        return gsm8k_gold(answer)
    return math_gold(record)
