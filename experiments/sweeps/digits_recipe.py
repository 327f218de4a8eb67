"""Time to quality (issue 13, item 3): how few training examples the digits preset needs for its quality, by steps and
batch size, each point training from nothing, drawing the main command's 1,000 digits (UniPC 10, guidance 3) and
scoring them like the README's main command.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_recipe.py --root=runs/sweeps/digits_recipe

The default before issue 13 was 1,500 steps of batch 64 (96,000 examples). Seconds are each point's wall-clock
(train + sample + evaluate, in one process); points that shared the CPU with other jobs are slower, so compare
speed with benchmarks/main_command.py, which times the presets side by side. Results: docs/digits.md.
"""
from diffusion_jax.sweep import zip_axes

MODES = ("train",)  # train.final_sample (on by default) samples and evaluates after training
METRIC = "accuracy"
METRICS = ("accuracy", "fd")


def get_sweep():
    """(base config, points): (steps, batch) pairs from 1,500 x 64 down to 750 x 32."""
    return "experiments/digits.py", zip_axes({"train.num_steps": [1500, 1000, 750, 1500, 1000],
                                              "train.batch_size": [64, 64, 64, 32, 32]})
