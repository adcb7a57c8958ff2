"""Tests of verifier.py: a table of (prediction, gold, expected) and (response, gold,
expected) cases in the shapes real model output and real datasets take, the dataset golds
of ../shared/datasets/, and hostile inputs (each must just return a bool)."""
import glob
import json
import os

import pytest

import verifier as V
from data import tasks
from verifier_cases import CASES, dataset_cases

B = '\\'  # keeps the LaTeX below readable: B + 'frac' == r'\frac'

# (prediction, gold, expected): compared with is_equivalent, and again as "\boxed{pred}".
EQUIV = [
    # --- integers, GSM8K / AIME / AMC gold formats
    ('42', '42', True), ('42', '43', False), ('025', '25', True), ('25', '025', True),
    ('27', '27.0', True), ('27.0', '27', True), ('27.5', '27', False), ('-3', '-3', True),
    ('3', '-3', False), ('1080', '1,080', True), ('1,080', '1080', True),
    ('109200000', '109,200,000', True), ('10080', r'10,\!080', True),
    ('11111111100', r'11,\! 111,\! 111,\! 100', True), ('58,500', '58500', True),
    ('+5', '5', True), ('5.', '5', True), ('005', '5', True), ('10000', '10001', False),
    ('10001', '10000', False), ('100', '1', False), ('1', '100', False), ('0.01', '1', False),
    ('12', '1/2', False), ('1/2', '12', False), ('204', '240', False), ('0', '-0', True),
    # --- fractions and decimals: exact
    (r'\frac{1}{2}', '0.5', True), ('0.5', r'\frac{1}{2}', True), (r'\frac12', r'\frac{1}{2}', True),
    (r'\dfrac{3}{4}', r'\frac{3}{4}', True), (r'\tfrac34', '0.75', True), ('3/4', '0.75', True),
    ('0.75', r'\frac 34', True), ('.75', '0.75', True), ('0.33', r'\frac{1}{3}', False),
    (r'\frac{1}{3}', '0.33', False), ('0.333', r'\frac13', False), ('0.3333333333', '1/3', True), ('0.333333333', '1/3', False),
    (r'\frac{2}{4}', r'\frac{1}{2}', True), (r'\frac{9}{19}', r'\frac9{19}', True),
    (r'\frac{270}{7}', r'\frac{270}7\text{ degrees}', True), ('38.57', r'\frac{270}7', False),
    (r'-\frac{3}{8}', '-0.375', True), (r'\frac{-3}{8}', r'-\frac{3}{8}', True),
    (r'\frac{3}{-8}', r'-\frac{3}{8}', True), (r'\frac{3}{8}', r'-\frac{3}{8}', False),
    ('.0000672', '6.72e-5', True), ('0.0000672', '.0000672', True), ('0.15', '.15', True),
    ('0.154', '0.15', False), ('0.15', '0.154', False), ('1.25', r'\frac{5}{4}', True),
    (r'137\frac{1}{2}', r'137 \frac{1}{2}', True), ('137.5', r'137 \frac{1}{2}', True),
    (r'\frac{275}{2}', r'137 \frac{1}{2}', True), ('1.8', r'1\frac{4}{5}', True),
    (r'\frac{9}{5}', r'1\frac{4}{5}', True), (r'\frac{4}{5}', r'1\frac{4}{5}', False),
    (r'\frac{1}{-1997}', r'\frac{-1}{1997}', True), (r'\frac{17}{50}', r'\dfrac{17}{50}', True),
    ('-1/3', '-1./3', True), ('-0.333', '-1./3', False), ('-1.5', '-3./2', True),
    # --- scientific notation (Minerva golds are rounded values)
    ('4.5e33', '4.5e33', True), (r'4.5 \times 10^{33}', '4.5e33', True),
    (r'4.5\cdot10^{33}', '4.5e33', True), ('4.46e33', '4.5e33', True), ('4.6e33', '4.5e33', False),
    ('4.5e32', '4.5e33', False), ('45e32', '4.5e33', True), ('4.5', '4.5e33', False),
    ('3e8', '3e8', True), (r'3 \times 10^8', '3e8', True), ('300000000', '3e8', True),
    ('2.78e-6', '2.7778e-6', True), ('2.7e-6', '2.7778e-6', False), ('3e-6', '2.7778e-6', False),
    ('1e-5', '1e-5', True), ('0.00001', '1e-5', True), (r'10^{-5}', '1e-5', True),
    ('7.353e14', '7.353e14', True), ('7.35e14', '7.353e14', True), ('7.3e14', '7.353e14', False),
    ('1.4903e4', '1.4903e4', True), ('14903', '1.4903e4', True), ('14900', '1.4903e4', False),
    # --- percent
    (r'75\%', '75', True), ('75', r'75\%', True), ('0.75', r'75\%', True), (r'\frac34', r'75\%', True),
    (r'75\%', '0.75', False), (r'75\%', r'\frac34', False), ('75 percent', r'75\%', True),
    ('4.2%', '4.2', True), ('0.042', '4.2', False), (r'12.5\%', '12.5', True),
    ('100', r'1\%', False), ('1', r'100\%', True), ('1', '100', False),
    # --- roots, pi, expressions
    (r'\sqrt{2}', r'\sqrt2', True), (r'2\sqrt{5}', r'\sqrt{20}', True), (r'\sqrt{20}', r'2 \sqrt{5}', True),
    (r'11\sqrt{2}', r'11\sqrt2', True), (r'\frac{\sqrt{3}}{3}', r'\frac{1}{\sqrt{3}}', True),
    (r'\frac{\sqrt{3}}{3}', r'\frac{\sqrt{3}}{2}', False), ('1.414', r'\sqrt{2}', False),
    ('1.41421356237', r'\sqrt{2}', False), (r'12\pi', r'12 \pi', True), (r'\pi \cdot 12', r'12\pi', True),
    ('37.699', r'12\pi', False), ('3.14', r'\pi', False), ('3.1416', r'\pi', False),
    (r'\frac{20000}{\pi}', r'\frac{20000}{\pi}', True), (r'20000\pi^{-1}', r'\frac{20000}{\pi}', True),
    (r'2\pi+18', r'18+2\pi', True), (r'18+\pi', r'18+2\pi', False), (r'1+2\sqrt{3}', r'2\sqrt3+1', True),
    (r'3\sqrt{13}', r'\sqrt{117}', True), (r'\sqrt{117}', r'3\sqrt{12}', False),
    (r'\frac{3\sqrt{3}}{4}', r'\frac{3}{4}\sqrt{3}', True), (r'5\sqrt[3]{4}', r'5 \sqrt[3]{4}', True),
    (r'\sqrt[3]{500}', r'5 \sqrt[3]{4}', True), ('2^{10}', '1024', True), ('2^10', '1024', True),
    ('2^{1009}', '2^{1009}', True), ('2^{1008}', '2^{1009}', False), (r'2^{-2 / 3}', r'\frac{1}{\sqrt[3]{4}}', True),
    (r'\frac{100!}{2^{50}}', r'\frac{100!}{2^{50}}', True), (r'\binom{6}{2}', '15', True), ('5!', '120', True),
    (r'\frac{\log 2}{\log 2-\log 3}', r'\frac{\ln 2}{\ln 2-\ln 3}', True), (r'\log_{10} 100', '2', True),
    (r'\pi^2/8', r'\frac{\pi^2}{8}', True), (r'|-3|', '3', True), (r'\lfloor 3.7 \rfloor', '3', True),
    (r'\left( 3, \frac{\pi}{2} \right)', r'(3,\frac{\pi}{2})', True), ('(3, 1.5708)', r'(3,\frac{\pi}{2})', False),
    # --- complex numbers
    ('-2+7i', '-2 + 7i', True), ('7i-2', '-2 + 7i', True), ('-2-7i', '-2 + 7i', False),
    ('1-12i', '1 - 12i', True), ('6-5i', '6 - 5i', True), (r'1+\sqrt{3} i', r'1+\sqrt{3}i', True),
    (r'i^2', '-1', True), (r'\ln 2 + i\pi / 3', r'\ln 2+\frac{\pi i}{3}', True),
    # --- unicode
    ('\u22125', '-5', True), ('\u2212\u00bd', r'-\frac{1}{2}', True), ('\u00bd', '0.5', True),
    ('\u221a2', r'\sqrt{2}', True), ('\u221a12', r'2\sqrt{3}', True), ('2\u221a3', r'2\sqrt{3}', True),
    ('\u03c0', r'\pi', True), ('2\u03c0', r'2\pi', True), ('\u03c0/2', r'\frac{\pi}{2}', True),
    ('x\u00b2+1', 'x^2+1', True), ('10\u207b\u00b3', '0.001', True), ('90\u00b0', r'90^\circ', True),
    ('\uff14\uff12', '42', True), ('3\u00d74', '12', True), ('5\u00b73', '15', True),
    ('\u2212\u221a3', r'-\sqrt{3}', True), ('\u221e', r'\infty', True), ('3\u00bd', '3.5', True),
    # --- degrees, units, currency, text
    (r'120^\circ', '120', True), (r'120^{\circ}', r'120^\circ', True), ('120', r'120^\circ', True),
    ('121', r'120^\circ', False), (r'30 \text{ degrees}', r'30^\circ', True), ('30 degrees', '30', True),
    (r'15 \text{ cm}^2', r'15\mbox{ cm}^2', True), ('15', r'15\mbox{ cm}^2', True),
    (r'864 \text{ square inches}', r'864 \mbox{ inches}^2', True), ('5.4', r'5.4 \text{ cents}', True),
    (r'5.4\text{ cents}', '5.4', True), ('18 dollars', '18', True), (r'\$18.90', '18.90', True),
    ('18.9', r'\$18.90', True), ('$18.90', r'\$18.90', True), (r'\$32,\!348', '32348', True),
    ('32348 dollars', r'\$32,\!348', True), ('1.6 cm', '1.6', True), (r'1.6 \mathrm{~cm}', '1.6', True),
    (r'300 \mathrm{~km} / \mathrm{s}', '300', True), ('100 parsecs', '100', True), ('566 m', '566', False),
    (r'566 \mathrm{~m}', '566', True), (r'\text{Evelyn}', 'Evelyn', True), ('evelyn', r'\text{Evelyn}', True),
    (r'\text{Navin}', r'\text{Evelyn}', False), ('East', r'\text{east}', True), (r'\text{even}', 'odd', False),
    (r'\textbf{ellipse}', r'\text{ellipse}', True), ('circle', r'\text{ellipse}', False),
    # --- number words
    ('five', '5', True), ('Twelve', '12', True), ('twenty-five', '25', True), ('seven', '8', False),
    ('zero', '0', True), ('ninety', '90', True),
    # --- multiple choice letters
    ('B', r'\text{(B)}', True), ('(B)', r'\text{(B)}', True), (r'\textbf{(B)}', r'\text{(B)}', True),
    ('b', r'\text{(B)}', True), ('(C)', r'\text{(B)}', False), ('(B) 42', r'\text{(B)}', True),
    (r'\text{(E)}', 'E', True), ('D', r'\text{(E)}', False), ('42', r'\text{(B)}', False),
    # --- "x = 5" prefixes, equations
    ('x=5', '5', True), ('5', 'x=5', True), ('k = 1', '1', True), ('x_1 = 2', '2', True),
    (r'y = -2x', r'y = -2x', True), ('-2x', 'y = -2x', True), ('y=2x', 'y = -2x', False),
    ('y=3+2x', 'y = 2x + 3', True), ('2x+3', 'y = 2x + 3', True), (r'f(x)=2 x', '2x', True),
    (r'f(n) = 2 n+1007', '2n+1007', True), (r'm_{\max }=n^{2}-n-1', 'n^2-n-1', True),
    ('-5x+7y-11z-4=0', '5x - 7y + 11z + 4 = 0', True), ('10x-14y+22z+8=0', '5x - 7y + 11z + 4 = 0', True),
    ('5x-7y+11z=-4', '5x - 7y + 11z + 4 = 0', True), ('5x-7y+11z-4=0', '5x - 7y + 11z + 4 = 0', False),
    ('x = 2 + 3 = 5', '5', True), (r'x \approx 3.5', '3.5', True), ('x^2+y^2=1', 'y^2+x^2=1', True),
    # --- polynomials and expressions in variables
    ('(a+5)(b+2)', 'ab+2a+5b+10', True), ('(a+5)(b+2)', '(a+2)(b+5)', False), ('2k+2', '2(k+1)', True),
    ('2k', '2n', False), ('3R^2', '3R^{2}', True), ('3r^2', '3R^2', False), ('x^3+3x-6', '3x+x^3-6', True),
    ('x^3+3x-6', 'x^3+3x+6', False), ('8n^2 + 4n + 1', '1+4n+8n^{2}', True), ('5r^5', '5 r^5', True),
    (r'\frac{n(n+1)(2 n+1)}{6}', r'\frac{2n^3+3n^2+n}{6}', True), (r'\frac{n}{2}', '0.5n', True),
    ('p - q', '-q+p', True), ('q - p', 'p - q', False), (r'\cot x', r'\frac{\cos x}{\sin x}', True),
    (r'\cot x', r'\tan x', False), (r'\lfloor n/2\rfloor', r'\left\lfloor\frac{n}{2}\right\rfloor', True),
    (r'\lfloor n/2\rfloor', r'\lceil n/2\rceil', False), (r'e^{t} / 3', r'\frac{e^t}{3}', True),
    (r'2 \cos (\pi t+\pi / 3)', r'2\cos(\pi t + \frac{\pi}{3})', True), (r'x^5 - x^4 + x^3 - x^2 + x - 1', '(x-1)(x^4+x^2+1)', True),
    (r'\sin^2 x + \cos^2 x', '1', False), (r'\sqrt{x}', 'x^{1/2}', True), ('6r^2-4r-24', '2(3r^2-2r-12)', True),
    (r'\frac{11+9a}{20}', r'\frac{11}{20}+\frac{9a}{20}', True), ('-13x+3', '3-13x', True),
    # --- tuples, intervals, sets, lists
    ('(1,2)', '(1,2)', True), ('(1,2)', '[1,2]', False), ('[1,2]', '(1,2)', False), ('(2,1)', '(1,2)', False),
    ('(1, 2)', r'\left( 1, 2 \right)', True), (r'\left( \frac{3}{2}, -13 \right)', '(1.5,-13)', True),
    ('(3,4]', '(3,4]', True), ('(3,4)', '(3,4]', False), ('[3,4]', '(3,4]', False),
    (r'(-\infty, 0]', r'(-\infty,0]', True), (r'(-\infty, 0)', r'(-\infty,0]', False),
    (r'(2,\infty)', r'(2, \infty)', True), (r'[2,\infty)', r'(2, \infty)', False),
    (r'(-\infty,2)\cup(3,\infty)', r'(-\infty, 2) \cup (3, \infty)', True),
    (r'(3,\infty)\cup(-\infty,2)', r'(-\infty, 2) \cup (3, \infty)', True),
    (r'(-\infty,2]\cup(3,\infty)', r'(-\infty, 2) \cup (3, \infty)', False),
    (r'\left(\frac{3}{5},\frac{8}{3}\right]', r'(0.6, \frac83]', True), (r'x \in [-2,7]', '[-2,7]', True),
    ('[-2,7]', r'x \in [-2,7]', True), ('(-2,7)', r'x \in [-2,7]', False),
    (r'\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]', r'[\frac{\pi^2}{8},\frac{5\pi^2}{4}]', True),
    ('1,-2', '-2,1', True), ('-2, 1', '1,-2', True), ('1,-2', '1,2', False), ('1', '1,-2', False),
    ('1,-2,3', '1,-2', False), ('3, 5, 7', '7,5,3', True), ('3, 5, and 7', '3, 5, 7', True),
    ('3 or 4', '3', False), ('3 or 4', '4', False), ('3 and 4', '3', False), ('3 or 4', '3, 4', True),
    (r'3 \text{ or } 4', '3', False), (r'x=3 \text{ or } x=-3', '3,-3', True),
    (r'\{1,2\}', '1,2', True), (r'\{2,1\}', r'\{1,2\}', True), (r'\{1,2\}', r'\{1,3\}', False),
    (r'\{1+\sqrt{5},1-\sqrt{5},-2\}', r'\{1\pm\sqrt{5},-2\}', True), (r'1\pm\sqrt{5},-2', r'\{1\pm\sqrt{5},-2\}', True),
    (r'1+\sqrt{5},-2', r'\{1\pm\sqrt{5},-2\}', False), (r'3 \pm 2 \sqrt{2}', r'3+2\sqrt2, 3-2\sqrt2', True),
    (r'1 \pm \sqrt{19}', r'1 + \sqrt{19}', False), ('(1,-16,-4,43)', '(1, -16, -4, 43)', True),
    ('(1,-16,-4,42)', '(1,-16,-4,43)', False), ('(6,31,-1)', '(6, 31, -1)', True),
    ('(1,1),(3,2)', '(3,2),(1,1)', True), ('(1,1),(2,3)', '(1,1), (3,2)', False),
    ('(1,8,19),(2,7,13),(4,5,7)', '(1,8,19), (2,7,13), (4,5,7)', True), ('(1,8,19),(2,7,13)', '(1,8,19), (2,7,13), (4,5,7)', False),
    (r'(-\infty, 0) \cup\{1\}', r'(-\infty, 0) \cup\{1\}.', True), ('69,84', '69, 84', True),
    ('84,69', '69,84', True), (r'\frac{1}{3},-2,5', r'5, -2, \frac13', True),
    # --- vectors and matrices
    (r'\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}', r'\begin{pmatrix} -\frac13 \\ \frac23 \\ \frac53 \end{pmatrix}', True),
    (r'\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}', r'\begin{pmatrix} 1/3 \\ 2/3 \\ 5/3 \end{pmatrix}', False),
    (r'\begin{bmatrix} -18 \\ -49 \\ 96 \end{bmatrix}', r'\begin{pmatrix} -18 \\ -49 \\ 96 \end{pmatrix}', True),
    ('(-18,-49,96)', r'\begin{pmatrix} -18 \\ -49 \\ 96 \end{pmatrix}', True),
    (r'\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}', r'\begin{pmatrix}-1&0\\0&-1\end{pmatrix}', True),
    (r'\begin{pmatrix} -1 & 0 \\ 0 & 1 \end{pmatrix}', r'\begin{pmatrix}-1&0\\0&-1\end{pmatrix}', False),
    # --- base subscripts, misc
    ('204_5', '204_5', True), ('204', '204_5', True), ('54', '204_5', False), ('4210_{5}', '4210_5', True),
    (r'\infty', r'\infty', True), (r'-\infty', r'\infty', False), ('k\\geq 2', r'k \geqslant 2', True),
    ('204_6', '204_5', False), ('4343_7', '4343_6', False), (r'(2,+\infty)', r'(2,\infty)', True),
    # arithmetic in another base is not read in base 10 (17_9 + 5_9 is 23_9, not 22_9)
    ('17_9+5_9', '22_9', False), (r'1\cdot 17_9+5_9', '22_9', False), (r'2 \cdot 10_2', '20_2', False),
    ('-40_9', '-40_9', True), ('1_{10}+2_{10}', '3', True),
    (r'x=\pm 2', '2,-2', True), (r'x=\pm 2', '2', False), ('(x,y)=(1,2)', '(1,2)', True),
    (r'5\,\text{m}', '5', True), (r'\varnothing', r'\emptyset', True), (r'\frac{1}{2}x', 'x/2', True),
    (r'\left\{1,2\right\}', r'\{2,1\}', True), (r'\frac{\sqrt{2}}{\sqrt{8}}', '0.5', True),
    (r'\frac{d!}{2k(d-k)!}', r'\frac{d !}{2 k(d-k) !}', True), ('2, -\\log_{10}250', r'2,-\log _{10} 250', True),
    (r'\hbar \omega(v+\frac12)', r'\hbar \omega(v+1 / 2)', True), (r'\frac{1}{s+a}', r'\frac{1}{a+s}', True),
    ('f(x)=a x+b, where b is an integer', 'f(x)=a x+b, where b is an integer, and a is odd', False),
]

