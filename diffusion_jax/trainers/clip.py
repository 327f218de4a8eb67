"""CLIP on captioned digits (phase 3): contrastive training, zero-shot evaluation, embeddings. Work in progress.

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
from diffusion_jax.trainers.contrastive import infonce_loss
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
                          text_layers=m.text_layers, text_heads=m.text_heads, norm_groups=m.norm_groups)
        t = config.train
        self.tx = make_optimizer(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, num_steps=t.num_steps,
                                 weight_decay=t.weight_decay, grad_clip=t.grad_clip)

    def init_state(self) -> TrainState:
        ids = np.zeros((2, self.config.model.max_length), np.int32)
        params = self.model.init(jax.random.key(self.config.seed), np.zeros((2,) + IMAGE_SHAPE, np.float32), ids,
                                 ids > 0)
        return TrainState.create(params, self.tx)

    def data(self, split: str) -> dict:
        raw = cd.make_dataset(split, seed=self.config.seed if split == "train" else self.config.seed + 1,
                              source=self.config.data.source)
        ids, mask = self.tokenizer.encode(list(raw["caption"]))
        return {"image": to_model_images(raw["image"]), "ids": ids, "mask": mask, "digit": raw["digit"],
                "color": raw["color"], "layout": raw["layout"], "heldout_combo": raw["heldout_combo"]}


def make_train_step(model: CLIP, tx: optax.GradientTransformation, ema_decay: float):
    """Per-device step: symmetric InfoNCE over the global batch (embeddings all-gathered along the device axis)."""

    def train_step(state: TrainState, batch: dict):
        def loss_fn(params):
            img, txt, scale = model.apply(params, batch["image"], batch["ids"], batch["mask"])
            return infonce_loss(img, txt, scale, axis_name=AXIS)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = lax.pmean(grads, AXIS)
        new_state = apply_gradients(state, grads, tx, ema_decay)
        return new_state, {"loss": lax.pmean(loss, AXIS), "grad_norm": optax.tree.norm(grads)}

    return train_step


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    task = ClipTask(config, workdir)
    data = {k: v for k, v in task.data("train").items() if k in ("image", "ids", "mask")}
    t = config.train
    step = task.dp.lift(make_train_step(task.model, task.tx, t.ema_decay), ("replicated", "sharded"),
                        ("replicated", "replicated"), donate_argnums=(0,))
    state = loop.train_loop(workdir=workdir, dp=task.dp, init_state=task.init_state, train_step=step,
                            get_batch=lambda s: pipeline.get_batch(data, t.batch_size, config.seed, s),
                            num_steps=t.num_steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
                            max_to_keep=t.max_to_keep, progress=t.progress, description="clip")
    if t.final_eval:
        evaluate(config, workdir, state=state, task=task)
    return state


def _embed(task: ClipTask, params, images: Optional[np.ndarray] = None, ids=None, mask=None, batch: int = 500):
    fn = jax.jit(lambda p, x: task.model.apply(p, x, method=CLIP.encode_image)) if images is not None else \
        jax.jit(lambda p, i, m: task.model.apply(p, i, m, method=CLIP.encode_text)[0])
    n = len(images) if images is not None else len(ids)
    out = []
    for s in range(0, n, batch):
        out.append(np.asarray(fn(params, images[s:s + batch]) if images is not None else
                              fn(params, ids[s:s + batch], mask[s:s + batch])))
    return np.concatenate(out)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, state: Optional[TrainState] = None,
             task: Optional[ClipTask] = None) -> dict:
    """Zero-shot digit/colour/layout accuracy (300-way canonical prompts) on held-out images, seen vs held-out pairs."""
    task = task or ClipTask(config, workdir)
    if state is None:
        from diffusion_jax.checkpoint import Checkpointer
        with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
            restored = ckpt.restore(jax.eval_shape(task.init_state))
        if restored is None:
            raise FileNotFoundError(f"no CLIP checkpoint in {workdir}/checkpoints: train first")
        state = restored[1]
    params = state.ema_params
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
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    print("clip zero-shot:", " ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result
