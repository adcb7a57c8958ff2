"""Curves of the polarity study (bench/polarity.py): one line per variant, a band for the seeds.

matplotlib is an optional extra (requirements-plot.txt), imported only here: the study itself,
and the trainer, run without it.
"""

import math

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# (split, metric, panel title): held-out numbers first, they are comparable across variants.
PANELS = [
    ("eval", "pass@1", "held-out pass@1"),
    ("eval", "pass@16", "held-out pass@16"),
    ("eval", "eval_length", "held-out response length (tokens)"),
    ("train", "accuracy", "training-batch accuracy"),
    ("train", "entropy", "token entropy (training batch)"),
    ("train", "length", "response length (training batch)"),
]


# The training-batch metrics split by the sign of the advantage (held-out length by correctness
# is in the length histogram).
POLARITY_PANELS = [
    ("train", "entropy_pos", "token entropy, positive samples"),
    ("train", "entropy_neg", "token entropy, negative samples"),
    ("train", "length_pos", "response length, positive samples"),
    ("train", "length_neg", "response length, negative samples"),
]


def curve(seed_runs: dict, split: str, metric: str):
    """{seed: run} -> steps, mean, std (std 0 where fewer than 2 seeds have a value)."""
    by_step = {}
    for run in seed_runs.values():
        for m in run[split]:
            v = m.get(metric)
            if v is not None and not math.isnan(v):
                by_step.setdefault(m["step"], []).append(v)
    steps = sorted(by_step)
    mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    std = [math.sqrt(sum((v - mu) ** 2 for v in by_step[s]) / (len(by_step[s]) - 1)) if len(by_step[s]) > 1 else 0.0
           for s, mu in zip(steps, mean)]
    return steps, mean, std


def plot_group(runs: dict, path: str, title: str, panels=None):
    """runs: {variant: {seed: {"train": [...], "eval": [...]}}} -> one PNG with the PANELS
    (2 x 3), or the given panels (2 x 2 for four)."""
    panels = panels or PANELS
    fig, axes = plt.subplots(2, len(panels) // 2, figsize=(5 * (len(panels) // 2), 8))
    for ax, (split, metric, panel_title) in zip(axes.flat, panels):
        for i, (variant, seed_runs) in enumerate(runs.items()):
            steps, mean, std = curve(seed_runs, split, metric)
            color = f"C{i}"
            ax.plot(steps, mean, color=color, label=variant, marker="o" if split == "eval" else None, markersize=3)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.15, linewidth=0)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"{title}: mean over seeds, band = ± one std")
    fig.tight_layout()
    # No date or version in the file: the same numbers give the same bytes.
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def plot_lengths(dists: dict, path: str, title: str, max_len: int):
    """dists: {name: (lengths, correct)} of held-out samples -> one histogram per name (rows
    of 4), correct and incorrect samples stacked, on a shared length axis."""
    cols = min(4, len(dists))
    rows = math.ceil(len(dists) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharex=True)
    bins = list(range(0, max_len + 9, 8))
    for ax, (name, (lengths, correct)) in zip(axes.flat, dists.items()):
        right = [n for n, c in zip(lengths, correct) if c]
        wrong = [n for n, c in zip(lengths, correct) if not c]
        ax.hist([right, wrong], bins=bins, stacked=True, color=["C2", "C3"], label=["correct", "wrong"])
        ax.set_title(f"{name}: pass@1 {100 * len(right) / max(1, len(lengths)):.0f}%", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dists):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("held-out response length (tokens)")
    axes.flat[0].legend()
    fig.suptitle(f"{title}: held-out samples of all seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
