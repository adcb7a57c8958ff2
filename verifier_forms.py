"""verifier_forms.py: the long tail of verifier.py, the forms a math answer comes in.

verifier.py reads as the pipeline score -> extract -> normalise -> parse -> compare; this
module holds the pieces it calls: finding boxes, markers and math spans in a response;
the rewriters that normalise LaTeX, unicode, units and number formats; a small evaluator
of expressions (our own tokenizer and parser: model output is never run as code); and
the parse of an answer into the node types below (lists, tuples and intervals, matrices,
equations, relations). docs/verifier.md states the rules. Standard library only.
"""
import cmath
import math
import operator
import random
import re
import unicodedata
from fractions import Fraction
from typing import NamedTuple, Optional


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


class Unsupported(Exception):
    """The text is outside what the small evaluator handles (compare it as a string)."""


# ----------------------------------------------------------------------------- text
def as_text(x):
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


def sanitize(text):
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


def is_digits(t):
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


def box_at(text, i):
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



def last_boxed(text, same):
    """(content, end) of the last box, or of the last boxes joined by connectives; same(a, b)
    tells two boxes that restate one answer."""
    answers, end, prev, stop_last = [], len(text), None, -1
    for _ in range(MAX_BOXES):
        i = max(text.rfind('\\boxed', 0, end), text.rfind('\\fbox', 0, end))
        if i < 0:
            break
        content, stop = box_at(text, i)
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
        if listed or not any(same(content, a) for a in answers):
            answers.append(content)
        prev = i
    return (', '.join(reversed(answers)), stop_last) if answers else (None, -1)


def math_spans(text):
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


def is_bare(text):
    """Is the text itself an answer ("$\\frac27$", "t \\in (1, 9]", "30 dollars", "prime")
    rather than prose around one? At most one word of two or more letters outside LaTeX,
    and none before a number ("Soucis : 2,74" is prose)."""
    t = text.strip().strip('*').strip()
    if not t or len(t) > 200:
        return False
    if t.lower().rstrip('.') in _PHRASES:
        return True
    if any(is_cjk(c) for c in t):  # "所以答案是 5": a sentence in Chinese
        return False
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


def is_cjk(ch):
    return '\u4e00' <= ch <= '\u9fff' or '\u3400' <= ch <= '\u4dbf'


def answer_tag(text):
    """The content of the last complete <answer>...</answer> (R1-style), or None."""
    end = text.rfind('</answer>')
    start = text.rfind('<answer>', 0, end) if end >= 0 else -1
    if start < 0 or '\\boxed' in text[end:] or '\\fbox' in text[end:]:
        return None  # a box written after the tag is the later answer
    return text[start + 8:end]


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


def last_number(text):
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


def stated(text):
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
    if not (tail and is_bare(tail.replace('$', ' '))
            and any(c.isdigit() or c in '\\$' for c in tail)):
        return None
    numbers = _number_spans(tail)
    if len(numbers) == 1 and numbers[0][0] == 0 and _is_letter(tail[numbers[0][1]:][:1]):
        return last_number(tail)  # "2,500.5m\u00b2": a unit glued to the number
    return tail


def last_choice(text):
    """The last multiple-choice letter written as (A)..(E) in text, or None."""
    best = max(text.rfind('(%s)' % c) for c in 'ABCDE')
    return text[best:best + 3] if best >= 0 else None


def _answer_in(text):
    """The answer inside an answer sentence: the text itself when it is bare, else what
    follows its last " is " / " = ", else its last math span, else its last number."""
    t = text.strip().strip('"\'*').strip()
    if not t:
        return None
    if is_bare(t):
        return t
    low = t.lower()
    for sep in (' is ', ' are ', ' = ', ' was '):
        k = low.rfind(sep)
        if k >= 0 and is_bare(t[k + len(sep):]):
            return t[k + len(sep):].strip()
    last_digit = max(t.rfind(d) for d in '0123456789')
    if last_digit >= 0 and _has_qualifier(t[last_digit + 1:]):
        return None  # "The answer is 3 at most.", "... $4$ or more": a bound, not the answer
    spans = math_spans(t)
    if spans:
        return spans[-1][2].strip() or None
    if number_word(t.rstrip('.')) != t.rstrip('.'):  # "twenty-five"
        return t.rstrip('.')
    return last_number(t)


_OPENERS = ('so', 'thus', 'hence', 'therefore', 'then', 'and', 'finally', 'clearly')
_MARKERS = ('final answer is', 'answer is', 'answer:', 'answer =', '####',
            '\u7b54\u6848\u662f', '\u7b54\u6848\u4e3a', '\u7b54\u6848:', '\u7b54\u6848\uff1a')  # 答案 (answer) 是 / 为 / :


