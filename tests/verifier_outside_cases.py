"""Outside cases: answers and verdicts taken from other projects' grader tests and from
verifier issue threads, restated here (no code copied), each with its source.

These cases were collected after the rules of verifier.py were written and no rule was
written from them: they measure how the verifier does on answers it was not tuned on.
bench/verifier.py reports the score on this table apart from the labelled table. A
case's expected verdict is whether the answer is mathematically right, not what the
source's grader returned; cases whose verdict is a grading policy rather than a fact
(does "0.333" answer 1/3? must a response close a </think> tag?) were left out.

Each row: (response, gold, expected, source).
"""

MV_MIXED = 'huggingface/Math-Verify tests/test_mixed_number_extraction.py'
MV_YUJIANLL = 'huggingface/Math-Verify tests/test_yujianll.py'
MV = 'https://github.com/huggingface/Math-Verify/issues/'
QWEN = 'QwenLM/Qwen2.5-Math evaluation/grader.py (its tests and _test_math_equal pairs)'
MILES = 'radixark/miles tests of rollout/rm_hub/deepscaler (rule-based reward)'
SLIME = 'cklxx/slime tests/test_math_reward_utils.py'
AREAL = 'inclusionAI/AReaL areal/tests/test_math_verify_reward.py'
THINKBOT = 'thekasyap/thinkbot test_math_equivalence.py'

