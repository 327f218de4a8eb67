"""The README's main command (train, sample 1,000 digits, evaluate) for today's preset and the preset before issue 13,
run side by side: wall time of each whole command, its accuracy and Frechet distance, and the ratio of the walls.

  python benchmarks/main_command.py                  # one run of each, before first
  python benchmarks/main_command.py --rounds=2       # alternating, medians

Each command runs in a fresh process and a fresh temporary workdir, exactly as the README runs it
(`python -m diffusion_jax.main --config=experiments/digits.py --workdir=...`); "before" adds the overrides of
`BEFORE_ISSUE_13` (every key issue 13 changed, at its old value). Quality comes from each run's own eval.json.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_ROUNDS = flags.DEFINE_integer("rounds", 1, "alternating rounds (before, now)")
_CONFIG = flags.DEFINE_string("config", "experiments/digits.py", "the main command's config")

# Before issue 13: cosine schedule, 1,500 steps at peak learning rate 2e-3, guided DDIM with 50 steps (guidance 3 on
# every step), Flax's attention.
BEFORE_ISSUE_13 = {"diffusion.schedule": "cosine", "train.num_steps": 1500, "train.batch_size": 64,
                   "train.learning_rate": 2e-3, "sample.sampler": "ddim", "sample.steps": 50,
                   "sample.guidance": 3.0, "sample.guidance_interval": (0.0, 1.0), "model.attention": "flax"}


def _run(overrides: dict) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "diffusion_jax.main", f"--config={_CONFIG.value}", f"--workdir={workdir}",
                   *(f"--config.{k}={v}" for k, v in overrides.items())]
        start = time.time()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.time() - start
        with open(os.path.join(workdir, "eval.json")) as f:
            result = json.load(f)
    return {"wall": wall, "accuracy": result["accuracy"], "fd": result["fd"],
            "per_class": result["per_class_accuracy"], "sampling": result.get("sampling_seconds", float("nan"))}


def main(argv):
    del argv
    runs = {"before issue 13": [], "now": []}
    for _ in range(_ROUNDS.value):
        runs["before issue 13"].append(_run(BEFORE_ISSUE_13))
        runs["now"].append(_run({}))
    print(f"| preset | wall (median of {_ROUNDS.value}) | sampling 1,000 | accuracy | lowest class | Frechet distance |")
    print("|---|---|---|---|---|---|")
    med = {}
    for name, rs in runs.items():
        med[name] = statistics.median(r["wall"] for r in rs)
        accuracy = ", ".join(f"{r['accuracy']:.1%}" for r in rs)
        fd = ", ".join(f"{r['fd']:.1f}" for r in rs)
        lowest = ", ".join("{1:.0%} ({0}s)".format(*min(r["per_class"].items(), key=lambda kv: kv[1])) for r in rs)
        sampling = statistics.median(r["sampling"] for r in rs)
        print(f"| {name} | {med[name]:.1f} s | {sampling:.1f} s | {accuracy} | {lowest} | {fd} |")
        for r in rs:
            print("    per class " + " ".join(f"{k}:{v:.2f}" for k, v in r["per_class"].items()))
    print(f"\nwall now / before issue 13 = {med['now']:.1f} / {med['before issue 13']:.1f} s = "
          f"{med['now'] / med['before issue 13']:.3f}")


if __name__ == "__main__":
    app.run(main)