# (response, gold, expected): compared with score.
RESPONSES = [
    ('We compute 6*7.\nSo the answer is $\\boxed{42}$.', '42', 1.0),
    ('Long reasoning ' * 200 + 'Therefore $\\boxed{\\frac{3}{4}}$.', '0.75', 1.0),
    ('First guess \\boxed{5}. Then I noticed a mistake.\nSo the final answer is \\boxed{6}.', '6', 1.0),
    ('First guess \\boxed{5}. Then I noticed a mistake.\nSo the final answer is \\boxed{6}.', '5', 0.0),
    ('\\boxed{\\frac{\\sqrt{3}}{2}}', '\\frac{\\sqrt3}{2}', 1.0),
    ('the area is \\fbox{12}', '12', 1.0),
    ('the answer is \\boxed 7 apples', '7', 1.0),
    ('Janet has 16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18', '18', 1.0),
    ('#### 1,080', '1080', 1.0),
    ('The answer is 42.', '42', 1.0),
    ('The answer is 42. Let me double check: 6*7=42.', '42', 1.0),
    ('Answer: (B)', '\\text{(B)}', 1.0),
    ('**Final Answer:** 3/4', '0.75', 1.0),
    ('The final answer is $\\frac{1}{2}$.', '0.5', 1.0),
    ('The answer is 3 or 4.', '3', 0.0),
    ('So $x = \\boxed{3}$ or $x = \\boxed{4}$.', '3', 0.0),
    ('So $x = \\boxed{3}$ or $x = \\boxed{4}$.', '4', 0.0),
    ('So $x = \\boxed{3}$ or $x = \\boxed{4}$.', '3, 4', 1.0),
    ('The solutions are $\\boxed{2}$ and $\\boxed{-3}$.', '-3, 2', 1.0),
    ('Hence $\\boxed{5}$.\n\n**Final Answer**\n$\\boxed{5}$', '5', 1.0),
    ('$\\boxed{15\\frac{39}{40}}$, or $\\boxed{\\frac{639}{40}}$ inches.', '\\frac{639}{40}', 1.0),
    ('', '0', 0.0),
    ('\\boxed{}', '0', 0.0),
    ('so the answer is \\boxed{3} and then \\boxed{4', '3', 1.0),
    ('\\boxed{\\boxed{7}}', '7', 1.0),
    ('The answer is \\boxed{x=5}.', '5', 1.0),
    ('The answer is \\boxed{10\\%}.', '10', 1.0),
    ('The probability is \\boxed{0.1}.', '10\\%', 1.0),
    ('Thus the value is $\\boxed{4.46 \\times 10^{33}}$ erg/s.', '4.5e33', 1.0),
    ('Thus $\\boxed{\\text{(C)}}$', '\\text{(B)}', 0.0),
    ('... = 9901. \\boxed{9901}', '9901', 1.0),
    ('The answer is $\\boxed{-\\frac{\\pi}{6}}$', '-\\frac{\\pi}{6}', 1.0),
    ('I think the answer is 100.', '1', 0.0),
    ('\\boxed{1.0001}', '1', 0.0),
    ('\\boxed{[1,2]}', '(1,2)', 0.0),
    ('\\(\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}\\)', '\\left( 3, \\frac{\\pi}{2} \\right)', 1.0),
]


