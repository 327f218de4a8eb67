"""Text to image (phase 4): the digits U-Net, told the frozen CLIP text embedding of a caption instead of a label.

The train step, sampler and loop are the digit model's (`trainers/diffusion.py`, `trainers/loop.py`): only the
condition differs. It is the CLIP text tower's output for the caption, {'tokens': [B, L, W], 'mask': [B, L],
'pooled': [B, D]}; the U-Net cross-attends to the tokens and adds the pooled embedding to its timestep embedding.
The empty caption `<bos> <eos>` is the null condition of classifier-free guidance.

CLIP stays frozen, so each training caption's embeddings are computed once, before training, and the batches carry
them (`benchmarks/txt2img_speed.py` measures this against running the text tower inside the step).

`config.data.dataset` picks the data: 'captioned_digits' (one 32x32 digit, its colour and position) or 'scenes'
(two digits in a relation on 64x64, `data/scenes.py`). `config.diffusion.space` picks where the U-Net denoises:
'pixel', or 'latent' (Rombach et al. 2022): the latents of the KL autoencoder of `config.autoencoder`
(`trainers/autoencoder.py`), scaled by its saved factor; the training images are encoded once and the sampler's
chain ends in the decoder. The two spaces differ only in config: the step, loop and sampler are the same.

Everything a run makes lives in its workdir:
  clip/                   the CLIP run (unless config.clip.workdir names another): trained first when it has no
                          finished checkpoint; a CLIP outside this run is used when finished, never trained further
  autoencoder/            latent space only: the autoencoder run (unless config.autoencoder.workdir names another),
                          trained first likewise
  clip.json               the CLIP the U-Net was trained on (its workdir, step, tokenizer and text-tower sha256): a
                          U-Net is never resumed or sampled with another CLIP
  latent_space.json       the space the U-Net was trained in ({'space': 'pixel'} or the autoencoder's latent shape
                          and scale, and its workdir): a U-Net is never resumed or sampled through another autoencoder
  checkpoints/            orbax train states of the U-Net (resume from the latest good one)
  metrics.jsonl, tensorboard/, samples/step_*.png (fixed prompts during training)
  samples/samples.npz     --mode=sample: images (uint8 N x 32 x 32 x 3) and prompts (N strings), PNG grid beside it
  classifier/             the attribute checker's digit classifier (real training digits only)
  eval.json, samples/eval_guidance_*.png   --mode=eval (also after training when train.final_eval)
"""
import dataclasses
import json
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax import config as config_lib
from diffusion_jax import distributed
from diffusion_jax.checkpoint import Checkpointer, CheckpointMismatchError
from diffusion_jax.config import ConfigError
from diffusion_jax import datasets
from diffusion_jax.data import mnist, pipeline
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation import txt2img as checks
from diffusion_jax.images import save_grid, write_samples
from diffusion_jax.trainers import autoencoder, clip, diffusion
from diffusion_jax.trainers.state import TrainState

IMAGE_SHAPE = datasets.CaptionedDigits.image_shape
SPACES = ("pixel", "latent")
SPACE_FILE = "latent_space.json"
CLIP_FILE = "clip.json"


