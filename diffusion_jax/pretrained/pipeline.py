"""A Stable Diffusion 1.x / 2.x folder as one callable: prompts in, images out, as diffusers'
StableDiffusionPipeline computes them (issue 25, item 5; `api.StableDiffusion` is this class).

    sd = StableDiffusion.load(folder, dtype="float32")
    images = sd(prompts, negative_prompts=None, *, steps=50, guidance=7.5, sampler=None, seed=0, latents=None,
                height=None, width=None, output="uint8")
    ids = sd.tokenize(texts)                  # int32 [N, 77], equal to CLIPTokenizer's

The chain: the text encoder's 77 hidden states for the prompts and the negative prompts ("" when none), unit noise
`latents` NHWC [B, h, w, C] (drawn from `seed` when not given) scaled as the sampler says, the sampler's lax.scan
with classifier-free guidance eps_u + g (eps_c - eps_u) (g traced), then the autoencoder's decoder on
latents / scaling_factor and (x / 2 + 0.5) clipped to [0, 1]: `output="float"` is that float32 NHWC array
(diffusers' output_type="np"), "uint8" its rounding to 0..255. One compile per (shape, sampler, steps).
"""
import math
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import sd_samplers
from diffusion_jax.pretrained import autoencoder, text_encoder, unet as unet_loader
from diffusion_jax.pretrained.folder import PretrainedError, read_json
from diffusion_jax.text.clip_bpe import ClipTokenizer, TokenizerFolderError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OUTPUTS = ("uint8", "float")
COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


def _texts(texts: Union[str, Sequence[str]], name: str) -> list:
    texts = [texts] if isinstance(texts, str) else list(texts) if isinstance(texts, (list, tuple)) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a str or a non-empty list of str")
    return texts


class StableDiffusion:
    """The five components of an SD folder in this project's modules (see the module docstring)."""

    def __init__(self, folder: str, tokenizer: ClipTokenizer, text, unet, vae, scheduler_config: dict,
                 unet_config: dict, dtype: str):
        self.folder, self.tokenizer, self.dtype = folder, tokenizer, dtype
        (self.text_tower, self._text_params), (self.unet, self._unet_params, self.latent_channels) = text, unet
        self.vae, self._vae_params, self.scaling_factor = vae
        self.scheduler_config = scheduler_config
        self.sample_size = unet_config.get("sample_size", 64)
        self._compiled = {}

    @classmethod
    def load(cls, folder: str, dtype: str = "float32") -> "StableDiffusion":
        """Reads `folder` (diffusers' layout); every problem is a PretrainedError naming the file and the key."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}")
        index = read_json(os.path.join(folder, "model_index.json"))
        missing = [c for c in COMPONENTS if c not in index]
        if missing:
            raise PretrainedError(f"{os.path.join(folder, 'model_index.json')}: no {missing[0]!r} component")
        try:
            tokenizer = ClipTokenizer.load(os.path.join(folder, "tokenizer"))
        except TokenizerFolderError as e:
            raise PretrainedError(str(e)) from None
        compute = DTYPES[dtype]
        cast = (lambda tree: jax.tree.map(lambda a: jnp.asarray(a, compute), tree))
        tower, text_params = text_encoder.load(folder, compute)
        unet, unet_params, in_channels = unet_loader.load(folder, compute)
        vae, vae_params, scaling = autoencoder.load(folder, compute)
        scheduler = read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
        sd_samplers.resolve(scheduler)  # the folder's own sampler must be one of ours
        unet_config = read_json(os.path.join(folder, "unet", "config.json"))
        return cls(folder, tokenizer, (tower, cast(text_params)), (unet, cast(unet_params), in_channels),
                   (vae, cast(vae_params), scaling), scheduler, unet_config, dtype)

    def tokenize(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """int32 [N, 77]: CLIPTokenizer's ids (start, tokens cut to 75 with a warning, end, the folder's pad)."""
        return self.tokenizer.encode(_texts(texts, "texts"))

    def _generate(self, plan: sd_samplers.Plan, shape: tuple):
        key = (shape, plan.name, len(plan.t), tuple(sorted((k, repr(v)) for k, v in self.scheduler_config.items())))
        if key not in self._compiled:
            def generate(text_params, unet_params, vae_params, ids, negative_ids, x_init, guidance):
                ones = jnp.ones(ids.shape, bool)
                _, context = self.text_tower.apply(text_params, jnp.concatenate([negative_ids, ids]),
                                                   jnp.concatenate([ones, ones]))
                cond = {"tokens": context, "mask": jnp.concatenate([ones, ones]),
                        "pooled": jnp.zeros((2 * ids.shape[0], context.shape[-1]), context.dtype)}

                def model_fn(x, t):
                    out = self.unet.apply(unet_params, jnp.concatenate([x, x]), jnp.concatenate([t, t]), cond)
                    uncond, text = jnp.split(out, 2)
                    return uncond + guidance * (text - uncond)

                latents = sd_samplers.run(plan, model_fn, x_init)
                images = self.vae.apply(vae_params, latents / self.scaling_factor, method=self.vae.decode)
                return jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)
            self._compiled[key] = jax.jit(generate)
        return self._compiled[key]

    def _latents(self, n: int, latents, seed: int, height, width) -> np.ndarray:
        factor = self.vae.factor
        height = self.sample_size * factor if height is None else height
        width = self.sample_size * factor if width is None else width
        multiple = factor * 2 ** (len(self.unet.channels) - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name}={value!r} must be a positive multiple of {multiple} (the autoencoder's "
                                 f"factor {factor} x the U-Net's {multiple // factor})")
        shape = (n, height // factor, width // factor, self.latent_channels)
        if latents is None:
            return np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float32))
        latents = np.asarray(latents, np.float32)
        if latents.shape != shape:
            raise ValueError(f"latents shape {latents.shape} must be {shape}: NHWC [prompts, height/{factor}, "
                             f"width/{factor}, {self.latent_channels}]")
        return latents

    def __call__(self, prompts: Union[str, Sequence[str]], negative_prompts: Optional[Union[str, Sequence[str]]] = None,
                 *, steps: int = 50, guidance: float = 7.5, sampler: Optional[str] = None, seed: int = 0,
                 latents: Any = None, height: Optional[int] = None, width: Optional[int] = None,
                 output: str = "uint8") -> np.ndarray:
        """Images NHWC, one per prompt (the module docstring)."""
        prompts = _texts(prompts, "prompts")
        negatives = [""] * len(prompts) if negative_prompts is None else _texts(negative_prompts, "negative_prompts")
        if len(negatives) == 1 < len(prompts):
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompts has {len(negatives)} entries for {len(prompts)} prompts")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"guidance={guidance!r} must be a finite number")
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r} is not one of {OUTPUTS}")
        plan = sd_samplers.plan(*sd_samplers.resolve(self.scheduler_config, sampler), steps)
        x_init = self._latents(len(prompts), latents, seed, height, width)
        images = self._generate(plan, x_init.shape)(
            self._text_params, self._unet_params, self._vae_params, self.tokenize(prompts), self.tokenize(negatives),
            x_init, jnp.float32(guidance))
        images = np.asarray(images)
        return images if output == "float" else (images * 255).round().astype(np.uint8)