def test_table_is_large_and_mixed():
    total = len(EQUIV) + len(RESPONSES)
    assert total >= 250
    assert sum(e for _, _, e in EQUIV) > 50 and sum(not e for _, _, e in EQUIV) > 50


@pytest.mark.parametrize('pred,gold,expected', EQUIV)
def test_equivalence_table(pred, gold, expected):
    assert V.is_equivalent(pred, gold) is expected
    # The same prediction inside a typical response must score the same.
    assert V.score('Reasoning...\nSo the answer is $\\boxed{%s}$.' % pred, gold) == float(expected)


@pytest.mark.parametrize('response,gold,expected', RESPONSES)
def test_response_table(response, gold, expected):
    assert V.score(response, gold) == expected


TEMPLATES = ['The answer is %s.', 'The answer is $%s$.', 'So %s is the answer.', '$%s$', 'We obtain $%s$.',
             'Final Answer: The final answer is $%s$. I hope it is correct.', 'Therefore \\[ %s \\]',
             'Hence \\boxed{%s} is the answer.', 'Answer: %s', 'Thus we get \\( %s \\).']


def test_equivalence_table_in_response_templates():
    # every prediction of EQUIV written the ways responses write answers, read by the fallback
    bad = [(t, p, g) for p, g, e in EQUIV for t in TEMPLATES
           if V.score(t % p, g, fallback=True) != float(e)]
    bad += [(p, g) for p, g, e in EQUIV if V.is_bare(p) and V.score(p, g, fallback=True) != float(e)]
    assert not bad, bad


