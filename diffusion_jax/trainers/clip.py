"""CLIP (phase 3): contrastive training, zero-shot evaluation, retrieval, embeddings, and on two-digit scenes a
binding test.

`config.data.dataset` picks the data: 'captioned_digits' (one 32x32 digit, its colour and position) or 'scenes'
(two digits in a relation on a 64x64 canvas, `data/scenes.py`). On scenes, `train.hard_negatives` adds each
caption's binding negatives (colours swapped, digits swapped, relation flipped) to the image->text softmax
(NegCLIP's recipe; `train.digit_negatives` adds two that replace a digit), and the evaluation reports how often the
true caption outscores each kind of negative.

Reuses the shared loop, checkpoints and data-parallel lift of the digits task. The tokenizer is built from the
training captions and saved beside the checkpoints (`workdir/tokenizer.json`) by `train`; a resumed run, and every
user of a trained CLIP (`load`), reloads it. `ClipTask` does no I/O: it is given its tokenizer.
"""
import hashlib
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from diffusion_jax import config as config_lib
from diffusion_jax import distributed
from diffusion_jax.config import ConfigError
from diffusion_jax import datasets
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist, pipeline
from diffusion_jax.data import scenes
from diffusion_jax.models.clip import CLIP, POOLS, clamp_logit_scale
from diffusion_jax.parallel import AXIS, MODES
from diffusion_jax.text.tokenizer import Tokenizer
from diffusion_jax.trainers.contrastive import infonce_loss, sigmoid_loss
from diffusion_jax.trainers.state import TrainState, apply_gradients
from diffusion_jax.trainers.task import Task

IMAGE_SHAPE = datasets.CaptionedDigits.image_shape


def to_model_images(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,3] -> float32 in [-1, 1]."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


LOSSES = ("infonce", "sigmoid")
TOKENIZER_FILE = "tokenizer.json"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the CLIP task reads; raises ConfigError naming the first bad key."""
    config_lib.check_data_source(config, mnist.SOURCES)
    dataset = datasets.check(config)
    dataset.validate(config)
    config_lib.check_choice(config, "model.pool", POOLS)
    config_lib.check_number(config, "model.stem_stride", 1, 4)
    config_lib.check_choice(config, "train.loss", LOSSES)
    if config.train.hard_negatives and (dataset.name != "scenes" or config.train.loss != "infonce"):
        raise ConfigError(f"config.train.hard_negatives=True needs config.data.dataset='scenes' and "
                          f"config.train.loss='infonce' (got {config.data.dataset!r}, {config.train.loss!r})")
    if config.train.digit_negatives and not config.train.hard_negatives:
        raise ConfigError("config.train.digit_negatives=True adds to NegCLIP's negatives: it needs "
                          "config.train.hard_negatives=True")
    config_lib.check_choice(config, "train.parallel", MODES)
    config_lib.check_number(config, "data.train_copies", 1, 25)  # a digit has 25 colour x layout combinations
    config_lib.check_number(config, "data.max_shift", 0)
    for key in ("model.max_length", "model.embed_dim", "model.text_width", "model.text_layers", "model.text_heads",
                "model.norm_groups", "train.num_steps", "train.batch_size", "train.log_every",
                "train.checkpoint_every", "train.max_to_keep"):
        config_lib.check_number(config, key)
    for key in ("train.learning_rate", "train.grad_clip"):
        config_lib.check_number(config, key, minimum=1e-12)
    for key in ("train.warmup_steps", "train.weight_decay"):
        config_lib.check_number(config, key, minimum=0)
    config_lib.check_number(config, "train.ema_decay", 0.0, 1.0)
    if not config.model.image_channels or any(int(ch) < 1 for ch in config.model.image_channels):
        raise ConfigError(f"config.model.image_channels={tuple(config.model.image_channels)!r} must be positive widths")


def build_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The vocabulary of the training captions and every canonical prompt (renders the training captions)."""
    return Tokenizer.build(datasets.get(config.data.dataset).tokenizer_texts(config),
                           max_length=config.model.max_length)


