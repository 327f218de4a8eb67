"""Issue 27 item 9: is the 9s' shortfall the sampler's or the model's? Other samplers, more steps and other guidance
scales on the 1,200-step model of the quality-recipe sweep, without retraining (1,000 digits each, scored like the
main command).

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_quality_recipe.py --root=runs/sweeps/quality_recipe
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_quality_sampling.py --root=runs/sweeps/quality_sampling
"""
from diffusion_jax.sweep import require_trained, with_overrides, zip_axes

MODES = ("sample", "eval")
METRIC = "accuracy"
METRICS = ("accuracy", "fd")
TRAINED_WORKDIR = "runs/sweeps/quality_recipe/train.num_steps=1200,train.learning_rate=0.003"


def get_sweep():
    """(base config, points): UniPC 20, DPM-Solver++(2M) 20, DDIM 50 at guidance 3; UniPC 10 at guidance 2.5-4."""
    require_trained(TRAINED_WORKDIR, "the quality-recipe sweep in this file's docstring", "the quality-sampling sweep")
    points = zip_axes({"sample.sampler": ["unipc", "dpmpp_2m", "ddim", "unipc", "unipc", "unipc"],
                       "sample.steps": [20, 20, 50, 10, 10, 10],
                       "sample.guidance": [3.0, 3.0, 3.0, 4.0, 2.5, 3.5]})
    return "experiments/digits.py", with_overrides(points, {
        "sample.checkpoint_workdir": TRAINED_WORKDIR, "sample.guidance_interval": (0.0, 1.0),
        "diffusion.schedule": "linear", "train.num_steps": 1200, "train.learning_rate": 3e-3})
