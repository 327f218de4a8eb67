"""Ablation: the autoencoder's downsampling factor f = 4 (16x16x4 latents) vs f = 8 (8x8x4), through model.channels
(one more level halves the latent side), at equal training steps; scored by reconstruction PSNR on the 500 held-out
test scenes (eval.json, written by train.final_eval after training).

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/autoencoder_f.py --root=runs/sweeps/autoencoder_f

Two points of the default preset's 800 steps (results: docs/latent_scenes.md).
Rerun the same command to resume; --metric=psnr_heldout_pairs plots another key, --print_commands prints one
launch line per point.
"""
MODES = ("train",)  # train.final_eval (on by default) evaluates after training
METRIC = "psnr"
METRICS = ("psnr", "psnr_heldout_pairs", "psnr_seen_pairs", "psnr_overall", "scale")


def get_sweep():
    """(base config, points): f = 4 and f = 8."""
    return "experiments/autoencoder_scenes.py", [{"model.channels": (16, 32, 64)},
                                                 {"model.channels": (16, 32, 64, 64)}]
