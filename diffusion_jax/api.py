"""A Python API for notebooks and scripts: load a trained workdir and call it, without absl flags.

    from diffusion_jax import api
    digits = api.Digits.load("runs/digits", "experiments/digits.py")
    images = digits([3, 9], num_per_label=8)                                  # uint8 [16, 32, 32, 1]

    t2i = api.TextToImage.load("runs/txt2img_scenes", "experiments/txt2img_scenes.py")
    images = t2i(["a red 3 left of a blue seven"], num_per_prompt=4)           # uint8 [4, 64, 64, 3]
    embeddings = t2i.embed(["a red 3 left of a blue seven"])                   # [1, D], unit norm

    clip = api.load_clip("runs/clip_scenes", "experiments/clip_scenes.py")     # texts/images -> embeddings

    sd = api.StableDiffusion.load("stable-diffusion-v1-5")                     # a diffusers folder (issue 25)
    images = sd(["an astronaut riding a horse"], steps=20, sampler="dpmpp_2m")  # uint8 [1, 512, 512, 3]

Every loader takes (workdir, config[, overrides]): the run to load, the config (spec or ConfigDict) it was trained
with, and dotted-key overrides such as {'sample.steps': 20}. Loading reads each model once and places the sampling
weights on the devices once; calls compile once per chunk size, so a notebook can call them in a loop. `seed` and
`guidance` default to the config's `sample.seed` and `sample.guidance`: a call draws exactly the images
`--mode=sample` draws for the same conditions. Bad prompts raise `txt2img.PromptError` naming the prompt.
"""
from typing import Optional, Sequence, Union

import ml_collections
import numpy as np

from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.data import mnist
from diffusion_jax.pretrained import pipeline as sd_pipeline
from diffusion_jax.trainers import clip, digits, txt2img

ConfigLike = Union[str, ml_collections.ConfigDict]


def _config(config: ConfigLike, overrides: Optional[dict]) -> ml_collections.ConfigDict:
    """A config from a spec ('experiments/file.py[:preset]') or a ConfigDict (copied), with dotted-key overrides."""
    config = load_config(config) if isinstance(config, str) else ml_collections.ConfigDict(config.to_dict())
    config.lock()  # an override of a key that does not exist raises, naming it
    try:
        config.update_from_flattened_dict(dict(overrides or {}))
    except (KeyError, AttributeError) as e:
        raise ConfigError(f"unknown config key in overrides: {e}") from None
    config.unlock()
    return config


def _count(value, name: str) -> int:
    """`value` as a positive int; ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _guidance(value: Optional[float]) -> Optional[float]:
    if value is not None and not np.isfinite(value):
        raise ValueError(f"guidance must be a finite number, got {value!r}")
    return value


class Digits:
    """A trained digits workdir, callable: labels in, uint8 digits out."""

    def __init__(self, task, state):
        self.task, self.state, self.config = task, state, task.config
        self._params = task.params_for_sampling(state)  # on the devices once, not per call

    @classmethod
    def load(cls, workdir: str, config: ConfigLike, overrides: Optional[dict] = None) -> "Digits":
        """Loads the digit model of `workdir` (or of `sample.checkpoint_workdir`); FileNotFoundError naming the
        folder when it holds no checkpoint; a checkpoint of another model is refused naming the leaves."""
        config = _config(config, overrides)
        digits.validate_config(config)
        task = digits.make_task(config)
        return cls(task, task.load_for_sampling(workdir, "the digit model")[1])

    def __call__(self, labels: Union[int, Sequence[int]], *, num_per_label: int = 1, seed: Optional[int] = None,
                 guidance: Optional[float] = None) -> np.ndarray:
        """uint8 digits [len(labels) * num_per_label, 32, 32, 1], label-major. Image i depends only on (seed, i, its
        label, guidance): `--mode=sample --config.sample.labels=3,9 --config.sample.num_per_class=8` draws
        `digits([3, 9], num_per_label=8)`."""
        labels = np.atleast_1d(np.asarray(labels))
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or np.any((labels < 0) | (labels > 9)):
            raise ValueError(f"labels must be digits 0-9, got {labels.tolist()!r}")
        labels = np.repeat(labels.astype(np.int32), _count(num_per_label, "num_per_label"))
        s = self.config.sample
        images = self.task.sampler_for(len(labels))(self._params, labels, seed=s.seed if seed is None else seed,
                                                    guidance=s.guidance if guidance is None else _guidance(guidance))
        return mnist.to_uint8_images(images)


class TextToImage:
    """A trained text-to-image workdir, callable: prompts in, uint8 images out."""

    def __init__(self, pipeline: txt2img.Pipeline, state):
        self.pipeline, self.state, self.config = pipeline, state, pipeline.config
        self._params = pipeline.task.params_for_sampling(state)  # on the devices once, not per call

    @classmethod
    def load(cls, workdir: str, config: ConfigLike, overrides: Optional[dict] = None) -> "TextToImage":
        """Loads the U-Net of `workdir` (or of `sample.checkpoint_workdir`) with the CLIP and autoencoder it was
        trained on. FileNotFoundError naming what is not trained; a U-Net of another CLIP or autoencoder is
        refused (CheckpointMismatchError)."""
        config = _config(config, overrides)
        txt2img.validate_config(config)
        return cls(*txt2img.load_for_sampling(config, workdir))

    def __call__(self, prompts: Union[str, Sequence[str]], *, num_per_prompt: int = 1, seed: Optional[int] = None,
                 guidance: Optional[float] = None) -> np.ndarray:
        """uint8 images [len(prompts) * num_per_prompt, H, W, 3], prompt-major. Image i depends only on (seed, i, its
        prompt, guidance)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return txt2img.generate(self.pipeline, self._params, prompts,
                                num_per_prompt=_count(num_per_prompt, "num_per_prompt"), seed=seed,
                                guidance=_guidance(guidance))

    def embed(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """The frozen CLIP's pooled, unit-norm text embeddings [T, D] (what conditions the U-Net)."""
        return self.pipeline.encoder.embed_texts([texts] if isinstance(texts, str) else list(texts))[0]

    def embed_images(self, images_uint8: np.ndarray) -> np.ndarray:
        """The frozen CLIP's unit-norm image embeddings [N, D] of uint8 images [N, H, W, 3]."""
        return self.pipeline.encoder.embed_images(images_uint8)


def load_clip(workdir: str, config: ConfigLike, overrides: Optional[dict] = None) -> clip.Encoder:
    """A trained CLIP workdir as an `Encoder`: `.embed_texts(texts)[0]` and `.embed_images(uint8 images)` give
    unit-norm embeddings. FileNotFoundError naming the workdir if it holds no trained CLIP."""
    return clip.load(_config(config, overrides), workdir)


StableDiffusion = sd_pipeline.StableDiffusion  # a diffusers SD 1.x / 2.x folder: load(folder), __call__, tokenize