class PromptError(ConfigError):
    """A prompt cannot be used (empty, not a string, or only unknown words); the message names it."""


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the text-to-image task reads (and its CLIP and autoencoder configs); raises ConfigError
    naming the key."""
    dataset = datasets.check(config)
    config_lib.check_choice(config, "diffusion.space", SPACES)
    if config.clip.data.dataset != config.data.dataset:
        raise ConfigError(f"config.clip.data.dataset={config.clip.data.dataset!r} differs from config.data.dataset="
                          f"{config.data.dataset!r}: the frozen CLIP must know the captions of the data")
    size = dataset.image_shape[0]
    if config.diffusion.space == "latent":
        if dataset.name != "scenes":
            raise ConfigError("config.diffusion.space='latent' needs config.data.dataset='scenes' (the autoencoder "
                              "is trained on scenes)")
        config_lib.nested("autoencoder", autoencoder.validate_config, config)
        size //= 2 ** (len(config.autoencoder.model.channels) - 1)  # the autoencoder's downsampling factor f
    diffusion.validate_diffusion_config(config, image_size=size,
                                        positive=("sample.num_per_prompt", "eval.num_per_prompt"))
    config_lib.check_number(config, "data.train_copies", 1, 25)  # a digit has 25 colour x layout combinations
    dataset.validate(config)
    if "num_prompts" in config.eval:
        config_lib.check_number(config, "eval.num_prompts", 2)  # scenes: the first N held-out test scenes
    if any(g < 0 for g in config.eval.guidance_scales):
        raise ConfigError(f"config.eval.guidance_scales={tuple(config.eval.guidance_scales)} must be >= 0")
    config_lib.nested("clip", clip.validate_config, config)


def _read_json(path: str) -> dict:
    """A JSON object from `path`; {} when there is no such file."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    """Writes `value` to `path` atomically (process 0 only)."""
    if distributed.is_primary():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(value, f, indent=1)
        os.replace(path + ".tmp", path)


def _frozen_model_workdir(explicit: str, unet_workdir: str, record_file: str, own: str) -> str:
    """Where a frozen model (CLIP, autoencoder) of a U-Net lives: the config's `explicit` workdir; else the one the
    U-Net's run recorded in `record_file` (relative to that run when inside it); else UNET_WORKDIR/`own`."""
    if explicit:
        return explicit
    recorded = _read_json(os.path.join(unet_workdir, record_file)).get("workdir")
    return os.path.join(unet_workdir, recorded) if recorded else os.path.join(unet_workdir, own)


def _record_path(path: str, unet_workdir: str) -> str:
    """`path` as a run records it: relative to the U-Net's run when inside it (a copied run still finds it)."""
    path, run = os.path.abspath(path), os.path.abspath(unet_workdir)
    return os.path.relpath(path, run) if path.startswith(run + os.sep) else path


def clip_workdir(config: ml_collections.ConfigDict, workdir: str, unet_workdir: Optional[str] = None) -> str:
    """Where the frozen CLIP lives: `config.clip.workdir`; else the CLIP recorded (clip.json) by the U-Net's run
    (`unet_workdir`, default `workdir`; another run's when sampling `sample.checkpoint_workdir`); else RUN/clip."""
    return _frozen_model_workdir(config.clip.workdir, unet_workdir or workdir, CLIP_FILE, "clip")


def autoencoder_workdir(config: ml_collections.ConfigDict, workdir: str, unet_workdir: Optional[str] = None) -> str:
    """Where the autoencoder of a latent-space run lives: `config.autoencoder.workdir`; else the one recorded
    (latent_space.json) by the U-Net's run; else RUN/autoencoder."""
    return _frozen_model_workdir(config.autoencoder.workdir, unet_workdir or workdir, SPACE_FILE, "autoencoder")


def _latest_step(model_workdir: str) -> int:
    """The newest finished checkpoint step in MODEL_WORKDIR/checkpoints as process 0 sees it (-1: none); creates
    nothing."""
    directory = os.path.join(model_workdir, "checkpoints")
    step = None
    if os.path.isdir(directory):
        with Checkpointer(directory) as ckpt:
            step = ckpt.latest_step()
    return distributed.primary_decides(-1 if step is None else int(step))