def test_case_table():
    # one test for the whole table (it is large): every mismatch is listed
    bad = [(k, source, response[-60:], gold, expected) for k, (response, gold, expected, source)
           in enumerate(CASES) if V.score(response, gold, fallback=True) != float(expected)]
    assert not bad, bad


def test_case_table_has_near_misses_for_its_rules():
    assert len(CASES) >= 300
    assert sum(not e for _, _, e, _ in CASES) >= 100
    assert {s for _, _, _, s in CASES} == {'mv', 'qwen', 'verl', 'model', 'gold', 'safety'}
    assert all(not e for _, _, e, s in CASES if s == 'safety')


def test_strict_mode_needs_a_box_or_a_marker():
    for response in ('$\\frac27$', 'so it is 7', '$t \\geq 4$', 'Thus $x = 3$.'):
        assert V.extract_answer(response) is None
        assert V.extract_answer(response, fallback=True) is not None
    assert V.extract_answer('$\\frac{2}{7}$', fallback=True) == '$\\frac{2}{7}$'
    assert V.extract_answer('so we get $t \\geq 4$ here', fallback=True) == 't \\geq 4'
    assert V.extract_answer('It costs 30 dollars.', fallback=True) == '30'


def test_extraction():
    assert V.extract_answer('x \\boxed{\\frac{1}{\\sqrt{2}}} y') == '\\frac{1}{\\sqrt{2}}'
    assert V.extract_answer('no answer') is None
    assert V.extract_answer(None) is None
    assert V.extract_answer('The total is 1,234 dollars, or 17 pears') is None
    assert V.extract_answer('The total is 5, then 1,234 pears', fallback=True) == '1,234'
    assert V.extract_answer('went down to -12.5 degrees', fallback=True) == '-12.5'
    assert V.extract_answer('a ratio of 3/4', fallback=True) == '3/4'
    assert V.score('we get 17 apples', '17') == 0.0
    assert V.score('No final answer here, just 17 apples.', '17') == 0.0
    assert V.score('No final answer here, just 17 apples.', '17', fallback=True) == 1.0
    assert V.score('we get 17 apples', '17', fallback=True) == 1.0
    assert V.extract_answer('\\boxed{1} and \\boxed{2}') == '1, 2'


