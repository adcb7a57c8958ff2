"""Draw a training run's curves (RUN_DIR/metrics.jsonl) as one PNG; several runs to compare them.

    python tools/plot_run.py RUN_DIR                             # -> RUN_DIR/curves.png
    python tools/plot_run.py runs/grpo runs/a3po --out cmp.png   # one line per run

Panels, step on x: reward and accuracy (kept batch solid, every rollout drawn dashed); token
entropy, response length, boost share and clip fractions (all / positive / negative samples);
then held-out pass@k, one panel per benchmark (evaluation lines without a "benchmark" key, the
older format, are the benchmark "held-out"). A metric a run did not log is not drawn; a panel
with nothing to draw says "no data". NaN / null points (e.g. the entropy of positive samples in
a step that had none) are skipped.

With one run, colour tells the series apart. With several, colour is the run (named by its
folder) and line style the series (solid, dashed, dotted, dash-dot, in the order of each
panel's legend).

matplotlib is an optional extra (pip install -r requirements-plot.txt), imported only inside
main: the trainer runs without it. Errors (no metrics.jsonl, a line that is not JSON, no
matplotlib, an --out that cannot be written) print one line `plot_run: error: ...` and exit 2.
A last line without its newline is skipped, not an error: the trainer of a live run is
appending it.
"""

import argparse
import json
import math
import os
import sys

# The training panels: (title, y-axis label, scale, [(metrics.jsonl key, legend label), ...]).
# scale turns a fraction into percent. A key ending in _drawn is the same number over every
# rollout sampled in the step, not only the kept batch: drawn dashed when there is one run.
TRAIN_PANELS = [
    ("reward and accuracy", "mean over responses", 1,
     [("reward", "reward"), ("reward_drawn", "reward, drawn"),
      ("accuracy", "accuracy"), ("accuracy_drawn", "accuracy, drawn")]),
    ("token entropy (kept batch)", "nats per token", 1,
     [("entropy", "all"), ("entropy_pos", "positive samples"), ("entropy_neg", "negative samples")]),
    ("response length (kept batch)", "tokens", 1,
     [("length", "all"), ("length_pos", "positive samples"), ("length_neg", "negative samples")]),
    ("boosted tokens", "% of loss tokens", 100,
     [("boosted", "all"), ("boosted_pos", "of positive samples"), ("boosted_neg", "of negative samples")]),
    ("clipped tokens (last PPO epoch)", "% of loss tokens", 100,
     [("clipfrac_low", "low (A < 0, r < 1 - eps_low)"), ("clipfrac_high", "high (A > 0, r > 1 + eps_high)"),
      ("clipfrac_dual", "dual (A < 0, r > clip_c)")]),
]
OLD_BENCHMARK = "held-out"  # eval lines written before the "benchmark" key existed
LINE_STYLES = ["-", "--", ":", "-."]  # several runs: the series of a panel, in order
FEW_POINTS = 25  # a curve this short gets markers, so that a lone point still shows


class UserError(Exception):
    """A problem with the input (a file, a line): one line on stderr, exit 2."""


def read_run(run_dir: str) -> dict:
    """RUN_DIR/metrics.jsonl -> {"train": [records], "eval": {benchmark: [records]}}."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (is {run_dir} a run folder?)")
    with open(path, encoding="utf-8", errors="replace") as f:  # a bad byte fails as a bad line below
        lines = f.read().split("\n")
    train, evals = [], {}
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # no newline yet: the trainer is appending it right now
                continue
            raise UserError(f"{path}:{i}: not a JSON line")
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UserError(f"{path}:{i}: not a metrics record (a JSON object with an integer \"step\")")
        if record.get("split") == "train":
            train.append(record)
        elif record.get("split") == "eval":
            evals.setdefault(record.get("benchmark", OLD_BENCHMARK), []).append(record)
    return {"train": train, "eval": evals}


def points(records: list, key: str, scale: float = 1) -> tuple[list, list]:
    """The (steps, values) of one metric, leaving out the records without a finite number."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):  # None (JSON null) and NaN are gaps
            steps.append(r["step"])
            values.append(v * scale)
    return steps, values


def pass_keys(records: list) -> list:
    """The pass@k keys these eval records hold, by k (pass@1, pass@8, pass@16, ...)."""
    keys = {k for r in records for k in r if k.startswith("pass@") and k[5:].isdigit()}
    return sorted(keys, key=lambda k: int(k[5:]))


