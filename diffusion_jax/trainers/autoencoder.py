"""The KL autoencoder of latent diffusion (issue 12 item 2): train it on two-digit scenes, measure its latent scale,
evaluate its reconstructions, and serve it frozen (`Codec`, `load`) to a latent U-Net.

Everything a run makes lives in its workdir:
  checkpoints/              orbax train states (resume from the latest good one)
  metrics.jsonl, tensorboard/
  latent.json               {"scale", "latent_shape", "step"}: the latent scale factor (SD's 0.18215) of the
                            checkpoint of that step, = 1 / std of the posterior means of a seeded training subset
  eval.json                 reconstruction PSNR on the 500 held-out test scenes (overall, held-out vs seen pairs)
  samples/reconstructions.png   originals (odd rows) above their reconstructions (even rows)

The loss is SD's first-stage objective without its perceptual and adversarial terms: the mean squared error of the
reconstruction through a posterior sample, in [-1, 1] pixel space (mean over pixels and examples), plus
`train.kl_weight` times KL(q(z|x) || N(0, I)) (summed over the latent, mean over examples).
"""
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax

from diffusion_jax import config as config_lib
from diffusion_jax import distributed
from diffusion_jax.checkpoint import CheckpointMismatchError
from diffusion_jax.config import ConfigError
from diffusion_jax.data import mnist, pipeline, scenes
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation import scenes as scene_checks
from diffusion_jax.images import save_grid
from diffusion_jax.models.autoencoder import AutoencoderKL, kl_divergence
from diffusion_jax.parallel import AXIS, MODES
from diffusion_jax.trainers.diffusion import example_keys
from diffusion_jax.trainers.state import TrainState, apply_gradients
from diffusion_jax.trainers.task import Task

IMAGE_SHAPE = (scenes.CANVAS_SIZE, scenes.CANVAS_SIZE, 3)
LATENT_FILE = "latent.json"
EVAL_FILE = "eval.json"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_SCALE_SEED_TAG = 12  # the scale subset's indices: np.random.default_rng([seed, 12]); a constant apart from batches'
_MAX_PSNR = 100.0  # dB; the PSNR of a perfect reconstruction (MSE 0) is reported as this instead of infinity


