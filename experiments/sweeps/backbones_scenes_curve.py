"""Issue 26's plot, all correct against training wall time: every checkpoint that the comparison's training points
(experiments/sweeps/backbones_scenes.py: one a 1,000 steps and the last) kept, scored by the scene checker at the
preset's sampling and guidance 5 only. Each point is one `--mode=eval` reading a training point's U-Net at one step
(`sample.checkpoint_workdir`, `sample.checkpoint_step`): nothing is trained. Only variants whose training point has
finished are listed, so this can run (and be rerun: finished points are skipped) while the comparison goes on.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes.py --root=runs/sweeps/backbones_scenes
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes_curve.py \
      --root=runs/sweeps/backbones_scenes_curve
  python benchmarks/backbones_curve.py   # the plot: step x the variant's seconds a step -> docs/backbones_scenes_curve.png
"""
import json
import os

from diffusion_jax.sweep.points import load_module, point_names

MODES = ("eval",)
METRIC = "default_seen_all_accuracy"
METRICS = ("default_seen_all_accuracy", "default_heldout_all_accuracy", "default_seen_digit_accuracy",
           "default_seen_relation_accuracy")
TRAINING_ROOT = "runs/sweeps/backbones_scenes"  # relative to where the sweeps start, as the comparison's FROZEN


def comparison():
    """The comparison's sweep file as a module (its STEPS, SECONDS_PER_STEP, FROZEN and points)."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "backbones_scenes.py"))


def kept_steps(total: int, every: int = 1000) -> list:
    return list(range(every, total, every)) + [total]


def get_sweep():
    """(base config, points): (variant, kept step) for every variant whose training point finished."""
    source = comparison()
    spec, training = source.get_sweep()
    points = []
    for overrides, name in zip(training, point_names(training)):
        try:
            with open(os.path.join(TRAINING_ROOT, name, "sweep_done.json")) as f:
                if json.load(f).get("status") != "ok":
                    continue
        except (OSError, ValueError):
            continue
        for step in kept_steps(overrides["train.num_steps"]):
            points.append({"preset": overrides["preset"], "sample.checkpoint_step": step,
                           "sample.checkpoint_workdir": os.path.join(TRAINING_ROOT, name),
                           "clip.workdir": overrides["clip.workdir"],
                           "autoencoder.workdir": overrides["autoencoder.workdir"],
                           "eval.guidance_scales": (), "train.final_eval": False})
    if not points:
        raise FileNotFoundError(f"no training point of the comparison has finished in {TRAINING_ROOT}: run "
                                "experiments/sweeps/backbones_scenes.py first (see this file's docstring)")
    return spec, points