def test_numeric_gold_field():
    assert V.score('\\boxed{27}', 27.0) == 1.0  # AMC stores 27.0


# Answer formats of real RL runs. Each case restates a kind of answer seen in other
# projects' grader tests, verifier issue threads or model outputs (the kind's source is
# named above its rows); the cases themselves are ours.
PLAIN_TEXT = [
    # Qwen2.5-Math's and DeepScaleR's graders read answers written without LaTeX
    ('sqrt(3)/3', '\\frac{\\sqrt{3}}{3}', True), ('3*sqrt(2)', '3\\sqrt2', True),
    ('pi/2', '\\frac{\\pi}{2}', True), ('-2*pi', '-2\\pi', True), ('2pi', '2\\pi', True),
    ('pi/2', '\\frac{\\pi}{3}', False), ('sqrt(3)/2', '\\frac{\\sqrt{3}}{3}', False),
    ('2^6 3^5 5^4', '2^6 \\cdot 3^5 \\cdot 5^4', True), ('2^6 3^5 5^4', '2^6 \\cdot 3^5 \\cdot 5^3', False),
    # scientific notation and mixed numbers (Math-Verify's mixed-number tests, Minerva golds)
    ('6.022e23', '6.022 \\times 10^{23}', True), ('6.02e23', '6.022 \\times 10^{23}', False),
    ('1 1/2', '\\frac{3}{2}', True), ('1 1/2', '1.5', True), ('2 3/4', '\\frac{11}{4}', True),
    ('-1 1/2', '-\\frac{3}{2}', True), ('1 1/2', '\\frac{1}{2}', False),
    # times of day in word problems (GSM8K-style golds)
    ('08:34 P.M.', '20:34', True), ('8:34 pm', '20:34', True), ('12:05 a.m.', '00:05', True),
    ('8:34 AM', '20:34', False), ('7:30', '07:30', True),
    # number words written as two words, units glued to the number, a quantity in brackets
    ('forty two', '42', True), ('Forty Two', '42', True), ('forty two', '24', False),
    ('10weeks', '10', True), ('10weeks', '10 weeks', True), ('[45 degrees]', '45^\\circ', True),
    ('[45 degrees]', '46', False),
]

UNITS = [
    # both sides carry a unit: it must agree, or convert exactly (verifier issue threads:
    # a prediction in miles rewarded against a gold in km)
    ('384,400 miles', '384,400 km', False), ('384,400 km', '384,400 \\text{ km}', True),
    ('5 cm', '50 mm', True), ('5 cm', '5 m', False), ('2 hours', '120 minutes', True),
    ('2 hours', '2 minutes', False), ('5\\text{ m}', '500 cm', True), ('3 kg', '3000 grams', True),
    ('60 km/h', '60 \\text{ km}/\\text{h}', True), ('60 km/h', '60 miles/h', False),
    ('4 \\text{ cm}^2', '400 mm^2', True), ('4 \\text{ cm}^2', '40 mm^2', False),
    ('30 degrees', '30 radians', False), ('2 years', '24 months', True),
    # a unit on one side only keeps the number's reading
    ('384,400', '384,400 km', True), ('384,400 miles', '384,400', True), ('5 apples', '5 pears', True),
]

EXACT = [
    # no float decides equality where an exact or symbolic comparison exists
    ('1', '2^{1/2^{1000}}', False), ('2^{1/2^{1000}}', '1', False), ('1', '2^{10^{-12}}', False),
    ('1', '\\sqrt{1+10^{-20}}', False), ('5', '\\sqrt{25+10^{-20}}', False),
    ('2', '\\sqrt{2}^2', True), ('\\frac12', '\\sin(\\pi/6)', True), ('3', '\\log_2 8', True),
]


@pytest.mark.parametrize('pred, gold, expected', PLAIN_TEXT + UNITS + EXACT)
def test_real_run_formats(pred, gold, expected):
    assert V.is_equivalent(pred, gold) is expected
    assert V.score('So the final answer is \\boxed{%s}.' % pred, gold) == float(expected)


def test_r1_answer_tags():
    # DeepSeek-R1 / Open-R1 style: reasoning in <think>, the answer in <answer>
    assert V.score('<think>3 + 4 is 7, times 6 is 41?</think><answer>42</answer>', '42') == 1.0
    assert V.score('<think>it is 42</think>\n<answer>41</answer>', '42') == 0.0
    assert V.score('<answer>The answer is \\frac{1}{2}</answer>', '0.5') == 1.0
    assert V.score('<answer>$\\frac{1}{2}$</answer>', '\\frac12') == 1.0
    assert V.score('<answer>\\boxed{5}</answer>', '5') == 1.0
    # in training (strict) the tag must hold an answer, not a whole working to mine for numbers
    assert V.score('<answer>I tried 3, then 7, then 42</answer>', '42') == 0.0
    assert V.score('<answer>I tried 3, then 7, then 42</answer>', '42', fallback=True) == 1.0
    assert V.score('<answer></answer> \\boxed{42}', '42') == 1.0  # an empty tag is no answer
    assert V.score('<answer>41</answer> Wait, that is wrong: \\boxed{42}', '42') == 1.0
    assert V.score('<answer>42', '42') == 0.0  # truncated: no closing tag, no answer