def scene_negatives(captions: Sequence[str], replace_digits: bool = False,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """The hard-negative captions [N, 3] of scene captions, in `scenes.HARD_NEGATIVE_KINDS` order, each written in
    its caption's own form (object order, numerals or words): a negative differs from its caption in what it says
    only, never in how, so the form cannot give it away. A 'swap_digits' that would be the same scene (equal
    digits) is replaced by the 'swap_colors' caption (the batch keeps its shape).

    With `replace_digits`, [N, 5]: two more per caption, its first and then its second object's digit replaced by
    another digit (drawn from `rng`; never one that makes a held-out (digit, colour) pair). A swap can be told
    apart by binding alone; a replaced digit only by reading it (SugarCrepe's "replace" negatives).
    """
    kinds = len(scenes.HARD_NEGATIVE_KINDS)
    out = np.empty((len(captions), kinds + 2 * replace_digits), dtype=object)
    for i, caption in enumerate(captions):
        (d, c, r), numeral = scenes.parse_prompt(caption), scenes.caption_numerals(caption)
        negatives = scenes.hard_negatives(d, c, r, numeral)
        out[i, :kinds] = [negatives[k] or negatives["swap_colors"] for k in scenes.HARD_NEGATIVE_KINDS]
        for j in range(2 if replace_digits else 0):
            others = [x for x in range(mnist.NUM_CLASSES) if x != d[j] and not cd.is_heldout(x, c[j])]
            new = list(d)
            new[j] = others[rng.integers(len(others))]
            out[i, kinds + j] = scenes.canonical_caption(new, c, r, numeral)
    return out


def load_tokenizer(workdir: str) -> Tokenizer:
    """The tokenizer saved by `train` in a CLIP workdir; FileNotFoundError naming the workdir if there is none."""
    path = os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no CLIP in {workdir} (no {TOKENIZER_FILE}): train it first with --mode=train")
    return Tokenizer.load(path)


class ClipTask(Task):
    """The CLIP model of a (validated) CLIP config and its tokenizer, on the shared task plumbing (`Task`)."""

    def __init__(self, config: ml_collections.ConfigDict, tokenizer: Tokenizer):
        super().__init__(config)
        self.tokenizer = tokenizer
        self.dataset = datasets.get(config.data.dataset)
        self.image_shape = self.dataset.image_shape
        m = config.model
        self.model = CLIP(vocab_size=tokenizer.vocab_size, max_length=m.max_length, embed_dim=m.embed_dim,
                          image_channels=tuple(m.image_channels), text_width=m.text_width,
                          text_layers=m.text_layers, text_heads=m.text_heads, norm_groups=m.norm_groups,
                          factorize_color=m.factorize_color, image_stem_stride=m.stem_stride, image_pool=m.pool)

    def init_params(self):
        ids = np.zeros((2, self.config.model.max_length), np.int32)
        return self.model.init(jax.random.key(self.config.seed), np.zeros((2,) + self.image_shape, np.float32), ids,
                               ids > 0)

    def make_train_step(self):
        t = self.config.train
        return make_train_step(self.model, self.tx, t.ema_decay, t.loss)

    def data(self, split: str, model_images: bool = True) -> dict:
        """One split, tokenized; images as model inputs in [-1, 1] or, with `model_images=False`, as uint8, and what
        the dataset says of each image (`label_keys`).

        'train' has `config.data.train_copies` examples per training digit (each a different colour and layout), or
        `data.num_examples`. Several captions an image (scenes): ids/mask [N, K, L], one drawn per step by
        `train_batch`; with `train.hard_negatives`, also the caption strings, from which `train_batch` writes the
        negatives of the caption it draws.
        """
        c, ds = self.config, self.dataset
        num = None
        if split == "train":
            num = c.data.get("num_examples", 0) or (
                c.data.train_copies * len(mnist.load_mnist(split="train", **mnist.source_args(c.data))[1]))
        raw = ds.make(c, split, num)
        captions = ds.captions(raw)
        n, k = captions.shape
        ids, mask = self.tokenizer.encode(list(captions.reshape(-1)))
        if ds.multi_caption:
            ids, mask = ids.reshape(n, k, -1), mask.reshape(n, k, -1)
        out = {"image": to_model_images(raw["image"]) if model_images else raw["image"], "ids": ids, "mask": mask,
               **{key: raw[key] for key in ds.label_keys}}
        if c.train.hard_negatives and split == "train":  # the negatives are written per step (`train_batch`)
            out["captions"] = captions
        return out

    def train_batch(self, data: dict, step: int) -> dict:
        """Batch `step` of the seeded stream of uint8 `data`, shift-augmented (`config.data.max_shift`), as model
        inputs; with several captions per image, one drawn per example. A pure function of (seed, step), so a
        resumed run sees the same augmented batches."""
        c = self.config
        b = pipeline.get_batch(data, c.train.batch_size, c.seed, step)
        images = cd.random_shift(b["image"], c.data.max_shift, np.random.default_rng([c.seed, step, 7]))
        out = {"image": to_model_images(images), "ids": b["ids"], "mask": b["mask"]}
        if b["ids"].ndim == 3:  # several captions per image: one per example, drawn from (seed, step)
            pick = np.random.default_rng([c.seed, step, 11]).integers(0, b["ids"].shape[1], len(images))
            rows = np.arange(len(images))
            out.update(ids=b["ids"][rows, pick], mask=b["mask"][rows, pick])
        if c.train.hard_negatives:  # NegCLIP: the negatives of each drawn caption, in its form (`scene_negatives`)
            texts = b["captions"][rows, pick] if b["ids"].ndim == 3 else b["captions"][:, 0]
            negatives = scene_negatives(texts, c.train.digit_negatives, np.random.default_rng([c.seed, step, 13]))
            neg_ids, neg_mask = self.tokenizer.encode(list(negatives.reshape(-1)))
            out.update(neg_ids=neg_ids.reshape(*negatives.shape, -1), neg_mask=neg_mask.reshape(*negatives.shape, -1))
        return out


def make_train_step(model: CLIP, tx: optax.GradientTransformation, ema_decay: float, loss_name: str = "infonce"):
    """Per-device step: a contrastive loss over the GLOBAL batch (embeddings all-gathered along the device axis).

    `loss_name`: 'infonce' (CLIP's symmetric cross-entropy) or 'sigmoid' (SigLIP's pairwise loss, for ablations).
    """
    if loss_name not in LOSSES:
        raise ConfigError(f"config.train.loss={loss_name!r} is not one of {LOSSES}")

    def train_step(state: TrainState, batch: dict):
        def loss_fn(params):
            img, txt, scale = model.apply(params, batch["image"], batch["ids"], batch["mask"])
            if loss_name == "sigmoid":
                return sigmoid_loss(img, txt, scale, model.apply(params, method=CLIP.bias), axis_name=AXIS)
            negatives = None
            if "neg_ids" in batch:  # NegCLIP: [b, K, L] hard-negative captions, K per image
                length = batch["neg_ids"].shape[-1]
                negatives = model.apply(params, batch["neg_ids"].reshape(-1, length),
                                        batch["neg_mask"].reshape(-1, length), method=CLIP.encode_text)[0]
            return infonce_loss(img, txt, scale, axis_name=AXIS, negative_text_emb=negatives)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = lax.pmean(grads, AXIS)
        new_state = apply_gradients(state, grads, tx, ema_decay,
                                    constrain=lambda p: clamp_logit_scale(p, model.logit_scale_max))
        return new_state, {"loss": lax.pmean(loss, AXIS), "grad_norm": optax.tree.norm(grads),
                           "logit_scale": jnp.exp(new_state.params["params"]["logit_scale"])}

    return train_step


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) CLIP in `workdir`: builds and saves the tokenizer on the first run, reloads it after;
    evaluates if `train.final_eval`. Returns the host state."""
    validate_config(config)
    config_lib.check_batch_divides(config, "train.batch_size", jax.device_count())
    path = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.exists(path):
        tokenizer = Tokenizer.load(path)
    else:
        tokenizer = build_tokenizer(config)
        if distributed.is_primary():
            os.makedirs(workdir, exist_ok=True)
            tokenizer.save(path)
    task = ClipTask(config, tokenizer)
    data = {k: v for k, v in task.data("train", model_images=False).items()
            if k in ("image", "ids", "mask", "captions")}
    state = task.train_loop(workdir, lambda s: task.train_batch(data, s), description="clip")
    if config.train.final_eval:
        _evaluate(config, workdir, Encoder(task, state.ema_params, step=int(np.asarray(state.step))))
    return state


def load_state(task: ClipTask, workdir: str) -> tuple[int, TrainState]:
    """(step, state) of the latest good CLIP checkpoint in `workdir` (FileNotFoundError naming the folder if there is
    none)."""
    return task.load_state(workdir, hint="(CLIP): train CLIP first (--mode=train)")


# The parameters whose outputs condition a text-to-image U-Net: the text tower's tokens and the projected pooled text.
TEXT_PARAMS = ("text_tower", "text_proj")


class Encoder:
    """A trained CLIP's two towers for inference: texts and images in, embeddings out (host arrays).

    The towers are jitted once per encoder, and inputs go through them in chunks padded to a fixed size
    (`pipeline.bucket_size`: the next power of two, at most `chunk`), so any number of inputs compiles once per
    bucket instead of once per remainder size. `step` is the training step of `params` (-1: unknown).
    """

    def __init__(self, task: ClipTask, params, chunk: int = 500, step: int = -1):
        self.task, self.params, self.chunk, self.step = task, params, chunk, int(step)
        self.tokenizer = task.tokenizer
        self._image = jax.jit(lambda p, x: task.model.apply(p, x, method=CLIP.encode_image))
        self._text = jax.jit(lambda p, i, m: task.model.apply(p, i, m, method=CLIP.encode_text))

    def _chunked(self, fn, arrays) -> Any:
        n = len(jax.tree.leaves(arrays)[0])
        out = [jax.tree.map(lambda a, k=count: np.asarray(a)[:k], fn(self.params, *chunk))
               for chunk, count in pipeline.padded_chunks(arrays, pipeline.bucket_size(n, self.chunk))]
        return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

    def text(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids/mask [N, L] -> (pooled L2-normalised [N, D], token embeddings [N, L, width])."""
        return self._chunked(self._text, (np.asarray(ids), np.asarray(mask)))

    def images(self, images: np.ndarray) -> np.ndarray:
        """Model images [N, H, W, 3] in [-1, 1] -> L2-normalised embeddings [N, D]."""
        return self._chunked(self._image, (np.asarray(images, np.float32),))

    def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Texts -> (pooled L2-normalised [T, D], token embeddings [T, L, width], mask [T, L]).

        Tokenizer errors name the text: empty or non-string input, or a text made only of unknown words; unknown
        words inside a good text are reported as a warning; over-long text is truncated with a warning.
        """
        ids, mask = self.tokenizer.encode(list(texts))
        pooled, tokens = self.text(ids, mask)
        return pooled, tokens, mask

    def fingerprint(self) -> dict:
        """What a text-to-image U-Net records of the CLIP it was trained on, and is checked against when loaded: the
        step, the tokenizer's sha256 and a sha256 of the text tower's parameters (`TEXT_PARAMS`, in path order)."""
        digest = hashlib.sha256()
        text = {k: self.params["params"][k] for k in TEXT_PARAMS}
        for path, leaf in jax.tree_util.tree_flatten_with_path(text)[0]:
            array = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape};".encode())
            digest.update(array.tobytes())
        return {"step": self.step, "tokenizer_sha256": self.tokenizer.fingerprint(),
                "text_tower_sha256": digest.hexdigest()}

    def embed_images(self, images_uint8: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] (the task's image shape) -> L2-normalised embeddings [N, D]."""
        images_uint8 = np.asarray(images_uint8)
        shape = self.task.image_shape
        if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1:] != shape:
            raise ValueError(f"images must be uint8 [N, {', '.join(map(str, shape))}], got {images_uint8.dtype} "
                             f"{images_uint8.shape}")
        return self.images(to_model_images(images_uint8))