def to_model_images(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, 64, 64, 3] -> float32 in [-1, 1]."""
    return np.asarray(images_uint8).astype(np.float32) / 127.5 - 1.0


def to_uint8_images(images: np.ndarray) -> np.ndarray:
    """float32 images in [-1, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the autoencoder task reads; raises ConfigError naming the first bad key."""
    config_lib.check_data_source(config, mnist.SOURCES)
    config_lib.check_choice(config, "train.parallel", MODES)
    config_lib.check_choice(config, "model.dtype", tuple(_DTYPES))
    config_lib.check_number(config, "seed", 0)
    config_lib.check_number(config, "data.train_copies")
    config_lib.check_number(config, "data.num_examples", 0)  # 0: train_copies scenes per training digit
    for key in ("data.scale_examples", "eval.classifier_steps", "model.latent_channels", "model.num_res_blocks",
                "model.norm_groups",
                "train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                "train.max_to_keep"):
        config_lib.check_number(config, key)
    for key in ("train.learning_rate", "train.grad_clip"):
        config_lib.check_number(config, key, minimum=1e-12)
    for key in ("train.warmup_steps", "train.weight_decay", "train.kl_weight"):
        config_lib.check_number(config, key, minimum=0)
    config_lib.check_number(config, "train.ema_decay", 0.0, 1.0)
    channels = config_lib.get(config, "model.channels")
    if (not isinstance(channels, (tuple, list)) or not channels
            or any(isinstance(ch, bool) or not isinstance(ch, int) or ch < 1 for ch in channels)):
        raise ConfigError(f"config.model.channels={channels!r} must be a non-empty tuple of positive widths")
    factor = 2 ** (len(channels) - 1)
    if IMAGE_SHAPE[0] % factor:
        raise ConfigError(f"config.model.channels={tuple(channels)!r} has {len(channels)} levels, a downsampling "
                          f"factor of {factor}, which does not divide the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} scenes")


def build_model(model_config) -> AutoencoderKL:
    """The autoencoder described by the `model` config group (explicit fields: the model never reads the config)."""
    return AutoencoderKL(channels=tuple(model_config.channels), latent_channels=model_config.latent_channels,
                         num_res_blocks=model_config.num_res_blocks, norm_groups=model_config.norm_groups,
                         out_channels=IMAGE_SHAPE[-1], dtype=_DTYPES[model_config.dtype])


def latent_shape_of(model: AutoencoderKL) -> tuple[int, int, int]:
    """(h, w, c) of the latent of one 64x64 scene."""
    return (IMAGE_SHAPE[0] // model.factor, IMAGE_SHAPE[1] // model.factor, model.latent_channels)


def make_train_step(model: AutoencoderKL, tx: optax.GradientTransformation, *, seed: int, kl_weight: float,
                    ema_decay: float):
    """Per-device `(state, batch) -> (state, metrics)` for batch {'image': [b, 64, 64, 3] float32 in [-1, 1]}.

    z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) from per-example keys folded from (seed, step, global
    example index) (`diffusion.example_keys`: the same noise for an example on 1 or 8 devices). Loss: MSE of the
    reconstruction + kl_weight * mean KL per example; gradients and metrics averaged over the device axis.
    """
    def train_step(state: TrainState, batch: dict):
        x = batch["image"]
        keys = example_keys(jax.random.fold_in(jax.random.key(seed), state.step), x.shape[0])
        eps = jax.vmap(lambda k: jax.random.normal(k, latent_shape_of(model)))(keys)

        def loss_fn(params):
            out = model.apply(params, x, eps)
            mse = jnp.mean((out["reconstruction"] - x) ** 2)
            kl = jnp.mean(kl_divergence(out["mean"], out["logvar"]))
            return mse + kl_weight * kl, (mse, kl)

        (loss, (mse, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = lax.pmean(grads, AXIS)
        new_state = apply_gradients(state, grads, tx, ema_decay)
        metrics = {"loss": loss, "mse": mse, "kl": kl}
        metrics = {k: lax.pmean(v, AXIS) for k, v in metrics.items()}
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_state, metrics

    return train_step


class AutoencoderTask(Task):
    """The autoencoder of a (validated) autoencoder config, on the shared task plumbing (`Task`). No I/O."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.model = build_model(config.model)
        self.latent_shape = latent_shape_of(self.model)

    def init_params(self):
        """Parameters from `seed`, initialised on a 2-example batch."""
        return self.model.init(jax.random.key(self.config.seed), np.zeros((2,) + IMAGE_SHAPE, np.float32))

    def make_train_step(self):
        c = self.config
        return make_train_step(self.model, self.tx, seed=c.seed, kl_weight=c.train.kl_weight,
                               ema_decay=c.train.ema_decay)

    def num_train(self) -> int:
        """Training scenes: `data.num_examples`, or (0) `data.train_copies` per training digit of the source."""
        d = self.config.data
        return d.num_examples or d.train_copies * len(mnist.load_mnist(split="train", **mnist.source_args(d))[1])

    def data(self, split: str) -> dict:
        """One split of the two-digit scenes (uint8 images): 'train' (seed, `num_train()` scenes) or 'test' (seed + 1,
        the 500 held-out scenes of the split's default size, alternating held-out and seen pairs)."""
        c = self.config
        if split == "train":
            return scenes.make_dataset("train", seed=c.seed, **mnist.source_args(c.data), num_examples=self.num_train())
        return scenes.make_dataset("test", seed=c.seed + 1, **mnist.source_args(c.data))

    def train_batch(self, images_uint8: np.ndarray, step: int) -> dict:
        """Batch `step` of the seeded stream of training images, as model inputs (a pure function of the step)."""
        b = pipeline.get_batch({"image": images_uint8}, self.config.train.batch_size, self.config.seed, step)
        return {"image": to_model_images(b["image"])}

    def load_state(self, workdir: str) -> tuple[int, TrainState]:
        """(step, state) of the latest good checkpoint in `workdir` (FileNotFoundError naming it if there is none)."""
        return super().load_state(workdir, hint=f"(autoencoder): train it first: python -m diffusion_jax.main "
                                                f"--config=experiments/autoencoder_scenes.py --workdir={workdir}")


