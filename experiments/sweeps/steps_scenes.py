"""Issue 26, sampling steps on the scenes: the comparison (`backbones_scenes.py`) samples every point with 10 steps of
its preset's sampler (UniPC for VP, Euler for flow). Does each model reach there the all correct it reaches at 50,
and do Heun at 10 steps (19 model calls), DPM-Solver++(2M) at 10 steps (10 calls, as Euler) or Euler on SD3's
shifted time grid (shift 3, more of the 10 steps at high noise; the models were trained unshifted) close a flow
model's gap? Each point evaluates a finished training point of the comparison, guidance 5 only, with the scene checker
(nothing is trained).

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes.py --root=runs/sweeps/backbones_scenes
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/steps_scenes.py --root=runs/sweeps/steps_scenes
"""
import os

from diffusion_jax.sweep import require_trained
from diffusion_jax.sweep.points import load_module, point_names

MODES = ("eval",)
METRIC = "default_seen_all_accuracy"
METRICS = ("default_seen_all_accuracy", "default_heldout_all_accuracy", "default_seen_digit_accuracy",
           "default_seen_relation_accuracy")
TRAINED_ROOT = "runs/sweeps/backbones_scenes"  # relative to where the sweep is started, as the comparison's FROZEN
COMPARISON = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "backbones_scenes.py"))


def get_sweep():
    """(base config, points): each model of the comparison at 50 steps of its preset's sampler; each flow model also
    by Heun, by DPM-Solver++(2M) and by Euler on a grid shifted by 3, at 10 steps."""
    points = []
    _, training = COMPARISON.get_sweep()
    for overrides, name in zip(training, point_names(training)):  # the comparison's points and their workdirs
        preset, workdir = overrides["preset"], os.path.join(TRAINED_ROOT, name)
        require_trained(workdir, "python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes.py "
                                 f"--root={TRAINED_ROOT}", "the scenes sampling steps sweep")
        flow = preset.endswith("+flow")
        shared = {"sample.checkpoint_workdir": workdir, "clip.workdir": overrides["clip.workdir"],
                  "autoencoder.workdir": overrides["autoencoder.workdir"], "eval.guidance_scales": (),
                  "train.final_eval": False}
        for sampler, num in (("euler", 50), ("heun", 10), ("dpmpp_2m", 10)) if flow else (("unipc", 50),):
            points.append({"preset": preset, "sample.sampler": sampler, "sample.steps": num, **shared})
        if flow:
            points.append({"preset": preset, "sample.sampler": "euler", "sample.steps": 10, **shared,
                           "diffusion.shift": 3.0})
    return "experiments/txt2img_scenes.py", points
