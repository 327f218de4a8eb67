"""Time to quality, continued (issue 13, item 3): the linear schedule at 900 steps of batch 64 (the preset had 1,200),
by peak learning rate and warmup, and the chosen point again with another seed. Each point trains from nothing, draws
the main command's 1,000 digits (UniPC 10, guidance 3) and scores them (`seed` also seeds the evaluation classifier).

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_short_recipe.py --root=runs/sweeps/short_recipe

Results: docs/digits.md.
"""
from diffusion_jax.sweep import with_overrides, zip_axes

MODES = ("train",)  # train.final_sample (on by default) samples and evaluates after training
METRIC = "accuracy"
METRICS = ("accuracy", "fd")


def get_sweep():
    """(base config, points): peak learning rate 2e-3, 3e-3, 4e-3 with 100 warmup steps; 3e-3 with 30; 3e-3, seed 1."""
    return "experiments/digits.py", with_overrides(
        zip_axes({"train.learning_rate": [2e-3, 3e-3, 4e-3, 3e-3, 3e-3],
                  "train.warmup_steps": [100, 100, 100, 30, 100],
                  "seed": [0, 0, 0, 0, 1]}),
        {"diffusion.schedule": "linear", "train.num_steps": 900})
