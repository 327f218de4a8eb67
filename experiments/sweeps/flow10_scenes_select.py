"""Issue 26, "at 10 steps the flow models reach at least the quality they reach at 50", on the scenes, step 1 of 2:
choose each flow transformer's 10-step sampler on a second sampling seed. Euler on SD3's shifted time grid (sampling
only: `diffusion.shift` at --mode=eval sets the grid, the models were trained unshifted) at shifts 1 to 6, and Heun
unshifted and at shift 3, at 10 steps each; guidance 5, the scene checker, `sample.seed` = SELECT_SEED instead of the
evaluation's seed (sample.seed = 1), so the choice cannot fit the figures it is judged by. Step 2,
`flow10_scenes.py`, reads the choice and measures it against 50 Euler steps on the evaluation seed.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes.py --root=runs/sweeps/backbones_scenes
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/flow10_scenes_select.py \
      --root=runs/sweeps/flow10_scenes_select
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/flow10_scenes.py --root=runs/sweeps/flow10_scenes

The U-Net's flow model is not in MODELS: at 10 steps it already reaches its 50-step figures by Heun and on the grid
shifted by 3 (`steps_scenes.py`, docs/backbones.md); add "unet+flow" to MODELS to choose its sampler the same way.
"""
import os

from diffusion_jax.sweep import require_trained
from diffusion_jax.sweep.points import load_module, point_names

MODES = ("eval",)
METRIC = "default_seen_all_accuracy"
METRICS = ("default_seen_all_accuracy", "default_heldout_all_accuracy", "default_seen_digit_accuracy",
           "default_heldout_digit_accuracy")
MODELS = ("mmdit+flow", "dit+flow")
SELECT_SEED = 2
# The 10-step candidates (sampler, shift), in the order a tie goes to: Euler (10 model calls) before Heun (19), the
# smaller shift first.
CANDIDATES = (("euler", 1.0), ("euler", 2.0), ("euler", 3.0), ("euler", 4.0), ("euler", 6.0), ("heun", 1.0),
              ("heun", 3.0))
TRAINED_ROOT = "runs/sweeps/backbones_scenes"  # relative to where the sweep is started, as the comparison's FROZEN
COMPARISON = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "backbones_scenes.py"))


def trained_models() -> dict:
    """{preset: the comparison's training overrides and workdir} of MODELS; FileNotFoundError naming the command
    when one is not trained."""
    _, training = COMPARISON.get_sweep()
    models = {}
    for overrides, name in zip(training, point_names(training)):
        if overrides["preset"] in MODELS:
            workdir = os.path.join(TRAINED_ROOT, name)
            require_trained(workdir, "python -m diffusion_jax.sweep --sweep=experiments/sweeps/backbones_scenes.py "
                                     f"--root={TRAINED_ROOT}", "the flow 10-step sweeps")
            models[overrides["preset"]] = (overrides, workdir)
    return models


def sampling_point(models: dict, preset: str, sampler: str, steps: int, shift: float, seed: int) -> dict:
    """One evaluation of the trained `preset` of `models` (`trained_models()`), guidance 5 only, by a flow sampler on
    a shifted grid."""
    overrides, workdir = models[preset]
    return {"preset": preset, "sample.sampler": sampler, "sample.steps": steps, "diffusion.shift": shift,
            "sample.seed": seed, "sample.checkpoint_workdir": workdir, "clip.workdir": overrides["clip.workdir"],
            "autoencoder.workdir": overrides["autoencoder.workdir"], "eval.guidance_scales": (),
            "train.final_eval": False}


def get_sweep():
    """(base config, points): every candidate at 10 steps for every model of MODELS, on the selection seed."""
    models = trained_models()
    return "experiments/txt2img_scenes.py", [sampling_point(models, preset, sampler, 10, shift, SELECT_SEED)
                                             for preset in MODELS for sampler, shift in CANDIDATES]