def test_chinese_responses():
    # Qwen models answering in Chinese: "答案" (answer) is a marker; a sentence is no bare answer
    assert V.score('所以答案是 5。', '5') == 1.0
    assert V.score('所以答案是 5。', '6') == 0.0
    assert V.score('答案: C', 'C') == 1.0 and V.score('答案：C', 'C') == 1.0
    assert V.score('因此，最终答案是 $\\frac{1}{2}$', '\\frac12') == 1.0
    assert V.score('解：x=3，所以答案为 3', '3') == 1.0
    assert V.extract_answer('我们得到结果为十二', fallback=True) != '我们得到结果为十二'


def test_new_formats_keep_number_only_strict():
    # the number-only reading still refuses an unevaluated expression
    assert not V.is_equivalent('sqrt(4)', '2', number_only=True)
    assert not V.is_equivalent('2^6 3^5', str(2 ** 6 * 3 ** 5), number_only=True)
    assert V.is_equivalent('1 1/2', '1.5', number_only=True)
    assert V.is_equivalent('forty two', '42', number_only=True)


def test_a_hedge_or_bound_after_a_number_is_not_a_unit():
    # words after a number are dropped as a unit ("3 \\text{ cm}"), but never words that hedge,
    # bound or add a second answer: each of these would otherwise be read as "3"
    for response in ('\\boxed{3 \\text{ or 4}}', '\\boxed{3 \\textbf{ or 4}}', '\\boxed{3 \\text{ or more}}',
                     '\\boxed{3 \\text{ or less}}', '\\boxed{3 \\text{ at most}}', '\\boxed{3 \\text{ maybe}}',
                     '\\boxed{3 \\mathrm{~or~more}}', '\\boxed{3 \\text{ cm or more}}', '\\boxed{3 \\text{cm} \\text{ or more}}',
                     '\\boxed{3 \\text{ apples or more}}', '\\boxed{3 \\text{ or higher}}', '\\boxed{3 \\text{ minimum}}',
                     '\\boxed{3 maybe}', '\\boxed{3 at most}', 'The answer is 3 at most.', 'The answer is $3$ or more.',
                     'Answer: 3 apples, maybe'):
        assert V.score(response, '3') == 0.0, response
        assert V.score(response, '3', number_only=True) == 0.0, response
    for response in ('\\boxed{3 \\text{ cm}}', '\\boxed{3 \\text{ min}}', '\\boxed{3 \\text{ square units}}',
                     '\\boxed{3 \\text{ miles per hour}}', '\\boxed{3\\text{ m}^2}', 'The answer is 3 apples.',
                     'Final Answer: Tom finished the race 3 minutes later.'):
        assert V.score(response, '3', number_only=True) == 1.0, response


def test_an_approximation_that_disagrees_is_not_a_second_answer():
    # "exact \\approx approx" states one answer in two forms, and either may match the gold; when
    # the approximation neither rounds nor truncates the exact value, it would be a second answer:
    # only the exact form counts
    for response, gold in (('\\boxed{3 \\approx 4}', '4'), ('\\boxed{4 \\approx 3}', '3'),
                           ('\\boxed{x = 3 \\approx 4}', '4'), ('\\boxed{\\frac23 \\approx 0.9}', '0.9'),
                           ('\\boxed{3 \\approx 3.5}', '3.5'), ('\\boxed{-\\frac23 \\approx 0.67}', '0.67')):
        assert V.score(response, gold) == 0.0, response
    for response, gold in (('\\boxed{3 \\approx 4}', '3'), ('\\boxed{\\frac13 \\approx 0.33}', '0.33'),
                           ('\\boxed{\\frac23 \\approx 0.67}', '0.67'), ('\\boxed{\\frac23 \\approx 0.66}', '0.66'),
                           ('\\boxed{\\frac23 \\approx 0.66}', '\\frac23'), ('\\boxed{x = \\sqrt2 \\approx 1.414}', '1.414'),
                           ('\\boxed{-\\frac23 \\approx -0.67}', '-0.67')):
        assert V.score(response, gold) == 1.0, response


