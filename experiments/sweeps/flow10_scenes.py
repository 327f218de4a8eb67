"""Issue 26, "at 10 steps the flow models reach at least the quality they reach at 50", on the scenes, step 2 of 2:
each flow transformer by the 10-step sampler `flow10_scenes_select.py` chose for it on its selection seed, and by 50
Euler steps (the flow preset's sampler), both on the evaluation's sampling seed (sample.seed = 1, as the comparison).
The choice: the highest all correct averaged over the seen and held-out splits; a tie goes to the cheaper candidate.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/flow10_scenes_select.py \
      --root=runs/sweeps/flow10_scenes_select
  python -m diffusion_jax.sweep --sweep=experiments/sweeps/flow10_scenes.py --root=runs/sweeps/flow10_scenes
"""
import json
import os

from diffusion_jax.sweep import EVAL_FILE
from diffusion_jax.sweep.points import load_module, point_names

MODES = ("eval",)
METRIC = "default_seen_all_accuracy"
METRICS = ("default_seen_all_accuracy", "default_heldout_all_accuracy", "default_seen_digit_accuracy",
           "default_heldout_digit_accuracy")
SELECT_ROOT = "runs/sweeps/flow10_scenes_select"  # relative to where the sweep is started, as SELECT.TRAINED_ROOT
SELECT = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "flow10_scenes_select.py"))
EVAL_SEED = 1  # txt2img_scenes.py's sample.seed: the seed of the comparison's figures


def both_splits(result: dict) -> float:
    """All correct averaged over the seen and held-out prompts (each half of the evaluation set)."""
    return (result["default_seen_all_accuracy"] + result["default_heldout_all_accuracy"]) / 2


def chosen() -> dict:
    """{preset: (sampler, shift)}: each model's best candidate on the selection seed (the first of equals);
    FileNotFoundError naming the selection sweep's command while one of its points has no result."""
    _, points = SELECT.get_sweep()
    scores = {}
    for point, name in zip(points, point_names(points)):
        path = os.path.join(SELECT_ROOT, name, EVAL_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"the flow 10-step sweep reads the selection result {path}, which does not exist (looked in "
                f"{os.path.abspath(path)}); run the selection first:  python -m diffusion_jax.sweep "
                f"--sweep=experiments/sweeps/flow10_scenes_select.py --root={SELECT_ROOT}")
        with open(path) as f:
            result = json.load(f)
        candidate = (point["sample.sampler"], point["diffusion.shift"])
        scores.setdefault(point["preset"], []).append((both_splits(result), candidate))
    return {preset: max(found, key=lambda s: s[0])[1] for preset, found in scores.items()}  # max keeps the first


def get_sweep():
    """(base config, points): per model, 50 Euler steps and its chosen 10-step sampler, on the evaluation seed."""
    points, models = [], SELECT.trained_models()
    for preset, (sampler, shift) in chosen().items():
        points.append(SELECT.sampling_point(models, preset, "euler", 50, 1.0, EVAL_SEED))
        points.append(SELECT.sampling_point(models, preset, sampler, 10, shift, EVAL_SEED))
    return "experiments/txt2img_scenes.py", points
