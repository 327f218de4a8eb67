"""CLIP on captioned digits (phase 3): contrastive training, zero-shot evaluation, retrieval, embeddings.

Reuses the shared loop, checkpoints and data-parallel lift of the digits task. The tokenizer is built from the
training captions and saved beside the checkpoints (`workdir/tokenizer.json`); a resumed run reloads it.
"""
import itertools
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import pipeline
from diffusion_jax.models.clip import CLIP
from diffusion_jax.parallel import AXIS, DataParallel
from diffusion_jax.text.tokenizer import Tokenizer
from diffusion_jax.trainers import loop
from diffusion_jax.config import ConfigError
from diffusion_jax.trainers.contrastive import infonce_loss, sigmoid_loss
from diffusion_jax.trainers.state import TrainState, apply_gradients, make_optimizer

IMAGE_SHAPE = (32, 32, 3)


def to_model_images(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N,32,32,3] -> float32 in [-1, 1]."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


class ClipTask:
    """Model, tokenizer, optimizer and data-parallel plumbing described by a CLIP config and its workdir."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.dp = DataParallel(config.train.parallel)
        path = os.path.join(workdir, "tokenizer.json")
        if os.path.exists(path):
            self.tokenizer = Tokenizer.load(path)
        else:
            captions = cd.make_dataset("train", seed=config.seed, source=config.data.source)["caption"]
            prompts = [cd.canonical_caption(d, c, l, numeral=n) for d, c, l, n in
                       itertools.product(range(10), cd.COLORS, cd.LAYOUTS, (True, False))]
            self.tokenizer = Tokenizer.build(list(captions) + prompts, max_length=config.model.max_length)
            if jax.process_index() == 0:
                self.tokenizer.save(path)
        m = config.model
        self.model = CLIP(vocab_size=self.tokenizer.vocab_size, max_length=m.max_length, embed_dim=m.embed_dim,
                          image_channels=tuple(m.image_channels), text_width=m.text_width,
                          text_layers=m.text_layers, text_heads=m.text_heads, norm_groups=m.norm_groups,
                          factorize_color=m.get("factorize_color", False))
        # Encoders jitted once per task: evaluation and embedding reuse them instead of re-tracing per call.
        self.encode_image = jax.jit(lambda p, x: self.model.apply(p, x, method=CLIP.encode_image))
        self.encode_text = jax.jit(lambda p, i, m: self.model.apply(p, i, m, method=CLIP.encode_text))
        t = config.train
        self.tx = make_optimizer(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, num_steps=t.num_steps,
                                 weight_decay=t.weight_decay, grad_clip=t.grad_clip)

    def init_state(self) -> TrainState:
        ids = np.zeros((2, self.config.model.max_length), np.int32)
        params = self.model.init(jax.random.key(self.config.seed), np.zeros((2,) + IMAGE_SHAPE, np.float32), ids,
                                 ids > 0)
        return TrainState.create(params, self.tx)

    def data(self, split: str, model_images: bool = True) -> dict:
        """One split, tokenized; images as model inputs in [-1, 1] or, with `model_images=False`, as uint8.

        'train' has `config.data.train_copies` examples per training digit (each a different colour and layout).
        """
        copies = self.config.data.get("train_copies", 2)
        if split == "train" and not 1 <= copies <= 25:
            raise ConfigError(f"config.data.train_copies={copies} must be in [1, 25] (a digit has 25 allowed "
                              f"colour x layout combinations)")
        raw = cd.make_dataset(split, seed=self.config.seed if split == "train" else self.config.seed + 1,
                              source=self.config.data.source,
                              num_examples=copies * self.num_train_digits() if split == "train" else None)
        ids, mask = self.tokenizer.encode(list(raw["caption"]))
        images = to_model_images(raw["image"]) if model_images else raw["image"]
        return {"image": images, "ids": ids, "mask": mask, "digit": raw["digit"],
                "color": raw["color"], "layout": raw["layout"], "heldout_combo": raw["heldout_combo"]}

    def num_train_digits(self) -> int:
        from diffusion_jax.data.mnist import load_mnist
        return len(load_mnist(self.config.data.source, "train")[1])

    def train_batch(self, data: dict, step: int) -> dict:
        """Batch `step` of the seeded stream of uint8 `data`, shift-augmented (`config.data.max_shift`), as model
        inputs. A pure function of (seed, step), so a resumed run sees the same augmented batches."""
        c = self.config
        b = pipeline.get_batch(data, c.train.batch_size, c.seed, step)
        images = cd.random_shift(b["image"], c.data.get("max_shift", 0), np.random.default_rng([c.seed, step, 7]))
        return dict(b, image=to_model_images(images))


LOSSES = ("infonce", "sigmoid")


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
            return infonce_loss(img, txt, scale, axis_name=AXIS)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = lax.pmean(grads, AXIS)
        new_state = apply_gradients(state, grads, tx, ema_decay)
        return new_state, {"loss": lax.pmean(loss, AXIS), "grad_norm": optax.tree.norm(grads)}

    return train_step


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    task = ClipTask(config, workdir)
    data = {k: v for k, v in task.data("train", model_images=False).items() if k in ("image", "ids", "mask")}
    t = config.train
    step = task.dp.lift(make_train_step(task.model, task.tx, t.ema_decay, t.loss), ("replicated", "sharded"),
                        ("replicated", "replicated"), donate_argnums=(0,))
    state = loop.train_loop(workdir=workdir, dp=task.dp, init_state=task.init_state, train_step=step,
                            get_batch=lambda s: task.train_batch(data, s),
                            num_steps=t.num_steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                            max_to_keep=t.max_to_keep, progress=t.progress, description="clip")
    if t.final_eval:
        evaluate(config, workdir, state=state, task=task)
    return state


def _embed(task: ClipTask, params, images: Optional[np.ndarray] = None, ids=None, mask=None, batch: int = 500):
    fn = task.encode_image if images is not None else (lambda p, i, m: task.encode_text(p, i, m)[0])
    n = len(images) if images is not None else len(ids)
    out = []
    for s in range(0, n, batch):
        out.append(np.asarray(fn(params, images[s:s + batch]) if images is not None else
                              fn(params, ids[s:s + batch], mask[s:s + batch])))
    return np.concatenate(out)


def load_state(task: ClipTask, workdir: str) -> TrainState:
    """The latest good CLIP train state in `workdir` (FileNotFoundError naming the folder if there is none)."""
    from diffusion_jax.checkpoint import Checkpointer
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        restored = ckpt.restore(jax.eval_shape(task.init_state))
    if restored is None:
        raise FileNotFoundError(f"no CLIP checkpoint in {workdir}/checkpoints: train first (--mode=train)")
    return restored[1]


def embed_texts(task: ClipTask, params, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts -> (pooled L2-normalised [T, D], token embeddings [T, L, width], mask [T, L]).

    Tokenizer errors name the text: empty or non-string input, or a text made only of unknown words; unknown words
    inside a good text are reported as a warning; over-long text is truncated with a warning.
    """
    ids, mask = task.tokenizer.encode(list(texts))
    pooled, tokens = task.encode_text(params, ids, mask)
    return np.asarray(pooled), np.asarray(tokens), mask


