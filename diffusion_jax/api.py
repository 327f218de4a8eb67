"""A Python API for notebooks and scripts: load a trained workdir and call it, without absl flags.

    from diffusion_jax import api
    t2i = api.TextToImage.load("runs/txt2img_scenes", "experiments/txt2img_scenes.py")
    images = t2i(["a red 3 left of a blue seven"], num_per_prompt=4, seed=0)   # uint8 [4, 64, 64, 3]
    embeddings = t2i.embed(["a red 3 left of a blue seven"])                   # [1, D], unit norm

    clip = api.load_clip("runs/clip_scenes", "experiments/clip_scenes.py")     # texts/images -> embeddings

Loading reads each model once (CLIP, the autoencoder in latent space, the U-Net's EMA weights); calls compile once
per chunk size, so a notebook can call them in a loop. Bad prompts raise `txt2img.PromptError` naming the prompt.
"""
from typing import Optional, Sequence, Union

import ml_collections
import numpy as np

from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.trainers import clip, txt2img
from diffusion_jax.trainers.state import TrainState

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


class TextToImage:
    """A trained text-to-image workdir, callable: prompts in, uint8 images out."""

    def __init__(self, model: txt2img.TextToImage, state: TrainState):
        self.model, self.state = model, state
        self.config = model.config

    @classmethod
    def load(cls, workdir: str, config: ConfigLike, overrides: Optional[dict] = None) -> "TextToImage":
        """Loads the workdir a text-to-image config trained (`config`: the spec or ConfigDict it was trained with;
        `overrides`: e.g. {'sample.steps': 20}). FileNotFoundError naming what is not trained; a U-Net of another
        autoencoder is refused (CheckpointMismatchError)."""
        config = _config(config, overrides)
        txt2img.validate_config(config)
        model = txt2img.TextToImage.load(config, workdir)
        txt2img.check_space(config.sample.checkpoint_workdir or workdir, model.space)
        return cls(model, model.load_state(workdir))

    def __call__(self, prompts: Union[str, Sequence[str]], *, num_per_prompt: int = 1, seed: int = 0,
                 guidance: Optional[float] = None) -> np.ndarray:
        """uint8 images [len(prompts) * num_per_prompt, H, W, 3], prompt-major; `guidance` defaults to the
        config's. Image i depends only on (seed, i, its prompt, guidance)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(num_per_prompt, bool) or not isinstance(num_per_prompt, int) or num_per_prompt < 1:
            raise ValueError(f"num_per_prompt must be a positive integer, got {num_per_prompt!r}")
        if guidance is not None and not np.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        return txt2img.generate(self.model, self.state, prompts, num_per_prompt=num_per_prompt, seed=seed,
                                guidance=guidance)

    def embed(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """The frozen CLIP's pooled, unit-norm text embeddings [T, D] (what conditions the U-Net)."""
        return self.model.encoder.embed_texts([texts] if isinstance(texts, str) else list(texts))[0]

    def embed_images(self, images_uint8: np.ndarray) -> np.ndarray:
        """The frozen CLIP's unit-norm image embeddings [N, D] of uint8 images [N, H, W, 3]."""
        return self.model.encoder.embed_images(images_uint8)


def load_clip(workdir: str, config: ConfigLike, overrides: Optional[dict] = None) -> clip.Encoder:
    """A trained CLIP workdir as an `Encoder`: `.embed_texts(texts)[0]` and `.embed_images(uint8 images)` give
    unit-norm embeddings. FileNotFoundError naming the workdir if it holds no trained CLIP."""
    return clip.load(_config(config, overrides), workdir)
