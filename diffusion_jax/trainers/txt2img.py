"""Text to image (phase 4): the digits U-Net, told the frozen CLIP text embedding of a caption instead of a label.

The train step, sampler and loop are the digit model's (`trainers/diffusion.py`, `trainers/loop.py`): only the
condition differs. It is the CLIP text tower's output for the caption, {'tokens': [B, L, W], 'mask': [B, L],
'pooled': [B, D]}; the U-Net cross-attends to the tokens and adds the pooled embedding to its timestep embedding.
The empty caption `<bos> <eos>` is the null condition of classifier-free guidance.

CLIP stays frozen, so each training caption's embeddings are computed once, before training, and the batches carry
them (`benchmarks/txt2img_speed.py` measures this against running the text tower inside the step).

Everything a run makes lives in its workdir:
  clip/                   the CLIP run (unless config.clip.workdir names another): trained first when it has no
                          finished checkpoint
  checkpoints/            orbax train states of the U-Net (resume from the latest good one)
  metrics.jsonl, tensorboard/, samples/step_*.png (fixed prompts during training)
  samples/samples.npz     --mode=sample: images (uint8 N x 32 x 32 x 3) and prompts (N strings), PNG grid beside it
  classifier/             the attribute checker's digit classifier (real training digits only)
  eval.json, samples/eval_guidance_*.png   --mode=eval (also after training when train.final_eval)
"""
import dataclasses
import itertools
import json
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax import config as config_lib
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.config import ConfigError
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist, pipeline
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation import txt2img as checks
from diffusion_jax.images import save_grid, write_samples
from diffusion_jax.trainers import clip, diffusion
from diffusion_jax.trainers.state import TrainState

IMAGE_SHAPE = (32, 32, 3)
# Prompts of the grids drawn during training: every digit once, seen and held-out (digit, colour) pairs, all layouts.
GRID_PROMPTS = tuple(cd.canonical_caption(d, cd.COLORS[(d + k) % 6], cd.LAYOUTS[(d + k) % 5])
                     for d in range(10) for k in (0, 3))


class PromptError(ConfigError):
    """A prompt cannot be used (empty, not a string, or only unknown words); the message names it."""


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the text-to-image task reads (and its CLIP config); raises ConfigError naming the key."""
    diffusion.validate_diffusion_config(config, image_size=IMAGE_SHAPE[0],
                                        positive=("sample.num_per_prompt", "eval.num_per_prompt"))
    config_lib.check_number(config, "data.train_copies", 1, 25)  # a digit has 25 colour x layout combinations
    if any(g < 0 for g in config.eval.guidance_scales):
        raise ConfigError(f"config.eval.guidance_scales={tuple(config.eval.guidance_scales)} must be >= 0")
    try:
        clip.validate_config(config.clip)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.", "config.clip.", 1)) from None


def clip_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where the frozen CLIP lives: `config.clip.workdir`, or WORKDIR/clip."""
    return config.clip.workdir or os.path.join(workdir, "clip")