def run_names(run_dirs: list) -> list:
    """Each run's label: its folder name, or the path as given when two folders share a name."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in run_dirs]


def curves_of(records_per_run: list, series: list, scale: float = 1) -> list:
    """The lines of one panel: for each run (its records for this panel), each (key, label) of
    series that it logged. Each line is a dict: run and series (indices), colour (the series'
    quantity: a key and its _drawn twin share one), dashed (a _drawn key), label, steps, values."""
    quantities = list(dict.fromkeys(key.removesuffix("_drawn") for key, _ in series))
    lines = []
    for run_i, records in enumerate(records_per_run):
        for series_i, (key, label) in enumerate(series):
            steps, values = points(records, key, scale)
            if steps:
                lines.append(dict(run=run_i, series=series_i, colour=quantities.index(key.removesuffix("_drawn")),
                                  dashed=key.endswith("_drawn"), label=label, steps=steps, values=values))
    return lines


def draw_panel(ax, title: str, ylabel: str, lines: list, several: bool, markers: bool):
    """One panel. One run: colour = quantity, dashed = drawn. Several: colour = run, line style =
    series, and the legend shows the styles in grey. The panel's first quantity is drawn wider,
    underneath: a line equal to it (accuracy is the reward unless an overlong penalty is on)
    then still shows both."""
    width = lambda line: 3 if line["colour"] == 0 else 1.5
    for line in lines:
        if several:
            style = dict(color=f"C{line['run']}", linestyle=LINE_STYLES[line["series"] % len(LINE_STYLES)])
        else:
            style = dict(color=f"C{line['colour']}", linestyle="--" if line["dashed"] else "-", label=line["label"])
        ax.plot(line["steps"], line["values"], linewidth=width(line),
                marker="o" if markers or len(line["steps"]) <= FEW_POINTS else None, markersize=3, **style)
    if several:  # one empty grey line per series: the legend's entries
        legend = {line["series"]: line for line in lines}
        for series_i, line in sorted(legend.items()):
            ax.plot([], [], color="0.3", linestyle=LINE_STYLES[series_i % len(LINE_STYLES)], linewidth=width(line),
                    label=line["label"])
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not lines:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5", fontsize=14)
        return
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    ax.legend(fontsize="small")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="plot_run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw the curves of metrics.jsonl of one or more run folders as one PNG.",
        epilog="With several run folders each panel draws one line per run (colour = run, named by its\n"
               "folder; line style = series) and --out is required: the picture belongs to no one run.")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder (holds metrics.jsonl)")
    ap.add_argument("--out", metavar="FILE.png",
                    help="where to write the picture (default, one run: RUN_DIR/curves.png)")
    args = ap.parse_args(argv)
    if len(args.run_dirs) > 1 and not args.out:
        ap.error("several runs need --out FILE.png")
    if args.out and not args.out.lower().endswith(".png"):
        ap.error(f"--out {args.out}: the picture is a PNG, name it FILE.png")
    out = args.out or os.path.join(args.run_dirs[0], "curves.png")

    try:
        runs = [read_run(d) for d in args.run_dirs]
    except UserError as e:
        print(f"plot_run: error: {e}", file=sys.stderr)
        return 2
    try:  # only now: reading the runs, and --help, work without it
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        print("plot_run: error: matplotlib is not installed: pip install -r requirements-plot.txt", file=sys.stderr)
        return 2

    names, several = run_names(args.run_dirs), len(runs) > 1
    panels = []  # (title, y label, lines, markers) in grid order
    for title, ylabel, scale, series in TRAIN_PANELS:
        panels.append((title, ylabel, curves_of([run["train"] for run in runs], series, scale), False))
    benchmarks = list(dict.fromkeys(b for run in runs for b in run["eval"]))  # first seen first
    for bench in benchmarks or [OLD_BENCHMARK]:  # no evaluation at all: one panel that says so
        records_per_run = [run["eval"].get(bench, []) for run in runs]
        keys = pass_keys([r for records in records_per_run for r in records])
        # evaluations are few points: always markers
        panels.append((f"{bench}: pass@k", "unbiased pass@k", curves_of(records_per_run, [(k, k) for k in keys]), True))

    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, (title, ylabel, lines, markers) in zip(axes.flat, panels):
        draw_panel(ax, title, ylabel, lines, several, markers)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    steps = [max((r["step"] for r in run["train"]), default=0) for run in runs]
    if several:
        fig.legend([Line2D([], [], color=f"C{i}", linewidth=3) for i in range(len(runs))],
                   [f"{n} ({s} steps)" for n, s in zip(names, steps)], loc="upper right", ncol=len(runs))
        fig.suptitle(" vs ".join(names), x=0.02, ha="left")
    else:
        fig.suptitle(f"{names[0]}: {steps[0]} steps", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        # No date or version in the file: the same numbers give the same bytes.
        fig.savefig(out, dpi=80, metadata={"Software": None})
    except OSError as e:  # e.g. a folder we may not write to
        print(f"plot_run: error: {e.filename or out}: {e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        plt.close(fig)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
