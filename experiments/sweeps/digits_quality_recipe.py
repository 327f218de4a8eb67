"""Issue 27 item 9: the main command's recipe brought back to quality (>= 98.5 % overall, every class >= 95 %,
Frechet distance <= 36 by the project's classifier) within 0.8x the wall of the preset before issue 13. Each point
trains from nothing, draws the main command's 1,000 digits (UniPC 10, guidance 3 on every step, as the preset sampled then) and
scores them.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_quality_recipe.py --root=runs/sweeps/quality_recipe
"""
from diffusion_jax.sweep import with_overrides, zip_axes

MODES = ("train",)  # train.final_sample (on by default) samples and evaluates after training
METRIC = "accuracy"
METRICS = ("accuracy", "fd")


def get_sweep():
    """(base config, points): the linear schedule at 1,100 to 1,500 steps of batch 64, peak learning rate 2.5e-3 or
    3e-3 (900 steps at 3e-3 was the preset of issue 13)."""
    return "experiments/digits.py", with_overrides(
        zip_axes({"train.num_steps": [1200, 1300, 1100, 1200, 1400, 1500],
                  "train.learning_rate": [3e-3, 3e-3, 3e-3, 2.5e-3, 3e-3, 3e-3]}),
        {"diffusion.schedule": "linear", "sample.guidance": 3.0, "sample.guidance_interval": (0.0, 1.0)})