OUTSIDE_CASES = [
    # mixed numbers written in plain text
    ('4 4/9', '\\frac{40}{9}', True, MV_MIXED),
    ('-4 4/9', '-\\frac{40}{9}', True, MV_MIXED),
    ('11 5/6', '\\frac{71}{6}', True, MV_MIXED),
    ('+11 5/6', '71/6', True, MV_MIXED),
    ('The answer is 4 4/9.', '40/9', True, MV_MIXED),
    ('The answer is 4 4/9.', '4', False, MV_MIXED),
    ('0 4/9', '\\frac49', True, MV_MIXED),
    ('4 0/9', '4', True, MV_MIXED),
    ('1 000 4/9', '\\frac{9004}{9}', True, MV_MIXED),
    ('4 4/0', '4', False, MV_MIXED),
    ('11 6/6', '12', False, MV_MIXED),
    ('11/10 4/9', '139/90', False, MV_MIXED),
    ('11 + 4/9', '11 - 4/9', False, MV_MIXED),
    ('11 + 4/9', '\\frac{103}{9}', True, MV_MIXED),
    ('$5.00', '5', True, MV_MIXED),
    ('There are 4 objects and 4/9 remain.', '4/9', True, MV_MIXED),
    ('1 000', '1000', True, MV_MIXED),
    # named answers, lists, near misses (a Math-Verify user's report and its tests)
    ('$n=1, 2, 3$', '$n=1, 2, 3$', True, MV_YUJIANLL),
    ('$n=1, 2, 3$', '$n=2, 3, 4$', False, MV_YUJIANLL),
    ('$D = (0, 1)$', '$D = (0, 1)$', True, MV_YUJIANLL),
    ('$D = (0, 1.5)$', '$D = (0, 1)$', False, MV_YUJIANLL),
    ('$F_n = \\sum_{k=0}^{n-2} F_k F_{n-k-2}$', '$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$', False,
     MV_YUJIANLL),
    ('$F_n = \\sum_{k=0}^{n-1} F_{n-k-1} F_k$', '$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$', True,
     MV_YUJIANLL),
    ('$19, 46, \\text{ and } 82$', '$19, 46, and 82$', True, MV_YUJIANLL),
    ('$21, 36, and 82$', '$19, 46, and 82$', False, MV_YUJIANLL),
    ('$1 - \\frac{1}{\\mathrm{e}}$', '$1 - \\frac{1}{\\mathrm{e}}$', True, MV_YUJIANLL),
    ('$1 + \\frac{1}{\\mathrm{e}}$', '$1 - \\frac{1}{\\mathrm{e}}$', False, MV_YUJIANLL),
    ('$2021$', '$\\pm 2021$', False, MV_YUJIANLL),
    ('${-2021, 2021}$', '$\\pm 2021$', True, MV_YUJIANLL),
    ('$1:00$', '$12:00$', False, MV_YUJIANLL),
    ('$12:00$', '$12:00$', True, MV_YUJIANLL),
    ('$\\frac{1}{2006!}$', '$\\frac{1}{2004!}$', False, MV + '14'),
    ('$\\frac{1}{2^{98}}$', '$\\frac{1}{2^{99}}$', False, MV + '14'),
    ('$\\frac{1}{3 \\cdot 2^{2006}}$', '$\\frac{2^{2005}+1}{3 \\cdot 2^{2006}}$', False, MV + '14'),
    ('$1, 3, 5, \\ldots, 2n-1$', '$1, 2, \\ldots, n$', False, MV + '14'),
    ('$1:4:9:\\ldots$', '$1:2:3:\\ldots$', False, MV + '14'),
    ('$4\\sqrt{2}$', '$4$', False, MV + '41'),
    ('$4\\sqrt(2)$', '$4$', False, MV + '41'),
    ('$\\text{13}$', '$13$', True, MV + '37'),
    ('$y = -1/2*x + 3/4$', '$2x+4y-3=0$', True, MV + '26'),
    ('$y = -\\frac{1}{2}x + \\frac{3}{4}$', '$2x+4y-3=0$', True, MV + '26'),
    ('3x + 4y + 14=0', '3*x-1*y+13=0', False, MV + '60'),
    ('Left side: 437 + 2*234 = 905\nRight side: 122 + 294 + 489 = 905\nConsistent.\n\n'
     'So the number of residents owning all four things is **73**.\n\n---\n\nFinal Answer: **73**',
     '73', True, MV + '76'),
    ('Final Answer\n\\[\n\\boxed{m \\geq \\sqrt{2}}\n\\]', 'm \\in [\\sqrt{2}, +\\infty)', False,
     MV + '25'),
    ('the solution to the problem is $m \\in [\\sqrt{2}, +\\infty)$', 'm \\geq \\sqrt{2}', True,
     MV + '25'),
    ('The answer is $\\frac{9}{7}$.', '\\dfrac{9}{7}', True, MV + '70'),
    # pairs from the Qwen2.5-Math grader
    ('0.0833333333333333', '\\frac{1}{12}', True, QWEN),
    ('(1,4.5)', '(1,\\frac{9}{2})', True, QWEN),
    ('\\frac{x}{7}+\\frac{2}{7}', '\\frac{x+2}{7}', True, QWEN),
    ('\\sec^2(y)', '\\tan^2(y)+1', True, QWEN),
    ('\\begin{pmatrix}-\\frac{7}{4}&-2\\\\4&\\frac{1}{4}\\end{pmatrix}',
     '(\\begin{pmatrix}-\\frac{7}{4}&-2\\\\4&\\frac{1}{4}\\\\\\end{pmatrix})', True, QWEN),
    ('-\\frac{8x^2}{9(x^2-2)^{5/3}}+\\frac{2}{3(x^2-2)^{2/3}}',
     '-\\frac{2(x^2+6)}{9(x^2-2)\\sqrt[3]{x^2-2}^2}', True, QWEN),
    ('-34x-45y+20z-100=0', '34x+45y-20z+100=0', True, QWEN),
    ('\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}',
     '\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}', True, QWEN),
    ('(+5)(b+2)', '(a+5)(b+2)', False, QWEN),
    ('\\frac{1+\\sqrt{5}}{2}', '2', False, QWEN),
    ('\\frac{34}{16}+\\frac{\\sqrt{1358}}{16}', '4', False, QWEN),
    ('1', '\\sqrt{19}', False, QWEN),
    ('x+1', 'x+2n+1', False, QWEN),
    ('0.1', '10\\%', True, QWEN),
    ('[1, 2, 3]', '[1, 2, 4]', False, QWEN),
    ('(1, 2, 3)', '(1, 2, 3)', True, QWEN),
    ('x = 10', '10', True, QWEN),
    ('10', 'x = 10', True, QWEN),
    ('x = y', 'x = z', False, QWEN),
    ('x = y', 'x = y', True, QWEN),
    ('\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}', '\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}', False, QWEN),
    ('\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}', '\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}', True, QWEN),
    ('10', '20', False, QWEN),
    # responses after a reasoning block (DeepScaleR-style rewards)
    ('Let me analyze...</think>The answer is \\boxed{42}', '42', True, MILES),
    ('Thinking...</think>The answer is \\boxed{wrong}', '42', False, MILES),
    ('###Response\\boxed{42}', '42', True, MILES),
    ('</think>\\boxed{123}', 123, True, MILES),
    ('</think>\\boxed{3.14}', 3.14, True, MILES),
    ('</think>\\boxed{1/2}', '0.5', True, MILES),
    ('</think>\\boxed{\\frac{1}{2}}', '0.5', True, MILES),
    ('First thought</think>Second thought</think>\\boxed{42}', '42', True, MILES),
    ('</think>\\boxed{42}', '\\boxed{42}', True, MILES),
    ('</think>\\boxed{41}', '\\boxed{42}', False, MILES),
    # answer lines and boxes (verl-style graders)
    ('Reasoning steps...\nAnswer: \\boxed{25}', '25', True, SLIME),
    ('Here is the result.\nAnswer: 25', '25', True, SLIME),
    ('25', '25', True, SLIME),
    ('Answer: \\boxed{0}', 0, True, SLIME),
    ('The answer is 4', '4', True, AREAL),
    ('The answer is 0.5', '1/2', True, AREAL),
    ('Step 1: 2+2=4. \\boxed{4}', '4', True, AREAL),
    ('The answer is 5', '4', False, AREAL),
    ('', '4', False, AREAL),
    # plain numbers in several forms
    ('0.5', '1/2', True, THINKBOT),
    ('1/2', '0.5', True, THINKBOT),
    ('2.0', '2', True, THINKBOT),
    ('4/2', '2', True, THINKBOT),
    ('2', '4/2', True, THINKBOT),
    ('0.25', '1/4', True, THINKBOT),
    ('3/4', '0.75', True, THINKBOT),
    ('1.0', '1', True, THINKBOT),
    ('0.0', '0', True, THINKBOT),
    ('0.5', '1/3', False, THINKBOT),
    ('1/2', '1/3', False, THINKBOT),
    ('2', '3', False, THINKBOT),
    ('0.5', '0.6', False, THINKBOT),
]
