"""Issue 27 item 9, the 9s: guidance 3 on every step (the sampling the recipe sweeps used) against guidance 4.5 on
the less noisy half of the steps only (`sample.guidance_interval=(0, 0.5)`, today's preset), on three trained models
of the main command's recipe (seeds 0, 1 and 2), without retraining. Each point draws and scores the main command's
1,000 digits with the seed of the model it samples.

  python -m diffusion_jax.main --config=experiments/digits.py --workdir=runs/digits   # seed 0, once
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_quality_seeds.py --root=runs/sweeps/quality_seeds
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_guidance_interval.py --root=runs/sweeps/interval
"""
from diffusion_jax.sweep import require_trained

MODES = ("sample", "eval")
METRIC = "accuracy"
METRICS = ("accuracy", "fd")
# The trained model of each seed (relative to the directory the sweep is started from).
TRAINED = {0: "runs/digits", 1: "runs/sweeps/quality_seeds/train.num_steps=1300,seed=1",
           2: "runs/sweeps/quality_seeds/train.num_steps=1300,seed=2"}


def get_sweep():
    """(base config, points): seeds 0-2 x {guidance 3 on every step, guidance 4.5 on t <= T/2}."""
    for seed, workdir in TRAINED.items():
        require_trained(workdir, "the commands in this file's docstring", f"the guidance-interval sweep (seed {seed})")
    sampling = [{"sample.guidance": 3.0, "sample.guidance_interval": (0.0, 1.0)},
                {"sample.guidance": 4.5, "sample.guidance_interval": (0.0, 0.5)}]
    return "experiments/digits.py", [{"seed": seed, "sample.checkpoint_workdir": workdir, **s}
                                     for seed, workdir in TRAINED.items() for s in sampling]