class Codec:
    """A trained autoencoder for inference: model images <-> scaled latents (host float32 arrays).

    `encode` returns the posterior MEAN times `scale` (deterministic: what a latent U-Net trains on), `decode` takes
    scaled latents. Both are jitted once per codec and run in chunks padded to a fixed size (`pipeline.bucket_size`:
    the next power of two, at most `chunk`), so any number of inputs compiles once per bucket. The scale is a traced
    argument: a codec with another scale reuses nothing it should not, and changing it never recompiles.
    """

    def __init__(self, model: AutoencoderKL, params, *, scale: float, step: int, chunk: int = 256):
        self.model, self.params, self.chunk = model, params, chunk
        self.image_shape = IMAGE_SHAPE
        self.latent_shape = latent_shape_of(model)
        self.scale, self.step = float(scale), int(step)
        self._encode = jax.jit(lambda p, x, s: model.apply(p, x, method=AutoencoderKL.encode)[0] * s)
        self._decode = jax.jit(lambda p, z, s: jnp.clip(model.apply(p, z / s, method=AutoencoderKL.decode), -1.0, 1.0))

    def _chunked(self, fn, array: np.ndarray, out_shape: tuple) -> np.ndarray:
        n = len(array)
        if n == 0:
            return np.zeros((0,) + tuple(out_shape), np.float32)
        scale = np.float32(self.scale)
        out = [np.asarray(fn(self.params, chunk, scale))[:count]
               for chunk, count in pipeline.padded_chunks(array, pipeline.bucket_size(n, self.chunk))]
        return np.concatenate(out).astype(np.float32)

    def _check(self, array, shape: tuple, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim != 4 or array.shape[1:] != tuple(shape) or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what} must be float [N, {', '.join(map(str, shape))}], got {array.dtype} "
                             f"{array.shape}")
        return array.astype(np.float32)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Model images float [N, 64, 64, 3] in [-1, 1] -> scaled posterior-mean latents float32 [N, h, w, c]."""
        return self._chunked(self._encode, self._check(images, self.image_shape, "images"), self.latent_shape)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents float [N, h, w, c] -> float32 images [N, 64, 64, 3] clipped to [-1, 1]."""
        return self._chunked(self._decode, self._check(latents, self.latent_shape, "latents"), self.image_shape)

    def fingerprint(self) -> dict:
        """What a latent U-Net checkpoint records and is checked against: the latent shape and scale."""
        return {"latent_shape": list(self.latent_shape), "scale": self.scale}


def reconstruct(codec: Codec, images_uint8: np.ndarray) -> np.ndarray:
    """uint8 images [N, 64, 64, 3] -> their uint8 reconstructions through the posterior mean."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 [N, 64, 64, 3], got {images_uint8.dtype} {images_uint8.shape}")
    return to_uint8_images(codec.decode(codec.encode(to_model_images(images_uint8))))


def scale_indices(num_train: int, config: ml_collections.ConfigDict) -> np.ndarray:
    """The fixed, seeded subset of training images (at most `data.scale_examples`) the latent scale is measured on."""
    count = min(int(config.data.scale_examples), num_train)
    return np.sort(np.random.default_rng([config.seed, _SCALE_SEED_TAG]).choice(num_train, count, replace=False))


def latent_scale(codec: Codec, model_images: np.ndarray) -> float:
    """SD's scale factor: 1 / std of the (unscaled) posterior means of `model_images`, over all their elements."""
    unscaled = Codec(codec.model, codec.params, scale=1.0, step=codec.step, chunk=codec.chunk)
    std = float(np.std(unscaled.encode(model_images).astype(np.float64)))
    if not np.isfinite(std) or std <= 0:
        raise FloatingPointError(f"the posterior means have std {std}: no latent scale can be measured")
    return 1.0 / std