def test_an_answer_copied_from_the_question_earns_nothing():
    # (question, gold, copies of the question's math that equal the gold, worked-out answers)
    cases = [
        ('Compute $\\dbinom{31}{28}$.', '4495', ['\\dbinom{31}{28}', '\\binom{31}{28}', '\\dbinom {31} {28}.'], ['4495']),
        ('What is the value of $513^2 - 487^2$?', '26000', ['513^2-487^2', 'x = 513^2 - 487^2'], ['26000', 'x = 26000']),
        ('Simplify $\\sqrt{242}$.', '11\\sqrt2', ['\\sqrt{242}', '\\sqrt{ 242 }'], ['11\\sqrt{2}', '11 \\sqrt 2']),
        ('Express $0.\\overline{7}$ as a common fraction.', '\\frac79', ['0.\\overline{7}'], ['\\frac{7}{9}', '\\dfrac79']),
        ('Express $\\frac{3}{20}$ as a decimal.', '0.15', ['\\frac{3}{20}', '\\dfrac{3}{20}', '\\frac3{20}'], ['0.15', '.15']),
        ('Factor $ab+5b+2a+10$.', '(a+5)(b+2)', ['ab+5b+2a+10', 'ab + 5b + 2a + 10'], ['(b+2)(a+5)']),
        ('If $x = \\frac{3}{\\sqrt{27}}$, rationalise $x$.', '\\frac{\\sqrt{3}}{3}', ['\\frac{3}{\\sqrt{27}}'],
         ['\\frac{\\sqrt3}{3}', '\\frac{1}{\\sqrt{3}}']),
    ]
    for question, gold, copies, worked in cases:
        for answer in copies:
            response = 'So \\boxed{%s}' % answer
            assert V.score(response, gold) == 1.0, (answer, 'equals the gold')  # the verifier alone pays it
            assert V.score(response, gold, question=question) == 0.0, answer
            assert V.score(response, gold, fallback=True, question=question) == 0.0, answer
        for answer in worked:
            assert V.score('So \\boxed{%s}' % answer, gold, question=question) == 1.0, answer
    # a copy dressed up is still a copy: wrapped, padded with a no-op, named, its terms turned
    dressed = [
        ('Simplify $\\sqrt{242}$.', '11\\sqrt2', ['(\\sqrt{242})', '1 \\cdot \\sqrt{242}', '\\sqrt{242}+0',
                                                  '\\frac{\\sqrt{242}}{1}', '\\sqrt{242} = x', 'x = (\\sqrt{242})']),
        ('Compute $\\dbinom{31}{28}$.', '4495', ['\\binom{31}{28} \\cdot 1', '\\frac{2\\binom{31}{28}}{2}']),
        ('Factor $ab+5b+2a+10$.', '(a+5)(b+2)', ['10+2a+5b+ab', '(ab+2a)+(5b+10)']),
        ('Compute $\\log_264$.', '6', ['\\log_2 64', '\\log_{2}{64}']),
        ('What is $441+2(21)(19)+361$?', '1600', ['361+441+2(19)(21)', '441+2(21)(19)+361 = x']),
        # a function rewritten keeps the numbers: still the question's
        ('Simplify $\\sqrt{242}$.', '11\\sqrt2', ['242^{1/2}', '(242)^{0.5}']),
        ('Compute $\\dbinom{31}{28}$.', '4495', ['\\frac{31!}{28!\\,3!}']),
        ('Compute $\\log_2 4$.', '2', ['\\log_2 4', '\\frac{\\ln 4}{\\ln 2}']),
        # a piece with fewer numbers than the gold: the gold's own are not the copy's
        ('Expand $(x+1)^2$.', 'x^2+2x+1', ['(x+1)^2', '(1+x)^2']),
        # the last side is the answer compared with the gold: a side before it hides nothing
        ('Simplify $\\sqrt{242}$.', '11\\sqrt2', ['2 = \\sqrt{242}', 'y = 5 = \\sqrt{242}', '11\\sqrt2 = \\sqrt{242}']),
    ]
    for question, gold, copies in dressed:
        for answer in copies:
            assert V.score('\\boxed{%s}' % answer, gold) == 1.0, (answer, 'equals the gold')
            assert V.score('\\boxed{%s}' % answer, gold, question=question) == 0.0, answer
    # work shown before the result is not a copy; a part of the question that is not the answer
    # may stay in it (x+1 of $g(x) = x+1$ in 2(x+1))
    assert V.score('\\boxed{\\binom{31}{28} = 4495}', '4495', question='Compute $\\dbinom{31}{28}$.') == 1.0
    assert V.score('\\boxed{\\sqrt{242} = 11\\sqrt2}', '11\\sqrt2', question='Simplify $\\sqrt{242}$.') == 1.0
    for answer in ('x^2+2x+1', '1+2x+x^2'):  # the gold's own numbers and letters, in any order
        assert V.score('\\boxed{%s}' % answer, 'x^2+2x+1', question='Expand $(x+1)^2$.') == 1.0
    for answer in ('2', 'x = 2', '\\log_2 4 = 2'):
        assert V.score('\\boxed{%s}' % answer, '2', question='Compute $\\log_2 4$.') == 1.0
    assert V.score('\\boxed{2(x+1)}', '2x+2', question='Find $f(g(x))$ if $f(x) = 2x$ and $g(x) = x+1$.') == 1.0
    # the gold among the question's options may be copied from there
    assert V.score('\\boxed{\\frac{1}{2}}', '\\frac12', question='Which is larger, $\\frac{1}{2}$ or $\\frac13$?') == 1.0
    assert V.score('\\boxed{5}', '5', question='Is $x = 5$ or $x = 6$ the root of $x - 5 = 0$?') == 1.0
    # a question with no math, or none given, changes nothing
    assert V.score('\\boxed{72}', '72', question='How many clips did she sell in all?') == 1.0


HOSTILE = [
    '10^10^10', '10^{10^{10}}', '2^{2^{2^{2^{2^{2}}}}}', '9!!!!', '1e999999999',
    '\\frac{' * 1000, '\\frac{1}{' * 1000 + '2' + '}' * 1000, '(' * 1000 + '1' + ')' * 1000,
    '\\sqrt{' * 1000 + '2' + '}' * 1000, '{' * 5000, '}' * 5000, '}{' * 3000, '\\boxed{' * 3000,
    '1+' * 5000 + '1', '-' * 10000 + '1', 'x^' * 3000 + 'x', '2' * 5000, '9' * 999,
    'a\x00b\x00', '\x00' * 1000, '\ud800\udfff\udc00', 'abc\udcff\udcfe', '\\' * 1000,
    '\\text{' * 2000, '$' * 1000, ',' * 5000, '1,' * 3000, '(1,' * 500 + ')' * 500,
    '\\begin{pmatrix}' + '1&' * 2000 + '\\end{pmatrix}', 'x_{' * 1000, "x'" * 1000,
    '\\sqrt[' * 500, '\\left(' * 1000, 'e^{e^{e^{e^{e^{e^{e^{e^{10}}}}}}}}', '\\exp(\\exp(\\exp(100)))',
    '0^{-1}', '1/0', '\\log 0', '\\binom{10^{9}}{5}', '(10^{300})!', '10^{-10^{10}}',
    'x' * 100000, 'The answer is ' * 50000, '\\boxed{' + 'x' * 1_000_000 + '}',
    ('a' * 1_000_000) + '\\boxed{42}', '\\fbox', '\\boxed', '####', '\u200b\ufeff\u202e42',
]
# Inputs aimed at the extraction, relation, matrix and decimal rules.
HOSTILE += [
    '$' * 20000 + '1', '$1' * 10000, '\\(' * 5000, '\\[' * 5000 + '\\]', 'Answer ' * 10000,
    'Answer $' * 5000, 'is the answer ' * 5000, 'Final Answer: ' * 5000 + '3', '<|' * 5000,
    '<|im_start|>' * 3000, '\\\\frac' * 5000, '\\\\' * 20000, '0.\\overline{' * 1000,
    '0.' + '1' * 900 + '\\overline{3}', '1.\\overline{' + '9' * 900 + '}', 'x < ' * 2000 + '1',
    '1 \\le ' * 500 + 'x', '|x| \\le ' * 300, '\\begin{pmatrix}1\\end{pmatrix}' * 200,
    ('\\begin{pmatrix}' + '&'.join(['9' * 50] * 8) + '\\end{pmatrix}') * 8,
    '\\left[\\begin{array}{cc}' * 300, 'm=1,n=2;' * 1000, 'PQ=' * 2000 + '1',
    '\\boxed{1} and ' * 3000, '\\boxed{1} for part (a) and \\boxed{2}' * 500, '1,000,' * 2000,
    '0.1428571428571428571428571428571428571428', '9' * 30 + '.' + '3' * 30, '\\binom{x}{' * 500,
    '\\binom{x}{50}' * 30, '(x+1)!' * 100, '7 \\text{ thousand}' * 300, '1-4j' * 500,
    '\\mathbb{R}' * 1000, 'all real numbers ' * 2000, '1' + '\\approx 1' * 2000,
]
# Inputs aimed at the answer tags, plain-text forms, units and exactness guards.
HOSTILE += [
    '2^{1/2^{100000}}', '(1+10^{-300})^{10^{300}}', '\\sqrt{' * 50 + '1+10^{-20}' + '}' * 50,
    '<answer>' * 5000, '<answer>' + '1' * 40000 + '</answer>', '</answer>' * 5000 + '<answer>',
    'pi' * 5000, 'pi ' * 3000, 'sqrt(' * 2000, '2^6 ' * 2000, '1 1/' + '9' * 5000,
    '\u7b54\u6848\u662f' * 5000 + '5', '\u7b54\u6848\uff1a' * 5000, '08:34 P.M.' * 100,
    '10weeks' * 1000, '[45 degrees' * 1000 + ']', '\\text{ km}' * 500, '5 ' + 'km/' * 300,
]
# Just under the 1,000-character cap, where the full normaliser and parser run.
HOSTILE += [(u * 990)[:990 - len(end)] + end for end in ('', '1', '}' * 200) for u in (
    '\\frac{', '\\frac{1}{', '(', '\\sqrt{', '\\sqrt', 'x_{', "x'", '\\text{', '\\text{ cm}',
    '2^', 'x^', '1+', '(1,', '\\{1,', '1,', '\\left(', '\\lfloor ', '|', '\\sin ', 'e^{', '10^{',
    '9!', '\\binom{9}{', '\\pm', '\\cup(1,2)', ' and ', 'x=', '137\\frac{1}{2}', '\u221a', '\u00bd',
    '\u00b2', 'a', 'ab', '\\alpha', '1.5e3', '\\begin{pmatrix}', '&', '\\\\', '\\$', '\u00b0')]


