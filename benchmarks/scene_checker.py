"""How the scene checker's digit classifier (its training steps and seed) moves the scene scores.

  python benchmarks/scene_checker.py --autoencoder=runs/ae_f4 --points=1500:0,1500:1,8000:0,8000:1

For each steps:seed point it trains the checker's classifier on the real training digits (as `--mode=eval` does,
cached in --cache/steps_seed) and prints its MNIST test accuracy, the checker's all-correct ceiling on the 500
held-out real scenes, and, with --autoencoder (a trained `experiments/autoencoder_scenes.py` workdir), the
fraction of that autoencoder's reconstructions the checker reads as their originals (the autoencoder's
"same reading"). The scene presets' choice of 8,000 steps comes from this table (docs/latent_scenes.md).
"""
import os

from absl import app, flags

from diffusion_jax.config import load_config
from diffusion_jax.data import mnist, scenes
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation import scenes as scene_checks
from diffusion_jax.trainers import autoencoder

_AUTOENCODER = flags.DEFINE_string("autoencoder", "", "a trained autoencoder workdir ('' = no same-reading column)")
_CONFIG = flags.DEFINE_string("config", "experiments/autoencoder_scenes.py", "the autoencoder's config")
_POINTS = flags.DEFINE_list("points", ["1500:0", "8000:0"], "classifier training steps:seed points")
_CACHE = flags.DEFINE_string("cache", "runs/scene_checker", "where the classifiers are trained and cached")


def main(argv):
    del argv
    config = load_config(_CONFIG.value)
    test = scenes.make_dataset("test", seed=config.seed + 1, **mnist.source_args(config.data))
    truth = (test["digits"], test["colors"], test["relation"], test["heldout"])
    recon = None
    if _AUTOENCODER.value:
        recon = autoencoder.reconstruct(autoencoder.load(config, _AUTOENCODER.value), test["image"])
    digits_x, digits_y = mnist.load_mnist(split="test", **mnist.source_args(config.data))
    print(f"{'steps':>6} {'seed':>4} {'MNIST test':>10} {'ceiling (all correct)':>22} {'same reading':>13}")
    for point in _POINTS.value:
        steps, seed = (int(v) for v in point.split(":"))
        params = classifier_lib.load_or_train_on_source(os.path.join(_CACHE.value, f"{steps}_{seed}"),
                                                        config.data, seed=seed, steps=steps)
        found = scene_checks.check_scenes(params, test["image"])
        ceiling = scene_checks.scene_scores(found, *truth)["all_accuracy"]
        same = "" if recon is None else \
            f"{scene_checks.same_reading(found, scene_checks.check_scenes(params, recon)).mean():.1%}"
        accuracy = classifier_lib.accuracy(params, mnist.to_model_images(digits_x), digits_y)
        print(f"{steps:>6} {seed:>4} {accuracy:>10.1%} {ceiling:>22.1%} {same:>13}", flush=True)


if __name__ == "__main__":
    app.run(main)
