"""Reverse-process samplers (DDIM, DDPM) as one ``jax.lax.scan`` over a timestep array.

Model interface: ``model_fn(x, t) -> model_output`` with x float32 [B, *shape] and
t int32 [B]; the output (eps or v, any float dtype) is cast to float32 here.

Randomness is per example: ``keys`` holds one PRNG key per example (shape [B]).
Example b starts from ``normal(fold_in(keys[b], 0), shape)`` and the noise injected
at chain step i (0-based) is ``normal(fold_in(keys[b], i + 1), shape)``. A sample
therefore depends only on its own key, not on how the batch is split over devices.

Only ``steps`` (and the string/shape arguments) are static; the schedule, eta and a
guidance scale captured by ``model_fn`` are traced, so changing them does not
recompile a jitted sampler.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion.schedules import Schedule, check_prediction, predict_x0_eps

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def sampling_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """The descending int32 timesteps visited by a sampler with ``num_steps`` steps.

    Uses ``round(linspace(T - 1, 0, S))`` ("linspace" spacing, DDIM paper appendix):
    it starts at the noisiest step T - 1 and ends at 0, so the last step denoises the
    least noisy level. For S <= T the spacing (T-1)/(S-1) is >= 1, so rounding never
    produces duplicates and the result is strictly descending with exactly S entries.
    """
    for name, value in (("num_train_steps", num_train_steps), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a Python int, got {value!r}.")
    if num_train_steps < 1:
        raise ValueError(f"num_train_steps must be >= 1, got {num_train_steps}.")
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(
            f"num_steps={num_steps} is out of range: need 1 <= num_steps <= T={num_train_steps} "
            "(the number of training timesteps)."
        )
    ts = np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)
    assert np.all(np.diff(ts) < 0), ts  # guaranteed by the spacing argument above
    return ts


def _as_key_array(keys: jax.Array) -> jax.Array:
    """Accept typed keys of shape [B] (jax.random.key/split) or raw uint32 keys [B, 2]."""
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys)
    if keys.ndim != 1:
        raise ValueError(
            f"keys must hold one PRNG key per example (shape [B]), got key array shape {keys.shape}."
        )
    return keys


def _per_example_normal(keys: jax.Array, data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """normal(fold_in(keys[b], data), shape) for every example b, in float32: [B, *shape].

    Drawn flat and reshaped: the values are the same as drawing ``shape`` directly (the
    tests check this), but XLA on CPU compiles the flat draw several times faster.
    """
    size = int(np.prod(shape))

    def draw(key):
        return jax.random.normal(jax.random.fold_in(key, data), (size,), jnp.float32).reshape(shape)

    return jax.vmap(draw)(keys)


def _clip_x0(x_t, x0, eps, ab_t, clip_x0):
    """Clip x0 to [-1, 1] and make eps consistent with the clipped x0 (as guided-diffusion does).

    eps is recomputed from x_t = sqrt(ab) x0 + sqrt(1 - ab) eps only where x0 changed, so
    unclipped elements keep the model's eps exactly.
    """
    if isinstance(clip_x0, (bool, np.bool_)) and not clip_x0:
        return x0, eps
    x0_c = jnp.clip(x0, -1.0, 1.0)
    eps_c = (x_t - jnp.sqrt(ab_t) * x0_c) / jnp.sqrt(1.0 - ab_t)
    clip = jnp.asarray(clip_x0, bool)
    return jnp.where(clip, x0_c, x0), jnp.where(clip & (x0_c != x0), eps_c, eps)


# An update maps (x_t, x0, eps, ab_t, ab_prev, z, is_last) to x_prev.
Update = Callable[..., jax.Array]


def _run_chain(
    update: Update,
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    steps: int,
    prediction: str,
    clip_x0: Any,
) -> jax.Array:
    """Shared reverse chain: one lax.scan over (step index, t, abar_t, abar_prev)."""
    check_prediction(prediction)
    keys = _as_key_array(keys)
    shape = tuple(int(d) for d in shape)
    ts = sampling_timesteps(schedule.num_steps, steps)
    t_prev = np.append(ts[1:], -1).astype(np.int32)
    alpha_bars = jnp.asarray(schedule.alpha_bars, jnp.float32)
    ab_t = alpha_bars[ts]
    # After the last step we are at "t = -1": no noise left, abar_prev = 1.
    ab_prev = jnp.where(t_prev >= 0, alpha_bars[np.maximum(t_prev, 0)], 1.0)
    batch = keys.shape[0]

    def step(x, xs):
        i, t, a_t, a_prev = xs
        t_batch = jnp.full((batch,), t, jnp.int32)
        out = model_fn(x, t_batch)
        if out.shape != x.shape:
            raise ValueError(f"model_fn output shape {out.shape} != input shape {x.shape}.")
        x0, eps = predict_x0_eps(schedule, x, t_batch, out.astype(jnp.float32), prediction)
        x0, eps = _clip_x0(x, x0, eps, a_t, clip_x0)
        z = _per_example_normal(keys, i + 1, shape)
        return update(x, x0, eps, a_t, a_prev, z, i == steps - 1), None

    x_init = _per_example_normal(keys, 0, shape)
    xs = (jnp.arange(steps, dtype=jnp.int32), jnp.asarray(ts), ab_t, ab_prev)
    x, _ = jax.lax.scan(step, x_init, xs)
    return x


def ddim_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    *,
    steps: int,
    eta: Any = 0.0,
    prediction: str = "eps",
    clip_x0: Any = True,
) -> jax.Array:
    """DDIM sampling (Song et al. 2021, eq. 12); returns x0 of shape [B, *shape], float32.

    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z with
    sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev) (eq. 16).
    eta = 0 is deterministic; eta = 1 matches ancestral DDPM sampling. At the last step
    abar_prev = 1, so the predicted x0 is returned. ``eta`` may be traced.
    """
    eta = jnp.asarray(eta, jnp.float32)

    def update(x, x0, eps, ab_t, ab_prev, z, is_last):
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * jnp.maximum(1.0 - ab_t / ab_prev, 0.0))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
        return jnp.sqrt(ab_prev) * x0 + direction + sigma * z

    return _run_chain(update, model_fn, schedule, keys, shape, steps, prediction, clip_x0)


def ddpm_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    *,
    steps: int,
    prediction: str = "eps",
    clip_x0: Any = True,
) -> jax.Array:
    """Ancestral sampling from the posterior q(x_prev | x_t, x0) (Ho et al. 2020, eq. 6-7).

    On a respaced timestep sequence beta'_t = 1 - abar_t/abar_prev; the posterior mean is
    sqrt(abar_prev) beta'_t/(1 - abar_t) x0 + sqrt(1 - beta'_t)(1 - abar_prev)/(1 - abar_t) x_t
    and its variance (1 - abar_prev)/(1 - abar_t) beta'_t. No noise is added at the last step.
    Returns x0 of shape [B, *shape], float32.
    """

    def update(x, x0, eps, ab_t, ab_prev, z, is_last):
        del eps  # The posterior is written in terms of x0 and x_t.
        alpha_t = ab_t / ab_prev
        beta_t = 1.0 - alpha_t
        coef_x0 = jnp.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
        coef_xt = jnp.sqrt(alpha_t) * (1.0 - ab_prev) / (1.0 - ab_t)
        variance = (1.0 - ab_prev) / (1.0 - ab_t) * beta_t
        std = jnp.where(is_last, 0.0, jnp.sqrt(jnp.maximum(variance, 0.0)))
        return coef_x0 * x0 + coef_xt * x + std * z

    return _run_chain(update, model_fn, schedule, keys, shape, steps, prediction, clip_x0)


SAMPLERS: dict[str, Callable[..., jax.Array]] = {"ddim": ddim_sample, "ddpm": ddpm_sample}


def sample(
    name: str,
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    *,
    steps: int,
    eta: Any = 0.0,
    prediction: str = "eps",
    clip_x0: Any = True,
) -> jax.Array:
    """Run the sampler registered under ``name`` (see SAMPLERS); ``eta`` is ignored by 'ddpm'."""
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid choices: {tuple(SAMPLERS)}.")
    kwargs = dict(steps=steps, prediction=prediction, clip_x0=clip_x0)
    if name == "ddim":
        kwargs["eta"] = eta
    return SAMPLERS[name](model_fn, schedule, keys, shape, **kwargs)


def classifier_free_guidance(
    apply_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    cond: Any,
    null_cond: Any,
    guidance: Any,
) -> ModelFn:
    """Wrap a conditional model into a guided ``model_fn(x, t)`` (Ho & Salimans 2022, eq. 6).

    Makes ONE batched call ``apply_fn([x; x], [t; t], [cond; null_cond])`` (cond and
    null_cond: pytrees of arrays with the same structure and leading batch axis B, e.g.
    labels now and text embeddings later), splits it into conditional c and
    unconditional u and returns u + guidance (c - u) in float32. guidance = 1 gives the
    conditional model, 0 the unconditional one. Pass ``guidance`` into a jitted sampler
    as an argument so it is traced: changing it then does not recompile.
    """
    if jax.tree.structure(cond) != jax.tree.structure(null_cond):
        raise ValueError(
            f"cond and null_cond must have the same pytree structure, got {jax.tree.structure(cond)} "
            f"and {jax.tree.structure(null_cond)}."
        )

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        batch = x.shape[0]
        both = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null_cond)
        out = apply_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
        out = out.astype(jnp.float32)
        c, u = out[:batch], out[batch:]
        return u + jnp.asarray(guidance, jnp.float32) * (c - u)

    return model_fn