def embed_images(task: ClipTask, params, images_uint8: np.ndarray) -> np.ndarray:
    """uint8 images [N, 32, 32, 3] -> L2-normalised embeddings [N, D]."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images_uint8.dtype} {images_uint8.shape}")
    return _embed(task, params, images=to_model_images(images_uint8))


def embed(config: ml_collections.ConfigDict, workdir: str) -> str:
    """--mode=embed: embeddings of `embed.texts_file` (one text a line) and/or `embed.images` (npz with `images`)
    written to `embed.output` as `text_embeddings` [T, D] and `image_embeddings` [N, D], in the order given."""
    e = config.embed
    if not e.texts_file and not e.images:
        raise ConfigError("--mode=embed needs config.embed.texts_file and/or config.embed.images")
    if not str(e.output).endswith(".npz"):
        raise ConfigError(f"config.embed.output={e.output!r} must be a .npz path")
    task = ClipTask(config, workdir)
    params = load_state(task, workdir).ema_params
    out = {}
    if e.texts_file:
        if not os.path.exists(e.texts_file):
            raise FileNotFoundError(f"config.embed.texts_file={e.texts_file!r} does not exist")
        with open(e.texts_file) as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        out["text_embeddings"] = embed_texts(task, params, texts)[0]
    if e.images:
        if not os.path.exists(e.images):
            raise FileNotFoundError(f"config.embed.images={e.images!r} does not exist")
        with np.load(e.images) as f:
            if "images" not in f:
                raise ValueError(f"{e.images} has no 'images' array (got {sorted(f.files)})")
            out["image_embeddings"] = embed_images(task, params, f["images"])
    if os.path.exists(e.output):
        raise FileExistsError(f"config.embed.output={e.output!r} exists; choose a new path (nothing overwritten)")
    os.makedirs(os.path.dirname(os.path.abspath(e.output)), exist_ok=True)
    np.savez(e.output, **out)
    print(f"embeddings -> {e.output}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))
    return e.output


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, state: Optional[TrainState] = None,
             task: Optional[ClipTask] = None) -> dict:
    """Zero-shot digit/colour/layout accuracy (300-way canonical prompts) on held-out images, seen vs held-out pairs."""
    task = task or ClipTask(config, workdir)
    params = (state or load_state(task, workdir)).ema_params
    combos = list(itertools.product(range(10), range(len(cd.COLORS)), range(len(cd.LAYOUTS))))
    prompts = [cd.canonical_caption(d, cd.COLORS[c], cd.LAYOUTS[l]) for d, c, l in combos]
    ids, mask = task.tokenizer.encode(prompts)
    text = _embed(task, params, ids=ids, mask=mask)
    ev = task.data("test")
    images = _embed(task, params, images=ev["image"])
    pred = np.asarray(combos)[np.argmax(images @ text.T, axis=1)]
    result = {}
    for name, subset in (("seen", ~ev["heldout_combo"]), ("heldout", ev["heldout_combo"])):
        for i, attr in enumerate(("digit", "color", "layout")):
            result[f"{name}_{attr}_accuracy"] = float(np.mean(pred[subset, i] == ev[attr][subset]))
    # Retrieval on the held-out set with each image's own caption: is the paired item among the top k?
    captions = _embed(task, params, ids=ev["ids"], mask=ev["mask"])
    sim = images @ captions.T
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = np.sum(s > np.diag(s)[:, None], axis=1)  # how many items beat the true pair
        for k in (1, 5):
            result[f"{direction}_recall@{k}"] = float(np.mean(rank < k))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    print("clip zero-shot:", " ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result