def ensure_clip(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Trains (or finishes training) CLIP in the CLIP workdir unless it holds a finished checkpoint; returns it."""
    cw = clip_workdir(config, workdir)
    with Checkpointer(os.path.join(cw, "checkpoints")) as ckpt:
        step = ckpt.latest_step()
    if step is None or step < config.clip.train.num_steps:
        print(f"no finished CLIP checkpoint in {cw} (latest step {step}): training CLIP there first "
              f"({config.clip.train.num_steps} steps)")
        clip.train(config.clip, cw)
    return cw


def text_condition(encoder: clip.Encoder, ids: np.ndarray, mask: np.ndarray) -> dict:
    """Token ids/mask [N, L] -> the frozen text tower's {'tokens', 'mask', 'pooled'} as host arrays."""
    pooled, tokens = encoder.text(ids, mask)
    return {"tokens": tokens, "mask": np.asarray(mask, bool), "pooled": pooled}


@dataclasses.dataclass
class TextToImage:
    """The text-to-image model of one config: the diffusion task (U-Net, schedule, optimizer, samplers) and the
    frozen CLIP text encoder whose outputs condition it. `TextToImage.load` builds it from a workdir."""

    task: diffusion.DiffusionTask
    encoder: clip.Encoder

    @classmethod
    def load(cls, config: ml_collections.ConfigDict, workdir: str) -> "TextToImage":
        """Loads the frozen CLIP of `config.clip.workdir` (default WORKDIR/clip), once; the U-Net state is loaded
        by `load_state`. FileNotFoundError naming the CLIP workdir if it holds no trained CLIP."""
        encoder = clip.load(config.clip, clip_workdir(config, workdir))
        ids, mask = encoder.tokenizer.encode_empty()
        null_cond = jax.tree.map(lambda a: a[0], text_condition(encoder, ids[None], mask[None]))
        return cls(diffusion.DiffusionTask(config, image_shape=IMAGE_SHAPE, null_cond=null_cond), encoder)

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.task.config

    def prompt_condition(self, prompts: list) -> dict:
        """Prompts -> condition; a bad prompt raises PromptError naming it, unknown words inside a good prompt warn."""
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise PromptError(f"prompt {i} ({p!r}) is empty or not a string: write a caption such as "
                                  f"{cd.canonical_caption(3, 'red', 'top left')!r}")
        try:
            ids, mask = self.encoder.tokenizer.encode(list(prompts))
        except (ValueError, TypeError) as e:
            raise PromptError(f"bad prompt: {e}") from None
        return text_condition(self.encoder, ids, mask)

    def train_data(self) -> dict:
        """Captioned training digits (uint8 images) with each caption's frozen text condition, computed once."""
        c = self.config
        num_digits = len(mnist.load_mnist(c.data.source, "train")[1])
        raw = cd.make_dataset("train", seed=c.seed, source=c.data.source,
                              num_examples=c.data.train_copies * num_digits)
        ids, mask = self.encoder.tokenizer.encode(list(raw["caption"]))
        start = time.time()
        cond = text_condition(self.encoder, ids, mask)
        logging.info("text condition of %d captions in %.1f s", len(ids), time.time() - start)
        return {"image": raw["image"], **cond}

    def load_state(self, workdir: str) -> TrainState:
        """The latest good U-Net state of `sample.checkpoint_workdir` (default `workdir`); FileNotFoundError naming
        the folder if there is none."""
        return self.task.load_for_sampling(workdir, "the text-to-image U-Net")[1]


def to_batch(arrays: dict) -> dict:
    """Flat host arrays (image uint8, tokens, mask, pooled) -> the train step's {'image', 'cond'} batch."""
    return {"image": arrays["image"].astype(np.float32) / 127.5 - 1.0,
            "cond": {"tokens": arrays["tokens"], "mask": arrays["mask"], "pooled": arrays["pooled"]}}


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains CLIP first if needed, then (or resumes) the text-conditioned U-Net; evaluates if train.final_eval."""
    validate_config(config)
    ensure_clip(config, workdir)
    model = TextToImage.load(config, workdir)
    data = model.train_data()
    t = config.train
    grid_prompts = [p for p in GRID_PROMPTS for _ in range(4)]
    state = model.task.train(
        workdir, lambda step: to_batch(pipeline.get_batch(data, t.batch_size, config.seed, step)),
        grid_cond=model.prompt_condition(grid_prompts) if t.sample_every else None,
        grid_rows=[np.arange(4 * i, 4 * i + 4) for i in range(len(GRID_PROMPTS))], grid_titles=GRID_PROMPTS,
        description="txt2img")
    if t.final_eval:
        _evaluate(model, workdir, state)
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


def generate(model: TextToImage, state: TrainState, prompts: list, *, num_per_prompt: int = 1, seed: int = 0,
             guidance: Optional[float] = None) -> np.ndarray:
    """Prompt in, image out: uint8 images [len(prompts) * num_per_prompt, 32, 32, 3], prompt-major.

    Uses the EMA weights if `sample.use_ema`, the configured sampler and steps, and `guidance` (default
    `sample.guidance`). Image i depends only on (seed, i, its prompt, guidance), not on the device count. Compiles
    once per chunk size (a power of two up to `sample.batch_size`), not once per call.
    """
    s = model.config.sample
    cond = jax.tree.map(lambda a: np.repeat(a, num_per_prompt, axis=0), model.prompt_condition(list(prompts)))
    n = len(prompts) * num_per_prompt
    images = model.task.sampler_for(n)(model.task.params_for_sampling(state), cond, seed=seed,
                                       guidance=s.guidance if guidance is None else guidance)
    return mnist.to_uint8_images(images)


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=sample: `sample.num_per_prompt` images per prompt; writes npz + JSON + PNG; returns the npz path."""
    validate_config(config)
    prompts = read_prompts(config)
    model = TextToImage.load(config, workdir)
    model.prompt_condition(prompts)  # errors before the U-Net is even loaded
    state = model.load_state(workdir)
    s = config.sample
    k = s.num_per_prompt
    start = time.time()
    images = generate(model, state, prompts, num_per_prompt=k, seed=s.seed, guidance=s.guidance)
    seconds = time.time() - start
    path = s.output or os.path.join(workdir, "samples", "samples.npz")
    expanded = [p for p in prompts for _ in range(k)]
    info = {"sampling_seconds": seconds, "images_per_second": len(expanded) / seconds, "num_images": len(expanded),
            "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "guidance": s.guidance, "seed": s.seed,
            "use_ema": s.use_ema, "train_step": int(np.asarray(state.step))}
    if jax.process_index() == 0:
        write_samples(path, images, {"prompts": np.asarray(expanded)}, info,
                      [np.arange(i * k, (i + 1) * k) for i in range(len(prompts))], row_titles=prompts)
    print(f"sampled {len(expanded)} images for {len(prompts)} prompt(s) in {seconds:.1f} s -> {path}")
    return path


def canonical_prompts() -> tuple[list, np.ndarray]:
    """All 300 canonical prompts (digit x colour x layout) and their (digit, colour, layout) indices [300, 3]."""
    combos = np.asarray(list(itertools.product(range(10), range(len(cd.COLORS)), range(len(cd.LAYOUTS)))))
    return [cd.canonical_caption(int(d), cd.COLORS[c], cd.LAYOUTS[l]) for d, c, l in combos], combos


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Draws `eval.num_per_prompt` images for each of the 300 canonical prompts at each guidance scale and checks
    digit, colour and layout (seen vs held-out pairs), the CLIP score and the per-prompt diversity."""
    validate_config(config)
    model = TextToImage.load(config, workdir)
    return _evaluate(model, workdir, model.load_state(workdir))


def _evaluate(model: TextToImage, workdir: str, state: TrainState) -> dict:
    config, task = model.config, model.task
    e = config.eval
    prompts, combos = canonical_prompts()
    k = e.num_per_prompt
    combos = np.repeat(combos, k, axis=0)
    heldout = np.asarray([cd.is_heldout(int(d), int(c)) for d, c, _ in combos])
    cond = jax.tree.map(lambda a: np.repeat(a, k, axis=0), model.prompt_condition(prompts))
    text_emb = cond["pooled"]
    digits_train = mnist.load_mnist(config.data.source, "train")
    digits_test = mnist.load_mnist(config.data.source, "test")
    classifier = classifier_lib.load_or_train_classifier(
        os.path.join(workdir, "classifier"), mnist.to_model_images(digits_train[0]), digits_train[1],
        seed=config.seed, heldout_images=mnist.to_model_images(digits_test[0]), heldout_labels=digits_test[1],
        steps=e.classifier_steps)
    real = cd.make_dataset("test", seed=config.seed + 1, source=config.data.source)
    ceiling = checks.check_real_ceiling(classifier, real)
    real_clip = np.sum(model.encoder.embed_images(real["image"])
                       * model.prompt_condition([cd.canonical_caption(d, c, l) for d, c, l in
                                                zip(real["digit"], real["color"], real["layout"])])["pooled"], -1)
    result = {"checker_on_real_images": ceiling, "real_clip_score": float(real_clip.mean()), "guidance": {}}
    params = task.params_for_sampling(state)
    sampler = task.sampler(batch_size=min(config.sample.batch_size, len(prompts)))
    scales = sorted({float(g) for g in e.guidance_scales} | {float(config.sample.guidance)})
    for g in scales:
        start = time.time()
        images = mnist.to_uint8_images(sampler(params, cond, seed=config.sample.seed, guidance=g))
        seconds = time.time() - start
        found = checks.check_attributes(classifier, images)
        scores = checks.attribute_scores(found, combos[:, 0], combos[:, 1], combos[:, 2], heldout)
        image_emb = model.encoder.embed_images(images)
        scores["clip_score"] = float(np.mean(np.sum(image_emb * text_emb, -1)))
        scores["diversity"] = checks.diversity(images, np.repeat(np.arange(len(prompts)), k))
        scores["sampling_seconds"] = seconds
        result["guidance"][f"{g:g}"] = scores
        if jax.process_index() == 0:
            rows = [np.arange(i * k, (i + 1) * k) for i in range(0, len(prompts), 5)]  # the 60 centred prompts
            save_grid(os.path.join(workdir, "samples", f"eval_guidance_{g:g}.png"), images, rows,
                      row_titles=prompts[::5])
    result.update({f"default_{key}": v for key, v in result["guidance"][f"{float(config.sample.guidance):g}"].items()})
    result["default_guidance"] = float(config.sample.guidance)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    print(f"txt2img eval ({k} image(s) per canonical prompt, {len(prompts)} prompts; "
          f"{config.sample.sampler} {config.sample.steps} steps):")
    print(f"  attribute checker on real images: all-correct seen {ceiling['seen_all_accuracy']:.3f} "
          f"held-out {ceiling['heldout_all_accuracy']:.3f}; real CLIP score {result['real_clip_score']:.3f}")
    print("  guidance  seen(all digit colour layout)        held-out(all digit colour layout)      clip  diversity")
    for g, s in result["guidance"].items():
        print(f"  {g:>8}  " + " ".join(f"{s[f'seen_{a}_accuracy']:.3f}" for a in ("all", "digit", "color", "layout"))
              + "   " + " ".join(f"{s[f'heldout_{a}_accuracy']:.3f}" for a in ("all", "digit", "color", "layout"))
              + f"   {s['clip_score']:.3f}  {s['diversity']:.3f}")
    return result
