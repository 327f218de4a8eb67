"""Issue 27 item 9, the chosen recipe's margin: the main command at 1,300 and 1,400 linear steps (3e-3) with other
seeds (`seed` seeds the data order, the initialisation, the sampling noise and the evaluation classifier).

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_quality_seeds.py --root=runs/sweeps/quality_seeds
"""
from diffusion_jax.sweep import product, with_overrides

MODES = ("train",)
METRIC = "accuracy"
METRICS = ("accuracy", "fd")


def get_sweep():
    """(base config, points): seeds 1 and 2 at 1,300 and 1,400 steps."""
    return "experiments/digits.py", with_overrides(product({"train.num_steps": [1300, 1400], "seed": [1, 2]}),
                                                   {"diffusion.schedule": "linear", "train.learning_rate": 3e-3,
                                                    "sample.guidance": 3.0, "sample.guidance_interval": (0.0, 1.0)})
