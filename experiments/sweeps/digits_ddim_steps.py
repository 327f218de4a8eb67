"""DDIM steps (Song et al. 2021) vs sample quality and sampling time, without retraining: every point draws 300
digits (30 per class, same seed) from the one model the README's main run trained in runs/digits, then evaluates them.

  python -m diffusion_jax.main --config=experiments/digits.py --workdir=runs/digits   # once, if not done yet
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_ddim_steps.py --root=runs/sweeps/ddim_steps

Sampling seconds are the wall-clock of each point's whole sampling call, its one XLA compile included; add
--metric=sampling_seconds (or accuracy) to plot another column of the table.
"""
from diffusion_jax.sweep import product, require_trained, with_overrides

MODES = ("sample", "eval")
METRIC = "fd"
METRICS = ("accuracy", "fd", "sampling_seconds", "images_per_second")
TRAINED_WORKDIR = "runs/digits"  # the README's main run (relative to the directory the sweep is started from)
README_COMMAND = f"python -m diffusion_jax.main --config=experiments/digits.py --workdir={TRAINED_WORKDIR}"


def get_sweep():
    """(base config, points): DDIM with 10, 20, 50, 100 and 250 steps, all sampling the trained model."""
    require_trained(TRAINED_WORKDIR, README_COMMAND, "the DDIM-steps sweep")
    points = product({"sample.steps": [10, 20, 50, 100, 250]})
    # 300 digits in one chunk of 300: no padding drawn beyond the digits counted in images/s.
    return "experiments/digits.py", with_overrides(points, {
        "sample.sampler": "ddim", "sample.checkpoint_workdir": TRAINED_WORKDIR, "sample.num_per_class": 30,
        "sample.batch_size": 300})