@pytest.mark.parametrize('text', HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_return_bools(text):
    for gold in ('42', '1', text[:2000]):
        assert V.score(text, gold) in (0.0, 1.0)
        assert V.score(text, gold, fallback=True) in (0.0, 1.0)
        assert V.score('\\boxed{%s}' % text, gold) in (0.0, 1.0)
        assert isinstance(V.is_equivalent(text, gold), bool)
        assert isinstance(V.is_equivalent(gold, text), bool)
        assert V.score('\\boxed{%s}' % text, gold, question=text) in (0.0, 1.0)
    assert V.score('\\boxed{42}', '42', question=text) == 1.0  # the gold's own form is never a copy
    answer = V.extract_answer(text, fallback=True)
    assert answer is None or isinstance(answer, str)


def test_bad_types_never_raise():
    for x in (None, 3, 2.5, float('nan'), b'42', ['42'], {'a': 1}, object()):
        assert V.score(x, '42') in (0.0, 1.0)
        assert V.score('\\boxed{42}', x) in (0.0, 1.0)
        assert isinstance(V.is_equivalent(x, x), bool)
        assert V.score('\\boxed{42}', '42', question=x) == 1.0
    assert V.score('\\boxed{42}', 42) == 1.0


def test_huge_powers_are_refused_not_computed():
    assert V.is_equivalent('10^10^10', '10^{10000000000}') is False
    assert V.is_equivalent('2^{2^{5}}', '4294967296') is True


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'datasets')
if not os.path.isdir(DATA):
    DATA = '/work/shared/datasets'


def _records():
    for path in sorted(glob.glob(os.path.join(DATA, '*.jsonl'))):
        with open(path, encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                yield os.path.basename(path), lineno, json.loads(line)


@pytest.mark.skipif(not glob.glob(os.path.join(DATA, '*.jsonl')), reason='no ../shared/datasets')
def test_dataset_case_table():
    cases = dataset_cases(DATA)
    assert len(cases) + len(CASES) + len(EQUIV) + len(RESPONSES) >= 1000
    bad = [(r[-60:], g, e) for r, g, e, _ in cases if V.score(r, g, fallback=True) != float(e)]
    assert not bad, bad[:20]


@pytest.mark.skipif(not glob.glob(os.path.join(DATA, '*.jsonl')), reason='no ../shared/datasets')
def test_dataset_golds_match_themselves_and_their_boxed_form():
    bad, n = [], 0
    for name, lineno, record in _records():
        gold = tasks.gold_answer(record)
        n += 1
        if not V.is_equivalent(gold, gold):
            bad.append((name, lineno, gold, 'self'))
        if V.score('So the final answer is $\\boxed{%s}$.' % gold, gold) != 1.0:
            bad.append((name, lineno, gold, 'boxed'))
        question = record.get('problem') or record.get('question')
        if V.score('So the final answer is $\\boxed{%s}$.' % gold, gold, question=question) != 1.0:
            bad.append((name, lineno, gold, 'refused as copied from its question'))
        if name.startswith('math500') and V.score(record['solution'], gold, question=question) != 1.0:
            bad.append((name, lineno, gold, 'its solution refused as copied from its question'))
        if name.startswith('math500') and V.extract_answer(record['solution']) != record['answer']:
            bad.append((name, lineno, record['answer'], 'extract'))
        if not name.startswith('gsm8k') and '$' not in gold:  # the fallback takes a bare gold
            forms = ['$%s$', 'So we get $%s$.', 'Final Answer: The final answer is $%s$.']
            if name.startswith('math500'):
                forms += ['Hence \\boxed{%s} is the answer.', 'So %s is the answer.',
                          'The answer is %s.', 'The answer is \\boxed{%s}. This answer is checked: 2 = 2.']
            for form in forms + (['%s'] if V.is_bare(gold) else []):  # or its math span
                if V.score(form % gold, gold, fallback=True) != 1.0:
                    bad.append((name, lineno, gold, form))
    assert n > 0 and not bad, bad[:20]


def test_outside_table_is_sourced_and_never_falsely_accepted():
    # a measurement, not a target (bench/verifier.py reports the score); a false accept
    # there is still a loophole, so none is allowed
    from verifier_outside_cases import OUTSIDE_CASES
    assert len(OUTSIDE_CASES) >= 100
    assert all(len(c) == 4 and c[3] and isinstance(c[2], bool) for c in OUTSIDE_CASES)
    accepted = [c for c in OUTSIDE_CASES if not c[2] and V.score(c[0], c[1], fallback=True)]
    assert not accepted, accepted
