"""Bad input found by issue 27's read: each is a one-line error naming the key, raised before any work.

Every case here gave a traceback at the first step, or was silently ignored, before issue 27.
"""
import json
import os

import jax
import numpy as np
import pytest

from diffusion_jax.checkpoint import CheckpointMismatchError
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.trainers import autoencoder, clip, digits, txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(name: str):
    return load_config(os.path.join(ROOT, f"experiments/{name}.py:tiny"))


def _set(config, key: str, value):
    *groups, last = key.split(".")
    node = config
    for g in groups:
        node = node[g]
    node[last] = value
    return config


# Every task's own config, and the nested CLIP and autoencoder configs a text-to-image run trains: (experiment, the
# group's key prefix, the task module that trains / validates it).
GROUPS = [("digits", "", digits), ("clip_digits", "", clip), ("autoencoder_scenes", "", autoencoder),
          ("txt2img_digits", "", txt2img), ("txt2img_digits", "clip.", txt2img),
          ("txt2img_scenes", "autoencoder.", txt2img)]
GROUP_IDS = [f"{experiment}-{prefix or 'own'}" for experiment, prefix, _ in GROUPS]


# 8 fake CPU devices (tests/conftest.py): a global batch of 12 cannot be split over them.
@pytest.mark.parametrize("experiment,prefix,task", GROUPS, ids=GROUP_IDS)
def test_a_batch_that_does_not_split_over_the_devices_is_named_before_any_work(tmp_path, experiment, prefix, task):
    assert jax.device_count() == 8
    key = prefix + "train.batch_size"
    config = _set(_tiny(experiment), key, 12)
    with pytest.raises(ConfigError, match=rf"^config\.{key}=12 cannot be split evenly over the 8 devices"):
        task.train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_a_typo_in_attention_resolutions_is_named_instead_of_dropping_attention():
    config = _tiny("digits")  # 32x32 digits on 4x4 patches, 2 levels: the U-Net runs at 8 and 4
    digits.validate_config(config)
    config.model.attention_resolutions = (4, 16)
    with pytest.raises(ConfigError, match=r"config\.model\.attention_resolutions=\(4, 16\): \[16\] is not the size "
                                          r"of a U-Net level; the levels run at \[8, 4\]"):
        digits.validate_config(config)
    config = _tiny("txt2img_scenes")  # latent space: the sizes are the latents' (16x16 on 2x2 patches: 8, 4)
    config.model.attention_resolutions = (16,)
    with pytest.raises(ConfigError, match=r"\[16\] is not the size of a U-Net level; the levels run at \[8, 4\] "
                                          r"\(the 16x16 input"):
        txt2img.validate_config(config)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "unipc"])
def test_eta_is_refused_by_the_samplers_that_ignore_it(sampler):
    config = _tiny("digits")
    config.sample.update(sampler="ddim", eta=0.5)
    digits.validate_config(config)
    config.sample.sampler = sampler
    with pytest.raises(ConfigError, match=rf"config\.sample\.eta=0\.5 is read by config\.sample\.sampler='ddim' only, "
                                          rf"but the sampler is '{sampler}'"):
        digits.validate_config(config)


@pytest.mark.parametrize("experiment,prefix,task", GROUPS, ids=GROUP_IDS)
def test_a_tfds_data_dir_without_the_tfds_source_is_named(experiment, prefix, task):
    key = prefix + "data.tfds_data_dir"
    config = _set(_tiny(experiment), key, "/data/tfds")
    with pytest.raises(ConfigError, match=rf"^config\.{key}='/data/tfds' is read by config\..*source='tfds' only"):
        task.validate_config(config)


def test_every_task_reads_its_tfds_data_dir(tmp_path):
    """Before issue 27 only the digits task passed `data.tfds_data_dir` on: CLIP looked in TFDS's default folder."""
    import tensorflow_datasets as tfds

    from tests.test_data import _write_prepared_metadata

    _write_prepared_metadata(tmp_path)
    config = _tiny("clip_digits")
    config.data.update(source="tfds", tfds_data_dir=str(tmp_path))
    clip.validate_config(config)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        data = clip.ClipTask(config, clip.build_tokenizer(config)).data("train")
        train_images, _ = autoencoder.mnist.load_mnist(split="train", **autoencoder.mnist.source_args(config.data))
    assert len(train_images) == 12 and len(data["image"]) == config.data.train_copies * 12


def _fake_classifier_cache(directory, steps: int) -> None:
    os.makedirs(directory)
    open(os.path.join(directory, classifier_lib.PARAMS_FILENAME), "wb").close()
    with open(os.path.join(directory, classifier_lib.INFO_FILENAME), "w") as f:
        json.dump({"settings": {"seed": 0, "steps": steps, "batch_size": 64}}, f)


def test_a_classifier_cache_of_other_settings_is_named_before_training(tmp_path):
    config = _tiny("digits")
    workdir = tmp_path / "run"
    _fake_classifier_cache(workdir / "classifier", steps=config.eval.classifier_steps + 1)
    with pytest.raises(classifier_lib.ClassifierCacheError,
                       match=r"cached in .*other settings .*'steps': \(31, 30\).*config\.eval\.classifier_steps"):
        digits.train(config, str(workdir))
    assert sorted(os.listdir(workdir)) == ["classifier"]  # nothing trained, the cache left in place


def test_a_latent_json_of_another_model_is_a_named_mismatch(tmp_path):
    config = _tiny("autoencoder_scenes")
    task = autoencoder.AutoencoderTask(config)
    (tmp_path / autoencoder.LATENT_FILE).write_text(json.dumps({"scale": 1.0, "latent_shape": [8, 8, 3], "step": 0}))
    state = jax.jit(task.init_state)()
    with pytest.raises(CheckpointMismatchError, match=r"records latent_shape \[8, 8, 3\] for step 0, but the config "
                                                      r"builds \[32, 32, 4\] \(config\.model\.channels"):
        autoencoder.ensure_latent_info(task, str(tmp_path), state, np.zeros((4, 64, 64, 3), np.uint8))


@pytest.mark.parametrize("interval", [(0.5, 0.5), (-0.1, 1.0), (0.0, 1.5), (0.2,)])
def test_a_guidance_interval_outside_the_timesteps_is_named(interval):
    config = _tiny("digits")
    config.sample.guidance_interval = interval
    with pytest.raises(ConfigError, match=r"config\.sample\.guidance_interval=.* must be \(lo, hi\) with 0 <= lo < hi"):
        digits.validate_config(config)
