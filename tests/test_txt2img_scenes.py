"""Latent diffusion on two-digit scenes, tiny presets: one call from nothing trains the autoencoder, CLIP and the
latent U-Net and evaluates; the Python API; prompts that are not two-object scenes; a U-Net is never used through
another autoencoder; pixel and latent space share one code path."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from diffusion_jax import api
from diffusion_jax.checkpoint import CheckpointMismatchError
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.trainers import txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/txt2img_scenes.py:tiny")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("t2i_scenes"))
    config = load_config(TINY)
    txt2img.train(config, workdir)
    return config, workdir


@pytest.fixture(scope="module")
def t2i(run):
    return api.TextToImage.load(run[1], TINY)


def test_one_call_from_nothing_trains_three_models_and_evaluates(run):
    config, workdir = run
    for sub in ("autoencoder", "clip", ""):
        assert os.path.isdir(os.path.join(workdir, sub, "checkpoints")), sub
    with open(os.path.join(workdir, txt2img.SPACE_FILE)) as f:
        space = json.load(f)
    with open(os.path.join(workdir, "autoencoder", "latent.json")) as f:
        latent = json.load(f)
    assert space["space"] == "latent" and space["latent_shape"] == latent["latent_shape"] == [16, 16, 4]
    assert space["scale"] == pytest.approx(latent["scale"])
    with open(os.path.join(workdir, "eval.json")) as f:
        result = json.load(f)
    assert space.pop("workdir") == "autoencoder"  # where the autoencoder lives, relative to the run (issue 27)
    assert result["space"] == space
    guidance = f"{config.sample.guidance:g}"  # the preset's default guidance is always evaluated
    scores = result["guidance"][guidance]
    for key in ("seen_all_accuracy", "heldout_all_accuracy", "seen_relation_accuracy", "heldout_color_accuracy"):
        assert 0.0 <= scores[key] <= 1.0
    assert result["checker_on_real_images"]["color_accuracy"] == 1.0
    assert os.path.exists(os.path.join(workdir, "samples", f"eval_guidance_{guidance}.png"))


def test_api_draws_scenes_and_embeds_texts(run, t2i):
    config, workdir = run
    images = t2i(["a red 3 left of a blue seven", "a green 1 above a cyan 2"], num_per_prompt=2, seed=0)
    assert images.dtype == np.uint8 and images.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(images, t2i(["a red 3 left of a blue seven", "a green 1 above a cyan 2"],
                                              num_per_prompt=2, seed=0))
    assert t2i.pipeline.task.clip_x0 is False  # latents spread past +-1: the sampler must not clip them
    emb = t2i.embed(["a red 3 left of a blue seven"])
    assert emb.shape == (1, config.clip.model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    assert t2i.embed_images(images).shape == (4, config.clip.model.embed_dim)
    with pytest.raises(ValueError, match="guidance"):
        t2i("a red 3 left of a blue seven", guidance=float("inf"))
    with pytest.raises(ConfigError, match="not_a_key"):
        api.TextToImage.load(workdir, TINY, {"sample.not_a_key": 1})


@pytest.mark.parametrize("prompt, message", [
    ("a red 3", "one object"),
    ("a red 3 left of a blue 7 above a green 1", "objects"),
    ("a red 3 near a blue 7", "unknown relation"),
    ("a red 3 left of a red 7", "both objects are red"),
])
def test_prompts_that_are_not_two_object_scenes_name_the_prompt(t2i, prompt, message):
    with pytest.raises(txt2img.PromptError, match=message) as info:
        t2i([prompt])
    assert prompt in str(info.value) and "\n" not in str(info.value)


def test_a_unet_of_another_autoencoder_is_refused_and_nothing_changes(run, tmp_path):
    config, workdir = run
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    path = os.path.join(copy, txt2img.SPACE_FILE)
    with open(path) as f:
        space = json.load(f)
    space["scale"] *= 2  # as if trained on another autoencoder's latents
    with open(path, "w") as f:
        json.dump(space, f)
    before = sorted(os.listdir(os.path.join(copy, "checkpoints")))
    config = load_config(TINY)
    with pytest.raises(CheckpointMismatchError, match="scale"):
        api.TextToImage.load(copy, config)
    config.train.num_steps += 10
    with pytest.raises(CheckpointMismatchError, match="another autoencoder"):
        txt2img.train(config, copy)
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == before
    with open(path) as f:
        assert json.load(f) == space


def test_pixel_space_is_the_same_code_path_on_pixels(run, tmp_path):
    config, workdir = run
    pixel = load_config(os.path.join(ROOT, "experiments/txt2img_scenes.py:tiny_pixel"))
    pixel.clip.workdir = os.path.join(workdir, "clip")  # reuse the trained CLIP: nothing is retrained
    pixel.train.num_steps = 4
    pixel.train.final_eval = False
    out = str(tmp_path / "pixel")
    txt2img.train(pixel, out)
    with open(os.path.join(out, txt2img.SPACE_FILE)) as f:
        assert json.load(f) == {"space": "pixel"}
    assert not os.path.exists(os.path.join(out, "autoencoder"))
    pixel_t2i = api.TextToImage.load(out, pixel)
    assert pixel_t2i.pipeline.task.clip_x0 is True and pixel_t2i.pipeline.codec is None
    assert pixel_t2i(["a red 3 left of a blue seven"]).shape == (1, 64, 64, 3)
    # The latent config cannot sample the pixel U-Net: the recorded space differs.
    latent = load_config(TINY)
    latent.autoencoder.workdir = os.path.join(workdir, "autoencoder")
    latent.clip.workdir = os.path.join(workdir, "clip")
    with pytest.raises(CheckpointMismatchError, match="pixel"):
        api.TextToImage.load(out, latent)


def test_bad_scene_configs_name_the_key():
    config = load_config(TINY)
    config.diffusion.space = "wavelet"
    with pytest.raises(ConfigError, match="diffusion.space"):
        txt2img.validate_config(config)
    config = load_config(TINY)
    config.clip.data.dataset = "captioned_digits"
    with pytest.raises(ConfigError, match="clip.data.dataset"):
        txt2img.validate_config(config)
    config = load_config(TINY)
    config.model.patch_size = 3  # 16x16 latents do not split into 3x3 patches
    with pytest.raises(ConfigError, match="patch_size"):
        txt2img.validate_config(config)


@pytest.mark.parametrize("preset", ["", "pixel"])
def test_autoencoder_and_generator_are_judged_by_one_checker(preset):
    """The scene checker's classifier is the same (steps, seed) wherever a preset trains it: the autoencoder's
    same-reading score and the U-Net's all-correct score, and their ceilings, come from one checker."""
    config = load_config(os.path.join(ROOT, "experiments/txt2img_scenes.py") + (f":{preset}" if preset else ""))
    alone = load_config(os.path.join(ROOT, "experiments/autoencoder_scenes.py"))
    assert config.eval.classifier_steps == config.autoencoder.eval.classifier_steps == alone.eval.classifier_steps
    assert config.seed == config.autoencoder.seed == alone.seed


def test_latent_unet_reads_the_autoencoders_checker_instead_of_training_a_copy(tmp_path):
    from diffusion_jax.evaluation import classifier as classifier_lib

    config, workdir = load_config(TINY), str(tmp_path)
    steps = config.eval.classifier_steps
    assert steps == config.autoencoder.eval.classifier_steps
    shared = os.path.join(workdir, "autoencoder", "classifier")
    trained = classifier_lib.load_or_train_on_source(shared, config.data, seed=config.seed, steps=steps)
    got = txt2img._classifier(config, workdir, os.path.join(workdir, "autoencoder"))
    assert not os.path.exists(os.path.join(workdir, "classifier"))
    for a, b in zip(jax.tree_util.tree_leaves(trained), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(a, b)
    config.eval.classifier_steps = steps + 1  # trained otherwise: the U-Net's workdir gets its own
    txt2img._classifier(config, workdir, os.path.join(workdir, "autoencoder"))
    assert os.path.exists(os.path.join(workdir, "classifier", classifier_lib.PARAMS_FILENAME))