def load(config: ml_collections.ConfigDict, workdir: str) -> Encoder:
    """The trained CLIP in `workdir` (its tokenizer and EMA weights) as an `Encoder`: for notebooks, `--mode=embed`,
    evaluation and the frozen text tower of text to image. FileNotFoundError naming the workdir if it has none."""
    validate_config(config)
    task = ClipTask(config, load_tokenizer(workdir))
    step, state = load_state(task, workdir)
    return Encoder(task, state.ema_params, step=step)


def embed(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=embed: embeddings of `embed.texts_file` (one text a line) and/or `embed.images` (npz with `images`)
    written to `embed.output` as `text_embeddings` [T, D] and `image_embeddings` [N, D], in the order given."""
    e = config.embed
    if not e.texts_file and not e.images:
        raise ConfigError("--mode=embed needs config.embed.texts_file and/or config.embed.images")
    if not str(e.output).endswith(".npz"):
        raise ConfigError(f"config.embed.output={e.output!r} must be a .npz path")
    if distributed.primary_decides(os.path.exists(e.output)):  # checked before any work, decided by the writer
        raise FileExistsError(f"config.embed.output={e.output!r} exists; choose a new path (nothing overwritten)")
    encoder = load(config, workdir)
    out = {}
    if e.texts_file:
        if not os.path.exists(e.texts_file):
            raise FileNotFoundError(f"config.embed.texts_file={e.texts_file!r} does not exist")
        with open(e.texts_file) as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        out["text_embeddings"] = encoder.embed_texts(texts)[0]
    if e.images:
        if not os.path.exists(e.images):
            raise FileNotFoundError(f"config.embed.images={e.images!r} does not exist")
        with np.load(e.images) as f:
            if "images" not in f:
                raise ValueError(f"{e.images} has no 'images' array (got {sorted(f.files)})")
            out["image_embeddings"] = encoder.embed_images(f["images"])
    if distributed.is_primary():  # every process computed the same embeddings; one writes them
        if os.path.exists(e.output):
            raise FileExistsError(f"config.embed.output={e.output!r} appeared while embedding; nothing overwritten")
        os.makedirs(os.path.dirname(os.path.abspath(e.output)), exist_ok=True)
        np.savez(e.output, **out)
    print(f"embeddings -> {e.output}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))
    return e.output


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Zero-shot digit/colour/layout accuracy (300-way canonical prompts) on held-out images, seen vs held-out pairs,
    and retrieval recall; writes `workdir/eval.json`."""
    return _evaluate(config, workdir, load(config, workdir))


def _evaluate(config: ml_collections.ConfigDict, workdir: str, encoder: Encoder) -> dict:
    result = encoder.task.dataset.clip_eval(encoder)
    if distributed.is_primary():
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    print("clip zero-shot:", " ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result
