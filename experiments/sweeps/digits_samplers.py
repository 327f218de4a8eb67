"""Samplers x steps vs sample quality and sampling time, without retraining (issue 13, item 2): DDIM,
DPM-Solver++(2M) and UniPC at 5, 10, 20 and 50 steps, each point drawing 300 digits (30 per class, same seed) from
the one model the README's main run trained in runs/digits, then evaluating them.

  python -m diffusion_jax.main --config=experiments/digits.py --workdir=runs/digits   # once, if not done yet
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_samplers.py --root=runs/sweeps/samplers

Sampling seconds are the wall-clock of each point's whole sampling call, its one XLA compile included.
"""
from diffusion_jax.sweep import product, require_trained, with_overrides

MODES = ("sample", "eval")
METRIC = "fd"
METRICS = ("accuracy", "fd", "sampling_seconds", "images_per_second")
TRAINED_WORKDIR = "runs/digits"  # the README's main run (relative to the directory the sweep is started from)
README_COMMAND = f"python -m diffusion_jax.main --config=experiments/digits.py --workdir={TRAINED_WORKDIR}"


def get_sweep():
    """(base config, points): every sampler at every step count, all sampling the trained model."""
    require_trained(TRAINED_WORKDIR, README_COMMAND, "the samplers sweep")
    points = product({"sample.sampler": ["ddim", "dpmpp_2m", "unipc"], "sample.steps": [5, 10, 20, 50]})
    return "experiments/digits.py", with_overrides(points, {
        "sample.checkpoint_workdir": TRAINED_WORKDIR, "sample.num_per_class": 30, "sample.batch_size": 300})
