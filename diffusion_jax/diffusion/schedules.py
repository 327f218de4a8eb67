"""Noise schedules and the forward (noising) process of DDPM.

Index convention: timesteps are 0-based, ``t in [0, T)``; ``alpha_bars[t]`` is the
product of ``alphas[0..t]``, so ``alpha_bars[0] = 1 - betas[0] < 1`` and ``x_t`` at
``t = 0`` is already slightly noisy (as in Ho et al. 2020 with t shifted by one).

All schedule constants are float32, whatever dtype the model runs in: the bf16
rounding of ``alpha_bar`` near 1 would otherwise destroy the low-noise end.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
LOSS_WEIGHTINGS = ("none", "min_snr")

# Cosine schedule constants (Nichol & Dhariwal 2021, section 3.2).
_COSINE_S = 0.008
_MAX_BETA = 0.999


class Schedule(NamedTuple):
    """A discrete noise schedule: float32 arrays of shape [T].

    A NamedTuple, hence a pytree: it can be passed straight into ``jax.jit``;
    ``num_steps`` comes from the array shape and so stays a static Python int.
    """

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array

    @property
    def num_steps(self) -> int:
        """The number of training timesteps T (a static Python int)."""
        return int(self.betas.shape[0])


def _linear_betas(num_steps: int) -> np.ndarray:
    """Ho et al. 2020 linear betas, endpoints scaled by 1000/T (as in Nichol & Dhariwal 2021).

    For T = 1000 this is exactly linspace(1e-4, 0.02, 1000). For T < 20 the scaled
    end would reach 1, so betas are clipped at 0.999 to keep alpha_bar > 0.
    """
    scale = 1000.0 / num_steps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    return np.minimum(betas, _MAX_BETA)


def _cosine_alpha_bar(t: np.ndarray, num_steps: int, s: float = _COSINE_S) -> np.ndarray:
    """Closed-form cosine alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2).

    Nichol & Dhariwal 2021, eq. 17, in float64; ``t`` is continuous in [0, T].
    """
    def f(u):
        return np.cos((np.asarray(u, np.float64) / num_steps + s) / (1.0 + s) * np.pi / 2) ** 2

    return f(t) / f(0.0)


def _cosine_betas(num_steps: int) -> np.ndarray:
    """Betas from the cosine alpha_bar: beta_t = 1 - abar(t)/abar(t-1), clipped at 0.999 (eq. 17)."""
    abar = _cosine_alpha_bar(np.arange(num_steps + 1), num_steps)
    betas = 1.0 - abar[1:] / abar[:-1]
    return np.clip(betas, 0.0, _MAX_BETA)


def make_schedule(name: str, num_steps: int) -> Schedule:
    """Build the ``'linear'`` or ``'cosine'`` schedule with ``num_steps`` timesteps.

    Computed in float64 NumPy and stored as float32 jnp arrays. ``alpha_bars`` is the
    cumulative product of the (clipped) alphas, so it is exactly consistent with ``betas``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule name {name!r}; valid choices: {SCHEDULES}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r} (schedule {name!r}).")
    num_steps = int(num_steps)
    betas = _linear_betas(num_steps) if name == "linear" else _cosine_betas(num_steps)
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    as_f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return Schedule(betas=as_f32(betas), alphas=as_f32(alphas), alpha_bars=as_f32(alpha_bars))


def check_prediction(prediction: str) -> None:
    """Raise a clear ValueError unless ``prediction`` is one of PREDICTIONS."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; valid choices: {PREDICTIONS}.")


def _gather(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """values[t] reshaped to broadcast against an array of rank ``ndim`` with batch axis first."""
    out = jnp.asarray(values, jnp.float32)[jnp.asarray(t)]
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward process sample x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4).

    ``t`` is int [B]; the coefficients broadcast over x0's trailing axes. The math runs
    in float32 and the result is returned in x0's dtype (e.g. bf16 for a bf16 model).
    """
    abar = _gather(schedule.alpha_bars, t, x0.ndim)
    x_t = jnp.sqrt(abar) * x0.astype(jnp.float32) + jnp.sqrt(1.0 - abar) * noise.astype(jnp.float32)
    return x_t.astype(x0.dtype)


def prediction_target(
    schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str
) -> jax.Array:
    """The regression target for the model, in float32.

    ``'eps'``: the noise (Ho et al. 2020). ``'v'``: v = sqrt(abar) eps - sqrt(1 - abar) x0
    (Salimans & Ho 2022, section 4).
    """
    check_prediction(prediction)
    noise = noise.astype(jnp.float32)
    if prediction == "eps":
        return noise
    abar = _gather(schedule.alpha_bars, t, x0.ndim)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0.astype(jnp.float32)


def check_loss_weighting(weighting: str) -> None:
    """Raise a clear ValueError unless ``weighting`` is one of LOSS_WEIGHTINGS."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"Unknown loss weighting {weighting!r}; valid choices: {LOSS_WEIGHTINGS}.")


def loss_weight(schedule: Schedule, t: jax.Array, prediction: str, weighting: str,
                gamma: float = 5.0) -> jax.Array:
    """Per-example loss weights [B] for the MSE on the ``prediction`` target at timesteps ``t`` [B].

    ``'none'``: all ones (L_simple). ``'min_snr'``: Min-SNR-gamma (Hang et al. 2023): the loss, seen as an MSE on
    x0, is weighted by min(SNR_t, gamma), SNR_t = abar / (1 - abar). Expressed on the model's target this is
    min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v, since the eps and v errors are sqrt(SNR)
    and sqrt(SNR + 1) times the x0 error. It stops the low-noise timesteps, which are easy and numerous, from
    dominating the gradient.
    """
    check_prediction(prediction)
    check_loss_weighting(weighting)
    if weighting == "none":
        return jnp.ones(jnp.shape(t), jnp.float32)
    abar = jnp.asarray(schedule.alpha_bars, jnp.float32)[jnp.asarray(t)]
    snr = abar / (1.0 - abar)
    clipped = jnp.minimum(snr, gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1.0)


def predict_x0_eps(
    schedule: Schedule, x_t: jax.Array, t: jax.Array, model_output: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array]:
    """Invert the model's parameterisation: return (x0, eps) in float32.

    eps-prediction: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
    v-prediction: x0 = sqrt(abar) x_t - sqrt(1 - abar) v, eps = sqrt(1 - abar) x_t + sqrt(abar) v
    (Salimans & Ho 2022). Either way x_t = sqrt(abar) x0 + sqrt(1 - abar) eps holds.
    """
    check_prediction(prediction)
    x_t = x_t.astype(jnp.float32)
    out = model_output.astype(jnp.float32)
    abar = _gather(schedule.alpha_bars, t, x_t.ndim)
    sqrt_ab, sqrt_1m_ab = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    if prediction == "eps":
        return (x_t - sqrt_1m_ab * out) / sqrt_ab, out
    return sqrt_ab * x_t - sqrt_1m_ab * out, sqrt_1m_ab * x_t + sqrt_ab * out