def after_marker(text, same):
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
        spans = math_spans(lead) if lead[:1] in ('$', '\\') else []
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
            if said and (is_bare(said.replace('$', ' ')) or not _is_prose(said)
                         or number_word(said) != said):  # "twenty-five is the answer"
                return said, k
            spans = math_spans(head[cut:])
            if spans:  # the position is where the answer starts: a box inside it wins
                return spans[-1][2].strip(), start + cut + spans[-1][0]
            return last_number(head[cut:]), k
    if best < 0:
        return None, -1
    rest = text[end:end + 2000].lstrip(' \t\n:*\uff1a')
    line = rest.split('\n', 1)[0]
    for stop in ('. ', '\u3002'):  # "The answer is 42. Let me check." -> 42; 。 ends a sentence
        cut = line.find(stop)
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
        return last_boxed(line, same)[0], best
    if is_bare(line.replace('$', ' ')) or not _is_prose(line):  # "MR=SRMC" is no sentence
        return line, best
    # "Final Answer: The area is 58.": the answer in the sentence; a position of -1 lets
    # an earlier box win over a remark ("The answer is consistent with the 2 cases")
    return _answer_in(line), -1


def strip_chat(text):
    """Drop chat-template tokens a sampler left in ("<|im_start|>user")."""
    k = text.find('<|')
    while k >= 0:
        e = text.find('|>', k)
        if e < 0:
            break
        text = text[:k] + ' ' + text[e + 2:]
        k = text.find('<|', k)
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


def unicode_to_latex(s):
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


def strip_wrappers(s):
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


# Words that make what follows a number a hedge, a bound or a range, never a unit: read as a
# unit and dropped, "3 \\text{ or 4}", "3 or more", "3 at most", "3 maybe" would each be 3.
_QUALIFIERS = {'or', 'and', 'nor', 'either', 'not', 'no', 'more', 'less', 'fewer', 'least', 'most',
               'maybe', 'perhaps', 'probably', 'possibly', 'likely', 'over', 'under', 'above', 'below',
               'than', 'higher', 'lower', 'greater', 'smaller', 'larger', 'minimum', 'maximum',
               'except', 'plus', 'minus', 'if', 'unless', 'to', 'between', 'guess', 'wrong'}


def _has_qualifier(text):
    return any(w in _QUALIFIERS for w in text.lower().replace('~', ' ').split())


