"""Issue 26, flow sampling: does a flow model reach at 10 steps the quality it reaches at 50? Euler at 10 and 50
steps, Heun at 10 (19 model calls) and DPM-Solver++(2M) at 10 (10 calls), 1,000 digits each (the main command's
evaluation, same seed), drawn from the flow models that `backbones_digits.py` trained (U-Net, DiT, MMDiT), then
evaluated. Two more points a model move the guidance interval: the preset's, t <= T/2, is a far noisier half of the
path in VP's linear schedule (SNR = abar / (1 - abar) down to 0.085) than in flow's t <= 0.5 (SNR = ((1 - t) / t)^2
down to 1); (0, 0.774) guides flow down to the same SNR as VP's (0, 0.5), and (0, 1) guides every step.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_digits.py --root=runs/sweeps/backbones_digits
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/flow_steps_digits.py --root=runs/sweeps/flow_steps_digits

Sampling seconds are the wall-clock of each point's whole sampling call, its one XLA compile included.
"""
import os

from diffusion_jax.sweep import product, require_trained

MODES = ("sample", "eval")
METRIC = "fd"
METRICS = ("accuracy", "fd", "sampling_seconds")
TRAINED_ROOT = "runs/sweeps/backbones_digits"  # relative to the directory the sweep is started from
MODELS = {"unet+flow": "preset=unet+flow,train.num_steps=1291", "dit+flow": "preset=dit+flow,train.num_steps=1048",
          "mmdit+flow": "preset=mmdit+flow,train.num_steps=991"}


def get_sweep():
    """(base config, points): each flow model x (Euler 10, Euler 50, Heun 10, DPM-Solver++(2M) 10; Euler 10 guided down
    to VP's SNR, and at every step)."""
    points = []
    for preset, run in MODELS.items():
        workdir = os.path.join(TRAINED_ROOT, run)
        require_trained(workdir, f"python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_digits.py "
                                 f"--root={TRAINED_ROOT}", "the flow steps sweep")
        for p in product({"sample.sampler": ["euler"], "sample.steps": [10, 50]}) + [
                {"sample.sampler": "heun", "sample.steps": 10},
                {"sample.sampler": "dpmpp_2m", "sample.steps": 10},
                {"sample.sampler": "euler", "sample.steps": 10, "sample.guidance_interval": (0.0, 1.0)},
                {"sample.sampler": "euler", "sample.steps": 10, "sample.guidance_interval": (0.0, 0.774)}]:
            points.append({"preset": preset, **p, "sample.checkpoint_workdir": workdir})
    return "experiments/digits.py", points
