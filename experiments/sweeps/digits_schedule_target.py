"""Ablation: noise schedule (linear vs cosine, Nichol & Dhariwal 2021) x prediction target (eps, Ho et al. 2020, vs v,
Salimans & Ho 2022) for the class-conditional digits, at equal training steps (so equal training compute; the table
shows the measured seconds of each point: training, then sampling 500 digits and evaluating them).

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_schedule_target.py --root=runs/sweeps/schedule_target

Four points of 600 training steps each (results: docs/sweeps.md). Rerun the same command to resume;
add --metric=fd to plot the Fréchet distance, --print_commands for one launch line per point.
"""
from diffusion_jax.sweep import product, with_overrides

MODES = ("train",)  # train.final_sample (on by default) samples and evaluates after training
METRIC = "accuracy"
METRICS = ("accuracy", "fd")


def get_sweep():
    """(base config, points): the 2 x 2 grid, every point trained 600 steps and scored on 50 digits per class."""
    points = product({"diffusion.schedule": ["linear", "cosine"], "diffusion.prediction": ["eps", "v"]})
    return "experiments/digits.py", with_overrides(points, {"train.num_steps": 600, "sample.num_per_class": 50})
