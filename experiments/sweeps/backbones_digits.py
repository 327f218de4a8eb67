"""Issue 26, the digits half of the comparison: {U-Net, DiT, MMDiT} x {VP (v), rectified flow} at the main command's
training wall time (the U-Net preset's 1,300 steps), everything else the main command's (sampling: UniPC for VP,
Euler for flow, 10 steps; guidance 4.5 on the less noisy half); scored by accuracy and Frechet distance.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_digits.py --root=runs/sweeps/backbones_digits

Equal wall time: each variant's steps = 1,300 x the U-Net's step time / its own, from `python
benchmarks/backbones.py` on this 2-core CPU (2026-12-07, batch 64, 2 devices; s/step: unet 0.2035, flow 0.2048,
dit 0.2583, dit+flow 0.2523, mmdit 0.2533, mmdit+flow 0.2668). On labels the MMDiT has no text stream, so it is a
DiT of its own parameter names and initialisation: its rows are a second draw of the DiT's (docs/backbones.md).
"""
MODES = ("train",)  # train.final_sample: sample and evaluate after training
METRIC = "accuracy"
METRICS = ("accuracy", "fd")
STEPS = {"unet+vp": 1300, "unet+flow": 1291, "dit+vp": 1024, "dit+flow": 1048, "mmdit+vp": 1044, "mmdit+flow": 991}


def get_sweep():
    """(base config, points): one point a variant, at its equal-wall-time steps."""
    return "experiments/digits.py", [{"preset": v, "train.num_steps": n} for v, n in STEPS.items()]