def _refuse_to_extend(group: str, model_workdir: str, workdir: str, step: int, num_steps: int) -> None:
    """ConfigError when the unfinished frozen model of config group `group` ('clip', 'autoencoder') must not be
    trained further: it lives outside this run (it may be another run's, whose U-Net was trained on it as it is), or
    this run's U-Net already records it (`record_file`). Training it would change what a U-Net was conditioned on."""
    if step < 0:
        return
    name, record_file = {"clip": ("CLIP", CLIP_FILE), "autoencoder": ("autoencoder", SPACE_FILE)}[group]
    where = f"config.{group}.workdir={model_workdir!r} holds a {name} at step {step}, below config.{group}.train." \
            f"num_steps={num_steps}"
    fix = f"set config.{group}.train.num_steps={step}"
    if os.path.abspath(model_workdir) != os.path.abspath(os.path.join(workdir, group)):
        raise ConfigError(f"{where}; it lives outside this run (--workdir={workdir}) and is not trained further here. "
                          f"Finish it in its own run (--workdir={model_workdir}) or {fix}.")
    if distributed.primary_decides(os.path.exists(os.path.join(workdir, record_file))):
        raise ConfigError(f"{where}; the U-Net in {workdir} was trained on it ({record_file}), so it is not trained "
                          f"further: {fix}, or use a new --workdir.")


