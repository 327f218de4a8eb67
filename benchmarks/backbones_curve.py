"""Issue 26's plot: all correct (seen and held-out scenes) against training wall time for every backbone x objective,
from the finished points of experiments/sweeps/backbones_scenes_curve.py (each a kept checkpoint of the comparison,
scored at the preset's sampling). Wall time = step x the variant's measured seconds a step (the comparison's
SECONDS_PER_STEP, one side-by-side run), so every curve is on the clock the equal-wall-time budget was set by.

  python benchmarks/backbones_curve.py [--root=runs/sweeps/backbones_scenes_curve] [--out=docs/backbones_scenes_curve.png]

Prints the table (minutes, step, seen / held-out all correct) and writes the plot.
"""
import argparse
import json
import os
import sys

from diffusion_jax.sweep.points import load_module, load_sweep

SWEEP = "experiments/sweeps/backbones_scenes_curve.py"
COMPARISON = "experiments/sweeps/backbones_scenes.py"  # its SECONDS_PER_STEP: the wall-time axis


def curves(root: str) -> dict:
    """{variant: [(minutes, step, seen, held-out), ...]} from the curve sweep's finished points under `root`."""
    sweep = load_sweep(SWEEP)
    per_step = load_module(COMPARISON).SECONDS_PER_STEP
    out = {}
    for point in sweep.points:
        try:
            with open(os.path.join(root, point.name, "sweep_done.json")) as f:
                record = json.load(f)
        except OSError:
            continue
        if record.get("status") != "ok":
            continue
        variant, step = point.overrides["preset"], point.overrides["sample.checkpoint_step"]
        m = record["metrics"]
        out.setdefault(variant, []).append((step * per_step[variant] / 60, step, m["default_seen_all_accuracy"],
                                            m["default_heldout_all_accuracy"]))
    return {v: sorted(rows) for v, rows in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/sweeps/backbones_scenes_curve")
    parser.add_argument("--out", default="docs/backbones_scenes_curve.png")
    args = parser.parse_args()
    data = curves(args.root)
    if not data:
        sys.exit(f"no finished point in {args.root}: run {SWEEP} first (its docstring has the commands)")
    print("variant      minutes   step   seen all  held-out all")
    for variant, rows in data.items():
        for minutes, step, seen, heldout in rows:
            print(f"{variant:<11} {minutes:8.1f} {step:6d}   {seen:8.3f}  {heldout:12.3f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for variant, rows in data.items():
        for ax, column, title in ((axes[0], 2, "seen pairs"), (axes[1], 3, "held-out pairs")):
            ax.plot([r[0] for r in rows], [r[column] for r in rows], marker="o", label=variant)
            ax.set_title(f"all correct, {title}")
            ax.set_xlabel("training wall time (minutes, 2-core CPU)")
            ax.grid(alpha=0.3)
    axes[0].set_ylabel("scene checker: all correct")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
