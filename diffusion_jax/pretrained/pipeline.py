"""A Stable Diffusion 1.x / 2.x folder as one callable: prompts in, images out, as diffusers'
StableDiffusionPipeline computes them (issue 25, item 5; `api.StableDiffusion` is this class).

    sd = StableDiffusion.load(folder, dtype="float32")
    images = sd(prompts, negative_prompts=None, *, steps=50, guidance=7.5, sampler=None, seed=0, latents=None,
                height=None, width=None, output="uint8")
    ids = sd.tokenize(texts)                  # int32 [N, 77], equal to CLIPTokenizer's
    out = sd.img2img(prompts, images, strength=0.8, negative_prompts=None, *, steps=50, guidance=7.5,
                     sampler=None, seed=0, noise=None, output="uint8")

The chain: the text encoder's 77 hidden states for the prompts and the negative prompts ("" when none), unit noise
`latents` NHWC [B, h, w, C] (drawn from `seed` when not given) scaled as the sampler says, the sampler's lax.scan
with classifier-free guidance eps_u + g (eps_c - eps_u) (g traced), then the autoencoder's decoder on
latents / scaling_factor and (x / 2 + 0.5) clipped to [0, 1]: `output="float"` is that float32 NHWC array
(diffusers' output_type="np"), "uint8" its rounding to 0..255. One compile per (shape, sampler, steps). img2img
starts the chain where `strength` says (diffusers' rule) from the autoencoder posterior's mean, noised.
"""
import math
import os
import time
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffusion_jax.diffusion import sd_samplers
from diffusion_jax.models import layers
from diffusion_jax.pretrained import autoencoder, text_encoder, unet as unet_loader
from diffusion_jax.pretrained.folder import PretrainedError, read_json
from diffusion_jax.text.clip_bpe import ClipTokenizer, TokenizerFolderError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OUTPUTS = ("uint8", "float")
COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
# On a CPU in float32 the U-Net's 3x3 convolutions on maps up to 32x32 (SD's lower three levels at 512x512) run as
# Winograd's F(2x2, 3x3), their kernels transformed once a chain (models/layers.py, WinogradConv; slower at 64x64):
# one U-Net call 8.66 s instead of 10.80 (benchmarks/sd_unet_speed.py, docs/stable_diffusion.md).
CPU_WINOGRAD = 32


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
        if jax.default_backend() == "cpu" and dtype == "float32":
            self.unet = self.unet.clone(winograd=CPU_WINOGRAD)
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

    def _jitted(self, key, make):
        if key not in self._compiled:
            self._compiled[key] = jax.jit(make())
        return self._compiled[key]

    def _generate(self, plan: sd_samplers.Plan, ids, negative_ids, start, guidance, img2img: bool):
        """Text encoder, then (img2img) the images encoded to the posterior mean and noised to the plan's first
        step, the sampler's scan under guidance, the decoder: each jitted on its own, so another sampler or step
        count recompiles only the chain (a compile a (shape, sampler, steps))."""
        def encode_text():
            def encode(params, ids, negative_ids):
                both = jnp.concatenate([negative_ids, ids])
                return self.text_tower.apply(params, both, jnp.ones(both.shape, bool))[1]
            return encode

        def chain():
            def run(unet_params, context, x, guidance):
                n = context.shape[0]
                cond = {"tokens": context, "mask": jnp.ones(context.shape[:2], bool),
                        "pooled": jnp.zeros((n, context.shape[-1]), context.dtype)}

                variables = unet_params
                if self.unet.winograd:  # the transformed kernels once, not at every step of the scan
                    variables = {**unet_params, **layers.winograd_variables(
                        self.unet, unet_params, jnp.concatenate([x, x]), jnp.zeros((2 * x.shape[0],)), cond)}

                def model_fn(x, t):
                    out = self.unet.apply(variables, jnp.concatenate([x, x]), jnp.concatenate([t, t]), cond)
                    uncond, text = jnp.split(out, 2)
                    return uncond + guidance * (text - uncond)
                return sd_samplers.run(plan, model_fn, x, noised=img2img)
            return run

        def encode_images():
            def encode(vae_params, images, noise):
                mean, _ = self.vae.apply(vae_params, images, method=self.vae.encode)
                return sd_samplers.add_noise(plan, self.scaling_factor * mean, noise)
            return encode

        def decode():
            def run(vae_params, latents):
                images = self.vae.apply(vae_params, latents / self.scaling_factor, method=self.vae.decode)
                return jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)
            return run

        context = self._jitted(("text", ids.shape), encode_text)(self._text_params, ids, negative_ids)
        if img2img:  # the noising depends on the plan's first step: keyed by it
            start = self._jitted(("encode", np.shape(start[0]), plan.noise_scale), encode_images)(
                self._vae_params, *start)
        key = ("chain", np.shape(start), plan.name, tuple(plan.t.tolist()), img2img)
        latents = self._jitted(key, chain)(self._unet_params, context, start, guidance)
        return self._jitted(("decode", latents.shape), decode)(self._vae_params, latents)

    def _noise(self, shape: tuple, given, seed: int, name: str) -> np.ndarray:
        if given is None:
            return np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float32))
        given = np.asarray(given, np.float32)
        if given.shape != shape:
            raise ValueError(f"{name} shape {given.shape} must be {shape}: NHWC [prompts, height/{self.vae.factor}, "
                             f"width/{self.vae.factor}, {self.latent_channels}]")
        return given

    def _check_size(self, height: int, width: int) -> None:
        multiple = self.vae.factor * 2 ** (len(self.unet.channels) - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name}={value!r} must be a positive multiple of {multiple} (the autoencoder's "
                                 f"factor {self.vae.factor} x the U-Net's {multiple // self.vae.factor})")

    def _conditions(self, prompts, negative_prompts, guidance, output) -> tuple:
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
        return self.tokenize(prompts), self.tokenize(negatives)

    def _sampler(self, sampler: Optional[str]) -> tuple:
        """(name, config) of the chosen sampler on this folder, with the two corrections diffusers' SD pipelines
        make to the scheduler they are built with: `steps_offset` 1, `clip_sample` off (so a sampler chosen here
        equals `StableDiffusionPipeline(..., scheduler=Class.from_pretrained(folder, subfolder="scheduler"))`)."""
        name, config = sd_samplers.resolve(self.scheduler_config, sampler)
        if config.get("steps_offset", 1) != 1:
            config["steps_offset"] = 1
        if config.get("clip_sample") is True:
            config["clip_sample"] = False
        return name, config

    def _run(self, plan, start, ids, negative_ids, guidance, output, img2img):
        images = np.asarray(self._generate(plan, ids, negative_ids, start, jnp.float32(guidance), img2img))
        return images if output == "float" else (images * 255).round().astype(np.uint8)

    def __call__(self, prompts: Union[str, Sequence[str]], negative_prompts: Optional[Union[str, Sequence[str]]] = None,
                 *, steps: int = 50, guidance: float = 7.5, sampler: Optional[str] = None, seed: int = 0,
                 latents: Any = None, height: Optional[int] = None, width: Optional[int] = None,
                 output: str = "uint8") -> np.ndarray:
        """Images NHWC, one per prompt, from unit noise `latents` (or the seed's) (the module docstring)."""
        ids, negative_ids = self._conditions(prompts, negative_prompts, guidance, output)
        height = self.sample_size * self.vae.factor if height is None else height
        width = self.sample_size * self.vae.factor if width is None else width
        self._check_size(height, width)
        plan = sd_samplers.plan(*self._sampler(sampler), steps)
        shape = (len(ids), height // self.vae.factor, width // self.vae.factor, self.latent_channels)
        x_init = self._noise(shape, latents, seed, "latents")
        return self._run(plan, x_init, ids, negative_ids, guidance, output, img2img=False)

    def img2img(self, prompts: Union[str, Sequence[str]], images: Any, strength: float = 0.8,
                negative_prompts: Optional[Union[str, Sequence[str]]] = None, *, steps: int = 50,
                guidance: float = 7.5, sampler: Optional[str] = None, seed: int = 0, noise: Any = None,
                output: str = "uint8") -> np.ndarray:
        """Images NHWC changed towards the prompts, as StableDiffusionImg2ImgPipeline: `images` (uint8, or float in
        [0, 1], NHWC, one per prompt or one for all) encoded to the posterior mean, noised with `noise` (NHWC
        latent-shaped unit noise, or the seed's) to the step `strength` says, and the chain's last
        int(steps * strength) steps run from there."""
        ids, negative_ids = self._conditions(prompts, negative_prompts, guidance, output)
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] not in (1, len(ids)):
            raise ValueError(f"images shape {images.shape} must be NHWC [1 or {len(ids)} (one per prompt), height, "
                             "width, 3]")
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        elif not (np.issubdtype(images.dtype, np.floating) and np.all((images >= 0) & (images <= 1))):
            raise ValueError("images must be uint8, or float in [0, 1]")
        images = np.broadcast_to(images.astype(np.float32) * 2 - 1, (len(ids),) + images.shape[1:])
        self._check_size(images.shape[1], images.shape[2])
        name, config = self._sampler(sampler)
        sd_samplers.check_steps(steps, config)  # before start_of multiplies it
        plan = sd_samplers.plan(name, config, steps, sd_samplers.start_of(steps, strength))
        f = self.vae.factor
        shape = (len(ids), images.shape[1] // f, images.shape[2] // f, self.latent_channels)
        return self._run(plan, (np.ascontiguousarray(images), self._noise(shape, noise, seed, "noise")), ids,
                         negative_ids, guidance, output, img2img=True)


def sample(config, workdir: str) -> str:
    """--mode=sample of experiments/stable_diffusion.py: the prompts' images as npz + JSON + PNG grid and one PNG an
    image in `<npz>_png/` (never overwriting an earlier result); returns the npz path."""
    from diffusion_jax.config import ConfigError
    from diffusion_jax.images import write_samples
    from diffusion_jax.trainers.txt2img import read_prompts

    if not config.pretrained:
        raise ConfigError("config.pretrained is empty: the diffusers folder to load (--config.pretrained=FOLDER)")
    s = config.sample
    prompts = read_prompts(config)
    negatives = [p.strip() for p in str(s.negative_prompts).split(";")] if str(s.negative_prompts).strip() else None
    sd = StableDiffusion.load(config.pretrained, config.dtype)
    start = time.time()
    try:
        images = sd(prompts, negatives, steps=s.steps, guidance=s.guidance, sampler=s.sampler or None, seed=s.seed,
                    height=s.height or None, width=s.width or None)
    except ValueError as e:  # a bad sampler, size, step count or guidance: named after its config key
        raise ConfigError(f"config.sample: {e}") from None
    seconds = time.time() - start
    path = s.output or os.path.join(workdir, "samples", "samples.npz")
    info = {"pretrained": os.path.abspath(config.pretrained), "sampler": s.sampler or sd.scheduler_config.get(
        "_class_name"), "steps": s.steps, "guidance": s.guidance, "seed": s.seed, "dtype": config.dtype,
        "negative_prompts": negatives, "seconds": seconds, "num_images": len(prompts)}
    write_samples(path, images, {"prompts": np.asarray(prompts)}, info, [np.array([i]) for i in range(len(prompts))],
                  row_titles=prompts)
    folder = path[:-4] + "_png"  # one PNG an image; an earlier folder is moved aside, as write_samples does
    if os.path.isdir(folder):
        os.replace(folder, folder + time.strftime("-%Y%m%d-%H%M%S"))
    os.makedirs(folder)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.png"))
    print(f"sampled {len(prompts)} images in {seconds:.1f} s -> {path}, {folder}/")
    return path