def _is_unit_text(t, spaced=False):
    """Does \\text{t} after a number look like a unit ("cm", " degrees", "~m/s^2")?"""
    core = t.strip(' ~')
    if not core or _has_qualifier(core) or not all(
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
        if not unit or _has_qualifier(unit) or not all(_is_letter(c) or c in ' ~' for c in unit):
            return i
        i = pairs[j] + 1


def rewrite_commands(s):
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


def scale_word(s):
    """'7 thousand' -> '7000', '2.5 million' -> '2500000' (a number, then the word)."""
    words = s.split()
    if len(words) == 2 and words[1].lower() in _SCALES:
        try:
            v = Fraction(words[0].replace(',', '')) * _SCALES[words[1].lower()]
        except (ValueError, ZeroDivisionError):
            return s
        return str(v.numerator) if v.denominator == 1 else s
    return s


def repeating_decimals(s):
    """0.\\overline{6} -> \\frac{2}{3}, 2.1\\overline{36} -> its fraction (exact)."""
    k = s.find('\\overline{')
    while k >= 0:
        e = s.find('}', k)
        rep = s[k + 10:e] if e > 0 else ''
        j = k
        while j > 0 and (s[j - 1].isdigit() or s[j - 1] == '.'):
            j -= 1
        head = s[j:k]
        if not (is_digits(rep) and head.count('.') == 1 and len(rep) <= 12 and len(head) <= 20
                and is_digits(head.replace('.', ''))):
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


def brackets_commas(s):
    """';' inside brackets separates coordinates ("(0;-2;6)"): make it ','."""
    if ';' not in s:
        return s
    out, depth = [], 0
    for ch in s:
        depth += 1 if ch in '([' else -1 if ch in ')]' else 0
        out.append(',' if ch == ';' and depth > 0 else ch)
    return ''.join(out)


def replace_word(s, word, repl):
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
    if exp and not is_digits(exp.strip('{}-')):
        return False
    parts = base.split('/')
    return (all(p and all(_is_letter(c) for c in p) for p in parts) and sum(len(p) for p in parts) >= 2
            and not base.startswith('\\') and base.lower() not in _QUALIFIERS)


_CURRENCIES = {'usd', 'eur', 'gbp', 'rs', 'inr', 'rmb', 'cny', 'jpy', 'us$'}


def strip_plain_units(s):
    """'5 cm', '18 dollars', '100 parsecs' -> the number (the words need a space)."""
    words = s.split()
    if len(words) == 2 and words[0].lower().rstrip('.') in _CURRENCIES and is_digits(
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


def squeeze_spaces(s):
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


def drop_modulus(s):
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


def brace_fracs(s):
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


def mixed_numbers(s):
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
        if (b > 0 and j < i and is_digits(s[i + 6:a]) and is_digits(s[a + 2:b])
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


_TENS = ('twenty', 'thirty', 'forty', 'fifty', 'sixty', 'seventy', 'eighty', 'ninety')


def number_word(s):
    low = s.lower()
    if low in _NUMBER_WORDS:
        return str(_NUMBER_WORDS[low])
    for tens in _TENS:  # "forty-two", "forty two" (squeezed to "fortytwo")
        unit = low[len(tens):].lstrip('- ')
        if low.startswith(tens) and 0 < _NUMBER_WORDS.get(unit, 0) < 10:
            return str(_NUMBER_WORDS[tens] + _NUMBER_WORDS[unit])
    return s


def drop_thousands(s):
    """'1,080' / '-11,111,111,100.5' -> without commas, only if the whole answer is one."""
    body = s[1:] if s[:1] in '+-' else s
    whole, _, frac = body.partition('.')
    groups = whole.split(',')
    if (len(groups) >= 2 and 1 <= len(groups[0]) <= 3 and groups[0][0] != '0'
            and all(is_digits(g) for g in groups) and all(len(g) == 3 for g in groups[1:])
            and (not frac or is_digits(frac))):
        return s.replace(',', '')
    return s



# ------------------------------------------------------------ plain-text answer forms
_TIME = re.compile(r'(\d{1,2}):(\d{2})\s*(?:([ap])\.?\s*m\.?)?', re.I)
_MIXED = re.compile(r'(-?)(\d+) +(\d+)/(\d+)')
_AFTER_POWER = re.compile(r'(\^(?:\d+|\{[^{}]*\}))\s+(?=[\d(])')
_BRACKETED_QUANTITY = re.compile(r'\[\s*(-?[\d.,]+\s+[A-Za-z][A-Za-z ]*)\]')
_GLUED_UNIT = re.compile(r'(-?[\d.,]*\d)([A-Za-z]{2,})')


def clock_time(s):
    """'08:34 P.M.' -> '20:34', '12:05 am' -> '0:05', '07:30' -> '7:30': one form of a time
    of day; None when s is not one."""
    m = _TIME.fullmatch(s.strip())
    if not m:
        return None
    h, minutes, half = int(m.group(1)), m.group(2), (m.group(3) or '').lower()
    if int(minutes) > 59 or h > (12 if half else 23) or (half and h == 0):
        return None
    if half:
        h = h % 12 + (12 if half == 'p' else 0)
    return '%d:%s' % (h, minutes)


def plain_text_math(s):
    """Maths written without LaTeX: sqrt(3)/3, pi/2, -2*pi; factors side by side after a
    power (2^6 3^5 5^4 is a product); a mixed number 1 1/2; a quantity in brackets
    ([45 degrees]); a unit glued to its number (10weeks, when the unit is known)."""
    s = replace_word(replace_word(s, 'sqrt', '\\sqrt '), 'pi', '\\pi ')
    if '^' in s:
        s = _AFTER_POWER.sub(r'\1*', s)
    m = _MIXED.fullmatch(s.strip())
    if m and int(m.group(3)) < int(m.group(4)):
        s = '%s(%s+\\frac{%s}{%s})' % m.groups()
    m = _BRACKETED_QUANTITY.fullmatch(s.strip())
    if m:
        s = m.group(1)
    m = _GLUED_UNIT.fullmatch(s.strip())
    if m and m.group(2).lower() in _UNITS:
        s = m.group(1)
    return s


# ----------------------------------------------------------------------------- units
# A unit: (what it measures, its size in that dimension's base unit, exactly). Only units
# that are never also variables or words of an answer; one-letter units ("5 m") stay
# variables unless written in \text{} or \mathrm{}.
_UNITS = {}
for _names, _dim, _size in (
        ('mm millimeter millimeters millimetre millimetres', 'length', Fraction(1, 1000)),
        ('cm centimeter centimeters centimetre centimetres', 'length', Fraction(1, 100)),
        ('meter meters metre metres', 'length', Fraction(1)),
        ('km kilometer kilometers kilometre kilometres', 'length', Fraction(1000)),
        ('inch inches', 'length', Fraction(254, 10000)),
        ('ft foot feet', 'length', Fraction(3048, 10000)),
        ('yd yard yards', 'length', Fraction(9144, 10000)),
        ('mile miles', 'length', Fraction(1609344, 1000)),
        ('mg milligram milligrams', 'mass', Fraction(1, 1000)),
        ('gram grams', 'mass', Fraction(1)),
        ('kg kilogram kilograms', 'mass', Fraction(1000)),
        ('lb lbs pound pounds', 'mass', Fraction(45359237, 100000)),
        ('oz ounce ounces', 'mass', Fraction(45359237, 1600000)),
        ('sec secs second seconds', 'time', Fraction(1)),
        ('min mins minute minutes', 'time', Fraction(60)),
        ('hr hrs hour hours', 'time', Fraction(3600)),
        ('day days', 'time', Fraction(86400)),
        ('week weeks', 'time', Fraction(604800)),
        ('month months', 'months', Fraction(1)),
        ('year years', 'months', Fraction(12)),
        ('ml milliliter milliliters millilitre millilitres', 'volume', Fraction(1, 1000)),
        ('liter liters litre litres', 'volume', Fraction(1)),
        ('cent cents', 'dollars', Fraction(1, 100)),
        ('dollar dollars', 'dollars', Fraction(1)),
        ('degree degrees', 'angle', Fraction(1)),
        ('radian radians rad', 'radians', Fraction(1))):
    for _name in _names.split():
        _UNITS[_name] = (_dim, _size)
_ONE_LETTER_UNITS = {'m': ('length', Fraction(1)), 'g': ('mass', Fraction(1)),
                     's': ('time', Fraction(1)), 'h': ('time', Fraction(3600)),
                     'l': ('volume', Fraction(1)), 'L': ('volume', Fraction(1))}
_TEXT_UNIT = re.compile(r'\\(?:text|mathrm|mbox|textrm|rm)\s*\{\s*~?\s*([A-Za-z]+)\s*\}')
_QUANTITY = re.compile(r'(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)\s*'
                       r'(\x00?[A-Za-z]+)(?:\s*/\s*(\x00?[A-Za-z]+))?'
                       r'(?:\s*\^\s*\{?([23])\}?)?')


def _unit(word, one_letter=False):
    """(dimension, size) of a unit word; one-letter units ("m", "s") only where they cannot
    be a variable: in \\text{} (marked by a NUL) or in a rate ("m/s", "km/h")."""
    if word.startswith('\x00'):
        word, one_letter = word[1:], True
    if one_letter and word in _ONE_LETTER_UNITS:
        return _ONE_LETTER_UNITS[word]
    return _UNITS.get(word.lower())


def quantity(s):
    """(number, dimension, size) of an answer that is one number and a known unit
    ("384,400 km", "5\\text{ cm}^2", "60 km/h", "10weeks"), else None."""
    if len(s) > 100:
        return None
    t = _TEXT_UNIT.sub(lambda m: ' \x00' + m.group(1), strip_wrappers(s))
    for a in ('\\,', '\\ ', '\\;', '~', '$'):
        t = t.replace(a, ' ')
    m = _QUANTITY.fullmatch(t.strip().rstrip('.').strip())
    if not m:
        return None
    number, top, bottom, power = m.groups()
    u, v = _unit(top, bool(bottom)), _unit(bottom, True) if bottom else None
    if u is None or (bottom and v is None):
        return None
    dim, size = u
    if power:
        dim, size = '%s^%s' % (dim, power), size ** int(power)
    if v is not None:
        dim, size = '%s/%s' % (dim, v[0]), size / v[1]
    return number.replace(',', ''), dim, size


def same_quantity(p, g):
    """Two quantities with known units: the same dimension and, converted exactly, the
    same number (2 hours = 120 minutes; 384,400 miles != 384,400 km). None when the units
    are the same: the numbers decide, as without units."""
    if p[1] != g[1]:
        return False
    if p[2] == g[2]:
        return None
    try:
        return Fraction(p[0]) * p[2] == Fraction(g[0]) * g[2]
    except (ValueError, ZeroDivisionError):
        return False


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
        raise Unsupported('exponent too large')
    return Fraction(text)


def _tokenize(s):
    """Tokens: ('num', Fraction, text) ('var', name) ('const', complex) ('func', name, base)
    ('cmd', name) ('op', char)."""
    braces, toks, i, n = _match(s), [], 0, len(s)
    based = False  # a numeral carries a base subscript (204_5)
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
                sub, i = _read_name(s, i, i, braces)
                based = based or sub.strip('_{}') != '10'
        elif _is_letter(ch):
            j = i  # the longest function name has 6 letters: never scan a long word
            while j < n and j - i < 7 and _is_letter(s[j]):
                j += 1
            if s[i:j] in _FUNCS:  # sin x written without the backslash
                toks.append(('func', s[i:j], None))
                i = j
                continue
            if j - i >= 4:  # a word ("where b is ..."), not a product of 4 variables
                raise Unsupported('word')
            name, i = _read_name(s, i, i + 1, braces)
            toks.append(('const', cmath.e) if name == 'e' else ('const', 1j) if name == 'i'
                        else ('var', name))
        elif ch == '\\':
            j = i + 1
            while j < n and _is_letter(s[j]):
                j += 1
            name = s[i + 1:j]
            if not name or name in _NOT_EXPR:
                raise Unsupported(name)
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
            raise Unsupported(ch)
        if len(toks) > MAX_TOKENS:
            raise Unsupported('too long')
    if based and len(toks) > 1 + (toks[0] == ('op', '-')):
        raise Unsupported('arithmetic in a base other than 10')  # 58_9 - 18_9 is not 58 - 18
    return toks


def _checked(x):
    if isinstance(x, Fraction):
        if max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_BITS:
            raise Unsupported('number too large')
        return x
    x = complex(x)
    if not cmath.isfinite(x):
        raise Unsupported('overflow')
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
                raise Unsupported('power too large')  # 10^10^10 is refused, not computed
            return x ** y.numerator
        if x > 0 and y.denominator <= 12:
            r = _root(x, y.denominator)
            if r is not None:
                return _pow(r, Fraction(y.numerator))
        _floats_can_tell(x)
        if x > 0 and x != 1 and abs(float(y) * (math.log(x.numerator) - math.log(x.denominator))) < 1e-6:
            # 2^{1/2^{1000}} is within 1e-300 of 1 but is not 1: floats cannot decide it
            raise Unsupported('power too close to 1 for floats')
    z, w = complex(x), complex(y)
    if z == 0:
        if w.real > 0:
            return complex(0)
        raise ZeroDivisionError
    if abs(w) > 1e6 or abs(w) * (abs(math.log(abs(z))) + math.pi) > 700:
        raise Unsupported('power too large')
    if z.imag == 0 and w.imag == 0 and z.real > 0:
        return complex(z.real ** w.real)
    return z ** w


def _floats_can_tell(x):
    """An exact number about to go through floats must fit in one: the root of
    1 + 10^{-20} would otherwise come out as exactly 1 (10^{20} itself is a float)."""
    if max(x.numerator.bit_length(), x.denominator.bit_length()) > 52 and (
            x.numerator.bit_length() > 1100 or Fraction(float(x)) != x):
        raise Unsupported('exact number beyond float precision')


def _sqrt(x, n=2):
    if isinstance(x, Fraction) and x >= 0:
        r = _root(x, n)
        if r is not None:
            return r
        _floats_can_tell(x)
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
        raise Unsupported('factorial')
    return complex(math.gamma(float(x) + 1))


def _binom(x, y):
    """\\binom{n}{k} for an integer n, or n(n-1)...(n-k+1)/k! for an expression n."""
    if not (isinstance(y, Fraction) and y.denominator == 1):  # \binom{2n}{n}: Gammas
        return _factorial(x) / (_factorial(y) * _factorial(x - y))
    k = _integer(y)
    if isinstance(x, Fraction) and x.denominator == 1 and x >= 0:
        return Fraction(math.comb(_integer(x), k))
    if k > 50:
        raise Unsupported('binomial too large')
    v = Fraction(1)
    for j in range(k):
        v = v * (x - j) / (j + 1)
    return v


def _integer(x, lo=0, hi=1000):
    if isinstance(x, Fraction) and x.denominator == 1 and lo <= x <= hi:
        return int(x)
    raise Unsupported('needs a small integer')


def _real(x):
    if isinstance(x, Fraction):
        return x
    if abs(x.imag) > 1e-12 * max(1.0, abs(x.real)):
        raise Unsupported('not real')
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
            raise Unsupported('expected ' + value)
        self.pos += 1

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Unsupported('nested too deep')

    def lift(self, f, *args):
        return tuple(_checked(f(*xs)) for xs in zip(*args))

    def parse(self):
        v = self.expr()
        if self.pos != len(self.toks):
            raise Unsupported('trailing tokens')
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
        if t and len(t[2]) > 1 and is_digits(t[2]):  # an unbraced argument is one digit
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
            raise Unsupported('missing operand')
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
                raise Unsupported('interval, not a value')
            self.expect(close)
            return self.lift(abs, v) if close == '|' else v
        if kind == 'cmd':
            return self.command(t[1])
        raise Unsupported('unexpected ' + str(t[1]))

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
                raise Unsupported('unclosed ' + name)
            self.pos += 1
            f = math.floor if name == 'lfloor' else math.ceil
            return self.lift(lambda x: Fraction(f(_real(x))), v)
        raise Unsupported(name)

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
                raise Unsupported('log base')
            v = tuple(x / cmath.log(complex(b)) for x in v)
        return self.lift(_pow, v, exponent) if exponent else v


_OPS = {'+': operator.add, '-': operator.sub, '*': operator.mul, '/': operator.truediv}


class Value(NamedTuple):
    """An evaluated expression: its free variables and its values at the sample points
    (one value when there are none: a Fraction when exact, else a complex)."""
    names: tuple
    points: tuple


def _evaluate(s):
    """The Value of an expression, or None when the evaluator cannot read it."""
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
        return Value(tuple(names), _Parser(toks, env, k).parse())
    except (Unsupported, ArithmeticError, ValueError, TypeError, KeyError, IndexError):
        return None


# -------------------------------------------------------------- parse: structure
# The parse of a canonical answer is a tree of these nodes.
class Precision(NamedTuple):
    """How a numeral was written: half a unit of its last digit, its significant digits,
    and whether it is in e-notation (4.5e33)."""
    half_unit: Fraction
    digits: int
    e_notation: bool


class Leaf(NamedTuple):
    """A single value or word: its canonical text, its Value (None when the evaluator
    cannot read it) and its Precision (None unless it is a plain numeral)."""
    text: str
    value: Optional[Value]
    precision: Optional[Precision]


class Items(NamedTuple):
    """An unordered list of answers ("1, 2", "\\{1, 2\\}", "3 \\pm 1", a union)."""
    items: tuple


class Seq(NamedTuple):
    """An ordered group: brackets is the opening and closing character ("()", "[)")."""
    brackets: str
    items: tuple


class Matrix(NamedTuple):
    rows: tuple  # of tuples of nodes


class Equation(NamedTuple):
    """An equation; value is the Value of (left - right), or None."""
    text: str
    value: Optional[Value]


class Named(NamedTuple):
    """"x = 3": the value, the whole equation, the name; strong is False for a sum of
    names ("m + n = 13"), whose value only a prediction may give."""
    value: tuple
    equation: Equation
    name: str
    strong: bool


class Inequality(NamedTuple):
    value: Optional[Value]  # of (left - right)
    op: str                 # '<', '<=' or '!='


class Relation(NamedTuple):
    """An inequality or chain; interval is the solution set of a variable bounded by
    constants (a node), inequality the normalised form of a single comparison."""
    text: str
    interval: Optional[tuple]
    inequality: Optional[Inequality]


class Alt(NamedTuple):
    """"x = 1/3 \\approx 0.33": either form is right (the second rounds or truncates the first)."""
    forms: tuple


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


def is_name(s):
    """x, k, x_1, m_{\\max}, \\theta, f(x), y', (x, y), PQ, |PQ|, S_{ABC}, V_1:V_2, \\frac{AM}{MC},
    \\angle ABC: a left side that only names the answer."""
    s = s.strip()
    if len(s) > 2 and s[0] == '(' and s[-1] == ')' and ',' in s:
        return all(is_name(p.strip()) for p in s[1:-1].split(','))
    if len(s) > 2 and s[0] == '|' and s[-1] == '|':
        return is_name(s[1:-1])
    if ':' in s:
        return all(is_name(p) for p in s.split(':'))
    for cmd in ('\\angle', '\\overline', '\\triangle', 'm\\angle'):
        if s.startswith(cmd) and len(s) > len(cmd):
            s = s[len(cmd):].replace(' ', '')
            s = s[1:-1] if s[:1] == '{' and s[-1:] == '}' else s
    if s.startswith('\\frac{'):
        pairs = _match(s)
        a = pairs.get(5, -1)
        if a > 0 and s[a + 1:a + 2] == '{' and pairs.get(a + 1) == len(s) - 1:
            return is_name(s[6:a]) and is_name(s[a + 2:-1])
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
    return v is not None and not v.names


def _leaf(s):
    s = s[1:] if s.startswith('+') else s  # (2, +\\infty)
    return Leaf(s, _evaluate(s), precision(s))


def precision(s):
    """(half unit of the last digit, significant digits, e-notation?) of a numeral."""
    body = s[1:] if s[:1] in '+-' else s
    mant, e, exp = body.lower().partition('e')
    if e and not (is_digits(exp.lstrip('+-')) and len(exp) < 5):
        return None
    whole, _, frac = mant.partition('.')
    if not (is_digits(whole + frac) and (whole or frac)):
        return None
    digits = (whole + frac).lstrip('0')
    unit = Fraction(10) ** (int(exp or 0) - len(frac))
    return Precision(unit / 2, len(digits), bool(e))


_REALS = {'\\mathbb{r}', '\\mathbb r', '\\r', 'allrealnumbers', 'allreals', '\\mathbb{r}^1',
          '(-\\infty,\\infty)', 'allrealnumbersx', 'allrealvalues', 'therealnumbers'}
_RELATIONS = (('\\le', '<='), ('\\ge', '>='), ('\\ne', '!='), ('<', '<'), ('>', '>'))


def analyse(s, depth=0):
    """The structure of a canonical answer: a tree of the node types above."""
    if depth > 8 or not s:
        return _leaf(s)
    if '\\approx' in s:  # "x = 1/3 \approx 0.33": the exact value or its approximation
        head, tail = s[:s.rfind('\\approx')].strip(), s[s.rfind('\\approx') + 7:].strip()
        after = analyse(tail, depth + 1)
        if not head or is_name(head):
            return after
        exact = analyse(head.split('\\approx')[0].strip(), depth + 1)
        if not _approximates(after, exact):  # "3 \\approx 4" would hedge two answers: 3 counts
            return exact
        return Alt((exact, after))
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
            return Seq(pair[0] + pair[1], tuple(analyse(x.strip(), depth + 1) for x in items))
    if s[0] == '{' and _match(s).get(0) == len(s) - 1:  # "{1, 4, 6}": braces only group
        return analyse(s[1:-1].strip(), depth + 1)
    parts, ops = _split_relations(s)
    if ops and '=' not in s:
        return _relation(s, parts, ops, depth)
    sides = _split_top(s, '=')
    if len(sides) >= 3:  # a chain of steps: its last part is the result
        return analyse(sides[-1].strip(), depth + 1)
    if len(sides) == 2:
        left, right = sides[0].strip(), sides[1].strip()
        eq = Equation(s, _evaluate('(' + left + ')-(' + right + ')'))
        if is_name(left):
            return Named(analyse(right, depth + 1), eq, left, True)
        if is_name(right) and _is_constant(left):  # "3 = x"
            return Named(analyse(left, depth + 1), eq, right, True)
        if _is_constant(right) and all(is_name(x) for x in left.split('+')):
            # a prediction "m + n = 13" gives 13; a gold "x + y = 7" is an equation (weak)
            return Named(analyse(right, depth + 1), eq, left, False)
        if _is_constant(left) and _is_constant(right):  # "\frac12 = \frac{10}{9}": a step
            return analyse(right, depth + 1)
        return eq
    k = s.find('\\in')
    if k > 0 and not _is_letter(s[k + 3:k + 4]) and is_name(s[:k].strip()):
        return analyse(s[k + 3:].strip(), depth + 1)
    if s.count('\\pm') == 1 or s.count('\\mp') == 1:
        cmd = '\\pm' if '\\pm' in s else '\\mp'
        return Items((_leaf(s.replace(cmd, '+')), _leaf(s.replace(cmd, '-'))))
    if s.lower() in _REALS:
        return analyse('(-\\infty,\\infty)', depth + 1) if s != '(-\\infty,\\infty)' else _leaf(s)
    return _leaf(s)


def _approximates(approx, exact):
    """Is approx a numeral that rounds or truncates the value exact (0.33 or 0.3 of 1/3, 0.67
    or 0.66 of 2/3, 1.414 of \\sqrt2), so that "exact \\approx approx" states one answer?"""
    while isinstance(exact, (Named, Items)):
        if isinstance(exact, Items) and len(exact.items) != 1:
            return False
        exact = exact.value if isinstance(exact, Named) else exact.items[0]
    if not (isinstance(approx, Leaf) and isinstance(exact, Leaf) and approx.precision
            and approx.value and exact.value and not exact.value.names):
        return False
    half = float(approx.precision.half_unit)
    for a, e in zip(approx.value.points, exact.value.points):
        a, e = complex(a), complex(e)
        if abs(e.imag) > 1e-12 or abs(a.imag) > 1e-12:
            return False
        rounded = abs(e.real - a.real) <= half * (1 + 1e-9)
        truncated = abs(a.real) <= abs(e.real) and a.real * e.real >= 0 and abs(e.real - a.real) < 2 * half
        if not (rounded or truncated):
            return False
    return True


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
    """A Relation. An inequality a < b is kept as (a - b, '<')
    so that flipped, negated and scaled forms compare equal; a variable bounded by
    constants (x >= 3, -2 < x <= 5, 1 <= |z| <= 2, x != 1) also gets its interval."""
    if not all(parts) or len(ops) > 2:
        return Relation(s, None, None)
    if ops[0] == '!=':
        if len(ops) > 1:
            return Relation(s, None, None)
        ineq = Inequality(_evaluate('(' + parts[0] + ')-(' + parts[1] + ')'), '!=')
        a, b = parts
        if is_name(b) and _is_constant(a):
            a, b = b, a
        interval = None
        if is_name(a) and _is_constant(b):
            interval = analyse('(-\\infty,%s)\\cup(%s,\\infty)' % (b, b), depth + 1)
        return Relation(s, interval, ineq)
    up = [op in ('<', '<=') for op in ops]
    if len(set(up)) > 1:
        return Relation(s, None, None)
    if not up[0]:  # a > b > c is c < b < a
        parts, ops = parts[::-1], [op.replace('>', '<') for op in ops[::-1]]
    if len(ops) == 1:
        a, b = parts
        ineq = Inequality(_evaluate('(' + a + ')-(' + b + ')'), ops[0])
        interval = None
        closed_l, closed_r = ('[', ']') if ops[0] == '<=' else ('(', ')')
        if a[:1] == '|' and is_name(a) and _is_constant(b):  # |x| < 3: (-3, 3)
            interval = '%s-(%s),%s%s' % (closed_l, b, b, closed_r)
        elif b[:1] == '|' and is_name(b) and _is_constant(a):  # 3 < |x|: two rays
            interval = '(-\\infty,-(%s)%s\\cup%s%s,\\infty)' % (a, closed_r, closed_l, a)
        elif is_name(a) and _is_constant(b):
            interval = '(-\\infty,%s%s' % (b, closed_r)
        elif is_name(b) and _is_constant(a):
            interval = '%s%s,\\infty)' % (closed_l, a)
        return Relation(s, interval and analyse(interval, depth + 1), ineq)
    lo, mid, hi = parts
    if not (_is_constant(lo) and _is_constant(hi)):
        return Relation(s, None, None)
    left = '[' if ops[0] == '<=' else '('
    right = ']' if ops[1] == '<=' else ')'
    if len(mid) > 2 and mid[0] == '|' and mid[-1] == '|' and is_name(mid[1:-1]):
        # lo <= |z| <= hi: z in [-hi, -lo] or [lo, hi]
        text = '%s-(%s),-(%s)%s\\cup%s%s,%s%s' % ('[' if right == ']' else '(', hi, lo,
                                                 ']' if left == '[' else ')', left, lo, hi, right)
        return Relation(s, analyse(text, depth + 1), None)
    if is_name(mid):
        return Relation(s, analyse('%s%s,%s%s' % (left, lo, hi, right), depth + 1), None)
    return Relation(s, None, None)


def _collection(parts, depth, groups=False):
    """An unordered list; items that are themselves \\pm-lists are spliced in. With groups
    (parts between ';'), a part that lists named values ("m=3,n=1") is the tuple (3, 1)."""
    if len(parts) > MAX_ITEMS:
        raise Unsupported('too many items')
    items = []
    for p in (p for p in parts if p.strip()):  # "3, 5, and 7" leaves an empty item
        node = analyse(p.strip(), depth + 1)
        if groups and isinstance(node, Items) and all(isinstance(x, Named) for x in node.items):
            node = Seq('()', tuple(x.value for x in node.items))
        if isinstance(node, Named) and isinstance(node.value, Items):  # "x = \frac{-1 \pm \sqrt{13}}{4}"
            node = node.value
        items.extend(node.items if isinstance(node, Items) else (node,))
    return Items(tuple(items))


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
    return Matrix(tuple(tuple(analyse(c.strip(), depth + 1) for c in r) for r in cells))


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
        if not isinstance(m, Matrix):
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
            if v is None or v.names:
                return None
            x = v.points[0]
            k = k * x if isinstance(x, Fraction) else complex(k) * x
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
    return Matrix(tuple(tuple(Leaf('#value', Value((), (_checked(x),)), None) for x in row)
                        for row in total))


def _matrix_values(m):
    """The numbers of a matrix node's cells, or None if one is not a number."""
    if m is None:
        return None
    rows = []
    for row in m.rows:
        if any(not isinstance(c, Leaf) or c.value is None or c.value.names for c in row):
            return None
        rows.append([c.value.points[0] for c in row])
    return rows


def _matrix_product(a, b):
    if a is None or b is None or any(len(r) != len(b) for r in a):
        return None
    return [[sum((a[i][k] * b[k][j] for k in range(len(b))), Fraction(0))
             for j in range(len(b[0]))] for i in range(len(a))]


# -------------------------------------------------------------------------- compare
def close(p, g, tol=None):
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
        2 ** _twos(x.denominator) * 5 ** _fives(x.denominator)) > 1 for x in g.value.points)


def _twos(n):
    return (n & -n).bit_length() - 1


def _fives(n):
    k = 0
    while n % 5 == 0 and k < 64:
        n, k = n // 5, k + 1
    return k


def rounding(p, g):
    """The allowance for a rounded value: a gold in e-notation (4.5e33) or with at least
    LONG_DECIMAL significant digits (4.123105625618 for sqrt 17) stands for whatever
    rounds to it, half its last digit (or half the prediction's last digit when the
    prediction is that gold rounded further); a prediction with at least LONG_DECIMAL
    significant digits may round a gold whose decimal never ends (0.8333333333 for 5/6)."""
    gp, pp = g.precision, p.precision
    if gp and (gp.e_notation or gp.digits >= LONG_DECIMAL):
        tol = gp.half_unit
        if pp and 2 <= pp.digits < gp.digits and gp.e_notation:
            tol = max(tol, pp.half_unit)
        return tol
    if pp and not pp.e_notation and pp.digits >= LONG_DECIMAL and g.value is not None and _repeats(g):
        return pp.half_unit
    return None


def choice_letter(s, prefix_ok):
    """The letter of a multiple-choice answer: B, (B), or (for a prediction) (B) 42."""
    if len(s) == 1 and s.upper() in 'ABCDE':
        return s.upper()
    if len(s) >= 3 and s[0] == '(' and s[2] == ')' and s[1].upper() in 'ABCDE' and (
            prefix_ok or len(s) == 3):
        return s[1].upper()
    return None


def base_subscript(s):
    """The base subscript of a numeral like 204_5 or 4210_{5}, else None."""
    digits, _, base = s.partition('_')
    return base.strip('{}') if base and is_digits(digits) else None



def has_percent(s):
    return '%' in s or 'percent' in s.lower() or 'pct' in s.lower()


def decimal_comma(s):
    """'1,22' -> '1.22' when the comma cannot be a thousands separator and is unlikely to
    separate two answers ('1,5' stays a list), else None."""
    head, comma, tail = s.lstrip('-').partition(',')
    if comma and is_digits(head) and is_digits(tail) and (
            head == '0' or (len(tail) == 2) or (len(head) >= 4 and len(tail) != 3)):
        return s.replace(',', '.')
    return None



def ratio(pv, gv):
    """The constant c with p = c g at every sample point, or None."""
    c = None
    for a, b in zip(pv, gv):
        a, b = complex(a), complex(b)
        if abs(b) < 1e-12 or abs(a) < 1e-12:
            if abs(a) >= 1e-12 or abs(b) >= 1e-12:
                return None
            continue
        if c is None:
            c = a / b
        elif abs(a / b - c) > 1e-8 * abs(c):
            return None
    return c