def read_latent_info(workdir: str) -> dict:
    """`workdir/latent.json`; FileNotFoundError naming the file (and what to run) if it is missing."""
    path = os.path.join(workdir, LATENT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: train the autoencoder first (python -m diffusion_jax.main "
                                f"--config=experiments/autoencoder_scenes.py --workdir={workdir}), which writes it")
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    """Writes JSON atomically: a temporary file renamed into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def ensure_latent_info(task: AutoencoderTask, workdir: str, state: TrainState,
                       train_images: Optional[np.ndarray] = None) -> dict:
    """The latent.json of `state`'s step: kept if it exists for that step, else measured and written (process 0).

    A latent.json of another step (training was extended) is not overwritten silently: it is moved aside to
    `latent.step<N>.json` with a warning, then the new one is written. A latent.json of the same step with another
    latent shape means the workdir holds another model: ValueError, nothing changed.
    """
    step = int(np.asarray(state.step))
    path = os.path.join(workdir, LATENT_FILE)
    if os.path.exists(path):
        info = read_latent_info(workdir)
        if int(info.get("step", -1)) == step:
            if list(info.get("latent_shape", [])) != list(task.latent_shape):
                raise CheckpointMismatchError(
                    f"{path} records latent_shape {info.get('latent_shape')} for step {step}, but the config builds "
                    f"{list(task.latent_shape)} (config.model.channels, config.model.latent_channels): a different "
                    "model; use a new workdir. Nothing was changed.")
            return info
    if train_images is None:
        train_images = task.data("train")["image"]
    codec = Codec(task.model, state.ema_params, scale=1.0, step=step)
    subset = to_model_images(train_images[scale_indices(len(train_images), task.config)])
    info = {"scale": latent_scale(codec, subset), "latent_shape": list(task.latent_shape), "step": step}
    if distributed.is_primary():
        if os.path.exists(path):
            old = read_latent_info(workdir)
            aside = os.path.join(workdir, f"latent.step{int(old.get('step', -1))}.json")
            os.replace(path, aside)
            logging.warning("%s was for step %s, the checkpoint is step %d: moved it to %s and wrote a new one",
                            path, old.get("step"), step, aside)
            print(f"autoencoder: {path} (step {old.get('step')}) moved to {aside}; new one for step {step}")
        _write_json(path, info)
    return info


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the autoencoder in `workdir`, writes its latent.json, then evaluates if
    `train.final_eval`. A finished run does not train again; it only writes a missing latent.json. Returns the host
    state."""
    validate_config(config)
    config_lib.check_batch_divides(config, "train.batch_size", jax.device_count())
    if config.train.final_eval:
        classifier_lib.check_cache(os.path.join(workdir, "classifier"), seed=config.seed,
                                   steps=config.eval.classifier_steps)
    task = AutoencoderTask(config)
    images = task.data("train")["image"]
    state = task.train_loop(workdir, lambda s: task.train_batch(images, s), description="autoencoder")
    info = ensure_latent_info(task, workdir, state, images)
    if config.train.final_eval:
        _evaluate(config, workdir, Codec(task.model, state.ema_params, scale=info["scale"], step=info["step"]))
    return state


def load(config: ml_collections.ConfigDict, workdir: str) -> Codec:
    """The trained autoencoder in `workdir` (latest good checkpoint's EMA weights, latent.json's scale) as a
    `Codec`. FileNotFoundError naming the folder or file if there is no checkpoint or no latent.json."""
    validate_config(config)
    task = AutoencoderTask(config)
    step, state = task.load_state(workdir)
    info = read_latent_info(workdir)
    if int(info["step"]) != step or list(info["latent_shape"]) != list(task.latent_shape):
        raise ValueError(f"{os.path.join(workdir, LATENT_FILE)} is for step {info['step']} and latent shape "
                         f"{info['latent_shape']}, the checkpoint is step {step} with {list(task.latent_shape)}: "
                         "rerun --mode=train in this workdir to measure the scale of this checkpoint")
    return Codec(task.model, state.ema_params, scale=info["scale"], step=step)


def psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB for MSEs of uint8 images (peak 255); an MSE of 0 gives `_MAX_PSNR` instead of infinity."""
    mse = np.asarray(mse, np.float64)
    return np.minimum(10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), _MAX_PSNR)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Reconstruction PSNR on the 500 held-out test scenes; writes `workdir/eval.json` and a PNG grid."""
    return _evaluate(config, workdir, load(config, workdir))


def _evaluate(config: ml_collections.ConfigDict, workdir: str, codec: Codec) -> dict:
    ev = scenes.make_dataset("test", seed=config.seed + 1, **mnist.source_args(config.data))
    original = ev["image"]
    recon = reconstruct(codec, original)
    diff = original.astype(np.float64) - recon.astype(np.float64)
    mse = np.mean(diff ** 2, axis=(1, 2, 3))
    per_image = psnr(mse)
    heldout = ev["heldout"]
    result = {
        "psnr": float(np.mean(per_image)),  # mean of the per-image PSNRs (dB)
        "psnr_overall": float(psnr(np.mean(mse))),  # PSNR of the mean squared error over all images
        "psnr_heldout_pairs": float(np.mean(per_image[heldout])),
        "psnr_seen_pairs": float(np.mean(per_image[~heldout])),
        "mse": float(np.mean(mse)),  # uint8 scale
        "mae": float(np.mean(np.abs(diff))),
        "scale": codec.scale,
        "step": codec.step,
        "num_images": int(len(original)),
        "latent_shape": list(codec.latent_shape),
    }
    # Does the scene checker read the reconstructions as it reads the originals (colours, digits, relation)?
    classifier = classifier_lib.load_or_train_on_source(os.path.join(workdir, "classifier"), config.data,
                                                        seed=config.seed, steps=config.eval.classifier_steps)
    found_original = scene_checks.check_scenes(classifier, original)
    found_recon = scene_checks.check_scenes(classifier, recon)
    same = scene_checks.same_reading(found_original, found_recon)
    truth = (ev["digits"], ev["colors"], ev["relation"], heldout)
    result.update(same_reading=float(np.mean(same)), same_reading_heldout_pairs=float(np.mean(same[heldout])),
                  checker_all_on_originals=scene_checks.scene_scores(found_original, *truth)["all_accuracy"],
                  checker_all_on_reconstructions=scene_checks.scene_scores(found_recon, *truth)["all_accuracy"])
    if distributed.is_primary():
        os.makedirs(workdir, exist_ok=True)
        _write_json(os.path.join(workdir, EVAL_FILE), result)
        n = 8
        grid = np.concatenate([original[:2 * n], recon[:2 * n]])  # rows: originals 0-7, recons 0-7, originals 8-15..
        rows = [np.arange(n), 2 * n + np.arange(n), n + np.arange(n), 3 * n + np.arange(n)]
        save_grid(os.path.join(workdir, "samples", "reconstructions.png"), grid, rows,
                  row_titles=["original", "reconstructed", "original", "reconstructed"])
    print(f"autoencoder step {codec.step}: PSNR {result['psnr']:.2f} dB (held-out pairs "
          f"{result['psnr_heldout_pairs']:.2f}, seen {result['psnr_seen_pairs']:.2f}, overall "
          f"{result['psnr_overall']:.2f}) on {len(original)} test scenes; latent {tuple(codec.latent_shape)}, "
          f"scale {codec.scale:.5f}; the scene checker reads {result['same_reading']:.1%} of the reconstructions "
          f"as their originals (all correct {result['checker_all_on_reconstructions']:.3f} vs "
          f"{result['checker_all_on_originals']:.3f} on the originals)")
    return result