def ensure_clip(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Trains (or finishes training) CLIP in the CLIP workdir unless it holds a finished checkpoint; returns it.

    A CLIP outside this run (config.clip.workdir, or the one this run recorded) is never trained further: an
    unfinished one is a ConfigError. Process 0's view of the workdir decides, for every process.
    """
    cw = clip_workdir(config, workdir)
    step, num_steps = _latest_step(cw), config.clip.train.num_steps
    if step < num_steps:
        _refuse_to_extend("clip", cw, workdir, step, num_steps)
        print(f"no finished CLIP checkpoint in {cw} (latest step {step if step >= 0 else None}): training CLIP "
              f"there first ({num_steps} steps)")
        clip.train(config.clip, cw)
    return cw


def ensure_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> Optional[str]:
    """Latent space: trains (or finishes) the autoencoder unless its workdir holds a finished checkpoint and its
    latent scale; returns that workdir (None in pixel space). An unfinished autoencoder outside this run is a
    ConfigError, as for CLIP (`ensure_clip`); a finished one without its latent.json gets it written."""
    if config.diffusion.space != "latent":
        return None
    aw = autoencoder_workdir(config, workdir)
    step, num_steps = _latest_step(aw), config.autoencoder.train.num_steps
    has_scale = distributed.primary_decides(os.path.exists(os.path.join(aw, autoencoder.LATENT_FILE)))
    if step < num_steps or not has_scale:
        if step < num_steps:
            _refuse_to_extend("autoencoder", aw, workdir, step, num_steps)
        print(f"no finished autoencoder in {aw} (latest step {step if step >= 0 else None}): training it there "
              f"first ({num_steps} steps)")
        autoencoder.train(config.autoencoder, aw)
    return aw


def check_space(workdir: str, space: dict, record: bool = False) -> None:
    """Checks the space a U-Net was trained in (`workdir/latent_space.json`) against `space`; with `record`
    (training) writes it when there is none yet. Sampling never writes into a U-Net's workdir.

    A U-Net trained on another autoencoder (other latent shape or scale) or in pixel space is refused with
    CheckpointMismatchError naming both, before anything is restored or written. `space['workdir']` (where the
    autoencoder lives) is recorded, not compared.
    """
    path = os.path.join(workdir, SPACE_FILE)
    if os.path.exists(path):
        saved = _read_json(path)
        same = saved.get("space") == space["space"] and saved.get("latent_shape") == space.get("latent_shape") and (
            "scale" not in space or np.isclose(saved.get("scale", np.nan), space["scale"], rtol=1e-6))
        if not same:
            shown = lambda d: {k: v for k, v in d.items() if k != "workdir"}  # noqa: E731
            raise CheckpointMismatchError(
                f"the U-Net in {workdir} was trained in {shown(saved)}, but this config's space is {shown(space)} "
                f"(another autoencoder, latent shape or scale); use the autoencoder it was trained with "
                f"(config.autoencoder.workdir) or a new --workdir. Nothing was changed.")
    elif record:
        _write_json(path, space)


def check_clip(workdir: str, fingerprint: dict, record: bool = False) -> None:
    """Checks the CLIP a U-Net was trained on (`workdir/clip.json`) against `fingerprint` (`Encoder.fingerprint` and
    the CLIP's workdir); with `record` (training) writes it when there is none yet. Sampling never writes.

    Another tokenizer or text tower (another CLIP, or the same one trained further) is refused with
    CheckpointMismatchError naming both, before anything is restored or written. A U-Net trained before CLIPs were
    recorded is sampled with a warning that its CLIP cannot be checked.
    """
    path = os.path.join(workdir, CLIP_FILE)
    if os.path.exists(path):
        saved = _read_json(path)
        if any(saved.get(k) != fingerprint[k] for k in ("tokenizer_sha256", "text_tower_sha256")):
            raise CheckpointMismatchError(
                f"the U-Net in {workdir} was trained on the CLIP of {saved.get('workdir')!r} at step "
                f"{saved.get('step')} ({CLIP_FILE}), but this config loads the CLIP of {fingerprint['workdir']!r} "
                f"at step {fingerprint['step']}, whose tokenizer or text tower differ; set config.clip.workdir to "
                "the CLIP it was trained on, or use a new --workdir. Nothing was changed.")
    elif record:
        _write_json(path, fingerprint)
    else:
        logging.warning("%s has no %s (trained before CLIPs were recorded): its CLIP cannot be checked", workdir,
                        CLIP_FILE)


def text_condition(encoder: clip.Encoder, ids: np.ndarray, mask: np.ndarray) -> dict:
    """Token ids/mask [N, L] -> the frozen text tower's {'tokens', 'mask', 'pooled'} as host arrays."""
    pooled, tokens = encoder.text(ids, mask)
    return {"tokens": tokens, "mask": np.asarray(mask, bool), "pooled": pooled}


def stand_in_condition(clip_model: ml_collections.ConfigDict, n: int, rng: np.random.Generator) -> dict:
    """A random text condition with the shapes of the frozen CLIP's outputs (`clip_model` = config.clip.model), for
    benchmarks, whose speed does not depend on the values: tokens [n, L, W], mask [n, L] (first 10 tokens), pooled
    [n, D]."""
    m = clip_model
    return {"tokens": rng.standard_normal((n, m.max_length, m.text_width)).astype(np.float32),
            "mask": np.arange(m.max_length)[None].repeat(n, 0) < 10,
            "pooled": rng.standard_normal((n, m.embed_dim)).astype(np.float32)}


@dataclasses.dataclass
class Pipeline:
    """The text-to-image model of one config: the diffusion task (U-Net, schedule, optimizer, samplers), the frozen
    CLIP text encoder whose outputs condition it, and in latent space the frozen autoencoder (`codec`) whose
    latents the U-Net denoises, with the workdirs they came from. `Pipeline.load` builds it; the notebook API
    (`api.TextToImage`) wraps it."""

    task: diffusion.DiffusionTask
    encoder: clip.Encoder
    codec: Optional[autoencoder.Codec] = None
    clip_workdir: str = ""
    autoencoder_workdir: str = ""

    @classmethod
    def load(cls, config: ml_collections.ConfigDict, workdir: str, unet_workdir: Optional[str] = None) -> "Pipeline":
        """Loads the frozen CLIP and, in latent space, the autoencoder of the U-Net of `unet_workdir` (default
        `workdir`), once: the config's `clip.workdir` / `autoencoder.workdir`, else those the U-Net's run recorded,
        else its clip/ and autoencoder/. The U-Net state is loaded by `load_state`. FileNotFoundError naming the
        workdir of a model that is not trained."""
        cw = clip_workdir(config, workdir, unet_workdir)
        encoder = clip.load(config.clip, cw)
        codec, aw = None, ""
        shape = datasets.get(config.data.dataset).image_shape
        if config.diffusion.space == "latent":
            aw = autoencoder_workdir(config, workdir, unet_workdir)
            codec = autoencoder.load(config.autoencoder, aw)
            shape = codec.latent_shape
        ids, mask = encoder.tokenizer.encode_empty()
        null_cond = jax.tree.map(lambda a: a[0], text_condition(encoder, ids[None], mask[None]))
        task = diffusion.DiffusionTask(config, image_shape=shape, null_cond=null_cond, clip_x0=codec is None)
        return cls(task, encoder, codec, cw, aw)

    def check(self, unet_workdir: str, record: bool = False) -> None:
        """Checks (`record`: and records) the CLIP and the space the U-Net of `unet_workdir` was trained on
        (`check_clip`, `check_space`); CheckpointMismatchError naming both before anything is loaded or written."""
        check_clip(unet_workdir, {"workdir": _record_path(self.clip_workdir, unet_workdir),
                                  **self.encoder.fingerprint()}, record)
        space = self.space
        if self.codec is not None:
            space = {**space, "workdir": _record_path(self.autoencoder_workdir, unet_workdir)}
        check_space(unet_workdir, space, record)

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.task.config

    @property
    def dataset(self):
        """The dataset object of `data.dataset` (`datasets.py`): prompts, parser, evaluator."""
        return datasets.get(self.config.data.dataset)

    @property
    def space(self) -> dict:
        """What `check_space` records: {'space': 'pixel'} or the autoencoder's latent shape and scale."""
        return {"space": "latent", **self.codec.fingerprint()} if self.codec else {"space": "pixel"}

    def to_images(self, samples: np.ndarray) -> np.ndarray:
        """The sampler's output (pixels in [-1, 1], or scaled latents) -> uint8 images."""
        return mnist.to_uint8_images(self.codec.decode(samples) if self.codec else samples)

    def prompt_condition(self, prompts: list) -> dict:
        """Prompts -> condition; a bad prompt raises PromptError naming it, unknown words inside a good prompt warn.

        On scenes a prompt must describe two objects in a relation with two different colours
        (`scenes.parse_prompt`): one object or three, an unknown relation or colour, the same colour twice are
        PromptErrors naming the prompt.
        """
        ds = self.dataset
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise PromptError(f"prompt {i} ({p!r}) is empty or not a string: write a caption such as "
                                  f"{ds.example_prompt!r}")
            try:
                ds.parse_prompt(p)
            except ValueError as e:
                raise PromptError(str(e)) from None
        try:
            ids, mask = self.encoder.tokenizer.encode(list(prompts))
        except (ValueError, TypeError) as e:
            raise PromptError(f"bad prompt: {e}") from None
        return text_condition(self.encoder, ids, mask)

    def train_data(self) -> tuple[dict, np.ndarray]:
        """(pairs, images): every training (image, caption) pair as {'index': image row, 'tokens', 'mask', 'pooled'}
        (each caption's frozen text condition, computed once), and the images the rows index: uint8 pixels, or
        in latent space their scaled latents float32 (encoded once)."""
        c = self.config
        num_digits = len(mnist.load_mnist(split="train", **mnist.source_args(c.data))[1])
        raw = self.dataset.make(c, "train", c.data.get("num_examples", 0) or c.data.train_copies * num_digits)
        captions = self.dataset.captions(raw)
        images = raw["image"]
        if self.codec is not None:
            start = time.time()
            images = self.codec.encode(clip.to_model_images(images))  # latent space is scenes only: RGB
            logging.info("latents of %d images in %.1f s", len(images), time.time() - start)
        ids, mask = self.encoder.tokenizer.encode(list(captions.reshape(-1)))
        start = time.time()
        cond = text_condition(self.encoder, ids, mask)
        logging.info("text condition of %d captions in %.1f s", len(ids), time.time() - start)
        index = np.repeat(np.arange(len(images), dtype=np.int32), captions.shape[1])
        return {"index": index, **cond}, images

    def load_state(self, workdir: str) -> TrainState:
        """The latest good U-Net state of `sample.checkpoint_workdir` (default `workdir`); FileNotFoundError naming
        the folder if there is none."""
        return self.task.load_for_sampling(workdir, "the text-to-image U-Net")[1]


def unet_workdir_of(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The run whose U-Net sampling and evaluation use: `sample.checkpoint_workdir`, or this run's `workdir`."""
    return config.sample.checkpoint_workdir or workdir


def load_for_sampling(config: ml_collections.ConfigDict, workdir: str) -> tuple[Pipeline, TrainState]:
    """The pipeline and U-Net state that `--mode=sample` and `--mode=eval` use (those of `sample.checkpoint_workdir`
    when set, with the CLIP and autoencoder that run recorded), checked against what the U-Net was trained on."""
    source = unet_workdir_of(config, workdir)
    pipeline = Pipeline.load(config, workdir, source)
    pipeline.check(source)
    return pipeline, pipeline.load_state(workdir)


def to_batch(pairs: dict, images: np.ndarray) -> dict:
    """A batch of `train_data` pairs (index, tokens, mask, pooled) -> the train step's {'image', 'cond'} batch:
    uint8 pixels scaled to [-1, 1], or latents as they are."""
    x = images[pairs["index"]]
    return {"image": x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x,
            "cond": {"tokens": pairs["tokens"], "mask": pairs["mask"], "pooled": pairs["pooled"]}}


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains CLIP (and in latent space the autoencoder) first if needed, then (or resumes) the text-conditioned
    U-Net; evaluates if train.final_eval."""
    validate_config(config)
    devices = jax.device_count()
    config_lib.check_batch_divides(config, "train.batch_size", devices)
    config_lib.nested("clip", config_lib.check_batch_divides, config, "train.batch_size", devices)
    if config.diffusion.space == "latent":
        config_lib.nested("autoencoder", config_lib.check_batch_divides, config, "train.batch_size", devices)
    classifier_lib.check_cache(os.path.join(workdir, "classifier"), seed=config.seed,
                               steps=config.eval.classifier_steps)
    ensure_clip(config, workdir)
    ensure_autoencoder(config, workdir)
    model = Pipeline.load(config, workdir)
    model.check(workdir, record=True)
    pairs, images = model.train_data()
    t = config.train
    titles = model.dataset.grid_prompts
    grid_prompts = [p for p in titles for _ in range(4)]
    state = model.task.train(
        workdir, lambda step: to_batch(pipeline.get_batch(pairs, t.batch_size, config.seed, step), images),
        grid_cond=model.prompt_condition(grid_prompts) if t.sample_every else None,
        grid_rows=[np.arange(4 * i, 4 * i + 4) for i in range(len(titles))], grid_titles=titles,
        description="txt2img", to_images=model.to_images)
    if t.final_eval:
        _evaluate(model, state, workdir=workdir)
    return state


def read_prompts(config: ml_collections.ConfigDict) -> list:
    """The prompts of `sample.prompts` (';'-separated) then `sample.prompts_file` (one a line, blank lines skipped)."""
    s = config.sample
    prompts = [p.strip() for p in str(s.prompts).split(";")] if str(s.prompts).strip() else []
    for i, p in enumerate(prompts):
        if not p:
            raise PromptError(f"config.sample.prompts={s.prompts!r}: prompt {i} is empty")
    if s.prompts_file:
        if not os.path.exists(s.prompts_file):
            raise FileNotFoundError(f"config.sample.prompts_file={s.prompts_file!r} does not exist")
        with open(s.prompts_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ConfigError("--mode=sample needs prompts: config.sample.prompts='a red 3 in the top left;...' "
                          "and/or config.sample.prompts_file=FILE")
    return prompts


def generate(model: Pipeline, params, prompts: list, *, num_per_prompt: int = 1, seed: Optional[int] = None,
             guidance: Optional[float] = None) -> np.ndarray:
    """Prompt in, image out: uint8 images [len(prompts) * num_per_prompt, H, W, 3], prompt-major.

    `params`: the U-Net weights as placed on the devices (`model.task.params_for_sampling(state)`: EMA if
    `sample.use_ema`), so repeated calls do not upload them again. The configured sampler and steps; `seed` and
    `guidance` default to `sample.seed` and `sample.guidance`, as `--mode=sample` draws. Image i depends only on (seed,
    i, its prompt, guidance), not on the device count. Compiles once per chunk size (a power of two up to
    `sample.batch_size`), not once per call.
    """
    s = model.config.sample
    cond = jax.tree.map(lambda a: np.repeat(a, num_per_prompt, axis=0), model.prompt_condition(list(prompts)))
    n = len(prompts) * num_per_prompt
    samples = model.task.sampler_for(n)(params, cond, seed=s.seed if seed is None else seed,
                                        guidance=s.guidance if guidance is None else guidance)
    return model.to_images(samples)


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=sample: `sample.num_per_prompt` images per prompt; writes npz + JSON + PNG; returns the npz path."""
    validate_config(config)
    prompts = read_prompts(config)
    source = unet_workdir_of(config, workdir)
    model = Pipeline.load(config, workdir, source)
    model.prompt_condition(prompts)  # errors before the U-Net is even loaded
    model.check(source)
    state = model.load_state(workdir)
    s = config.sample
    k = s.num_per_prompt
    start = time.time()
    images = generate(model, model.task.params_for_sampling(state), prompts, num_per_prompt=k, seed=s.seed,
                      guidance=s.guidance)
    seconds = time.time() - start
    path = s.output or os.path.join(workdir, "samples", "samples.npz")
    expanded = [p for p in prompts for _ in range(k)]
    info = {"sampling_seconds": seconds, "images_per_second": len(expanded) / seconds, "num_images": len(expanded),
            "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance": s.guidance,
            "guidance_interval": list(s.guidance_interval), "seed": s.seed,
            "use_ema": s.use_ema, "train_step": int(np.asarray(state.step))}
    if distributed.is_primary():
        write_samples(path, images, {"prompts": np.asarray(expanded)}, info,
                      [np.arange(i * k, (i + 1) * k) for i in range(len(prompts))], row_titles=prompts)
    print(f"sampled {len(expanded)} images for {len(prompts)} prompt(s) in {seconds:.1f} s -> {path}")
    return path


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Draws `eval.num_per_prompt` images for each of the dataset's evaluation prompts at each guidance scale and
    reads them with its checker (`_evaluate`)."""
    validate_config(config)
    classifier_lib.check_cache(os.path.join(workdir, "classifier"), seed=config.seed,
                               steps=config.eval.classifier_steps)
    return _evaluate(*load_for_sampling(config, workdir), workdir=workdir)


def _classifier(config: ml_collections.ConfigDict, workdir: str, autoencoder_dir: str = ""):
    """The attribute checker's digit classifier (real training digits only), trained once into WORKDIR/classifier.

    In latent space, when WORKDIR has none and the autoencoder's workdir `autoencoder_dir` holds one trained the same
    way (its evaluation's scene checker: same source, seed and steps), that one is read instead of training a copy.
    """
    directory = os.path.join(workdir, "classifier")
    if config.diffusion.space == "latent" and not os.path.exists(directory):
        a, shared = config.autoencoder, os.path.join(autoencoder_dir, "classifier")
        if (os.path.exists(os.path.join(shared, classifier_lib.PARAMS_FILENAME)) and
                (a.seed, mnist.source_args(a.data), a.eval.classifier_steps) ==
                (config.seed, mnist.source_args(config.data), config.eval.classifier_steps)):
            directory = shared
    return classifier_lib.load_or_train_on_source(directory, config.data, seed=config.seed,
                                                  steps=config.eval.classifier_steps)


def _write_eval(workdir: str, result: dict, config: ml_collections.ConfigDict) -> None:
    result.update({f"default_{k}": v for k, v in result["guidance"][f"{float(config.sample.guidance):g}"].items()})
    result["default_guidance"] = float(config.sample.guidance)
    if distributed.is_primary():
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)


def _evaluate(model: Pipeline, state: TrainState, *, workdir: str) -> dict:
    """Draws `eval.num_per_prompt` images for each evaluation prompt of the dataset (`eval_set`: captioned digits,
    all 300 canonical prompts; scenes, the first `eval.num_prompts` held-out test scenes' captions) at each guidance
    scale and reads them with the dataset's checker (`score`): per attribute, seen vs held-out pairs, beside the
    checker's ceiling on real images; also the CLIP score (and, one caption an image, the per-prompt diversity)."""
    config, task, ds = model.config, model.task, model.dataset
    e = config.eval
    ev = ds.eval_set(config)
    k = e.num_per_prompt
    prompts = ev["prompts"]
    want = {key: np.repeat(v, k, axis=0) for key, v in ev["want"].items()}
    cond = jax.tree.map(lambda a: np.repeat(a, k, axis=0), model.prompt_condition(prompts))
    classifier = _classifier(config, workdir, model.autoencoder_workdir)
    ceiling = ds.ceiling(classifier, ev["real"])
    result = {"checker_on_real_images": ceiling}
    if ds.multi_caption:
        result["space"] = model.space
        chunk = len(prompts) * k
    else:  # how the captioned-digits evaluation has always drawn: chunks of the prompt count
        real = ev["real"]
        real_clip = np.sum(model.encoder.embed_images(real["image"])
                           * model.prompt_condition(ds.real_captions(real))["pooled"], -1)
        result["real_clip_score"] = float(real_clip.mean())
        chunk = len(prompts)
    result["guidance"] = {}
    params = task.params_for_sampling(state)
    sampler = task.sampler(batch_size=min(config.sample.batch_size, chunk))
    for g in sorted({float(g) for g in e.guidance_scales} | {float(config.sample.guidance)}):
        start = time.time()
        images = model.to_images(sampler(params, cond, seed=config.sample.seed, guidance=g))
        seconds = time.time() - start
        scores = ds.score(classifier, images, want)
        scores["clip_score"] = float(np.mean(np.sum(model.encoder.embed_images(images) * cond["pooled"], -1)))
        if not ds.multi_caption:
            scores["diversity"] = checks.diversity(images, np.repeat(np.arange(len(prompts)), k))
        scores["sampling_seconds"] = seconds
        result["guidance"][f"{g:g}"] = scores
        if distributed.is_primary():
            rows = [np.arange(i * k, (i + 1) * k) for i in ev["grid_prompts"]]
            save_grid(os.path.join(workdir, "samples", f"eval_guidance_{g:g}.png"), images, rows,
                      row_titles=[prompts[i] for i in ev["grid_prompts"]])
    _write_eval(workdir, result, config)
    attrs = ds.attributes
    print(f"txt2img {ds.name} eval ({k} image(s) per prompt, {len(prompts)} prompts; {config.diffusion.space} "
          f"space; {config.sample.sampler} {config.sample.steps} steps):")
    print("  checker on real images: " + " ".join(f"{a} {ceiling.get(f'seen_{a}_accuracy', float('nan')):.3f}/"
                                                 f"{ceiling.get(f'heldout_{a}_accuracy', float('nan')):.3f}"
                                                 for a in attrs) + " (seen/held-out)"
          + (f"; real CLIP score {result['real_clip_score']:.3f}" if "real_clip_score" in result else ""))
    print(f"  guidance  seen({' '.join(attrs)})  held-out({' '.join(attrs)})  clip  diversity")
    for g, sc in result["guidance"].items():
        print(f"  {g:>8}  " + " ".join(f"{sc.get(f'seen_{a}_accuracy', float('nan')):.3f}" for a in attrs) + "   "
              + " ".join(f"{sc.get(f'heldout_{a}_accuracy', float('nan')):.3f}" for a in attrs)
              + f"   {sc['clip_score']:.3f}  {sc.get('diversity', float('nan')):.3f}")
    return result
