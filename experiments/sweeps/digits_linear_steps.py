"""Time to quality, continued (issue 13, item 3): the linear schedule (Ho et al. 2020), which learned fastest in the
schedule x target sweep (docs/sweeps.md), at fewer steps than the 1,500 of the preset before issue 13 (results:
docs/digits.md); its cosine counterparts are the points of experiments/sweeps/digits_recipe.py. Each point trains
from nothing, draws the main command's 1,000 digits (UniPC 10, guidance 3) and scores them.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_linear_steps.py --root=runs/sweeps/linear_steps
"""
from diffusion_jax.sweep import product, with_overrides

MODES = ("train",)
METRIC = "accuracy"
METRICS = ("accuracy", "fd")


def get_sweep():
    """(base config, points): the linear schedule at 1,000 and 750 steps of batch 64."""
    return "experiments/digits.py", with_overrides(product({"train.num_steps": [1000, 750]}),
                                                   {"diffusion.schedule": "linear"})
