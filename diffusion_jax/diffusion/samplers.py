"""Reverse-process samplers, each one ``jax.lax.scan`` over a timestep array with one model call a step.

- ``ddim``: DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 ancestral.
- ``ddpm``: ancestral sampling from the DDPM posterior (Ho et al. 2020).
- ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022): deterministic, multistep, second order, data prediction.
- ``unipc``: UniPC (Zhao et al. 2023), B(h) = e^h - 1 ("bh2"): the same predictor as ``dpmpp_2m`` plus the UniC
  corrector, which reuses the model call of the next step, so it costs no extra call; third order where the steps
  in lambda are even. Deterministic.

Rectified flow (`process.Flow`) has its own ODE samplers, ``flow_sample``: ``euler``, ``heun`` and ``dpmpp_2m`` (the
same multistep solver on flow's path) on a time grid from 1 (noise) to 0 (data), optionally shifted (SD3). The VP
samplers above take a VP schedule; a sampler of the other process is refused by the config check.

Model interface: ``model_fn(x, t) -> model_output`` with x float32 [B, *shape] and
t int32 [B]; the output (eps or v, any float dtype) is cast to float32 here. Every sampler
calls the model only at the integer training timesteps of ``sampling_timesteps``.

Randomness is per example: ``keys`` holds one PRNG key per example (shape [B]).
Example b starts from ``normal(fold_in(keys[b], 0), shape)`` and the noise injected
at chain step i (0-based) is ``normal(fold_in(keys[b], i + 1), shape)``. A sample
therefore depends only on its own key, not on how the batch is split over devices.
The deterministic samplers (``dpmpp_2m``, ``unipc``) draw the starting noise only.

Only ``steps`` (and the string/shape arguments) are static; the schedule, eta and a
guidance scale captured by ``model_fn`` are traced, so changing them does not
recompile a jitted sampler.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

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


# An update maps (x_t, x0, eps, ab_t, ab_prev, z, i, state) to (x_prev, state): i is the 0-based step, z the step's
# noise (None in a chain drawn without noise), state a pytree carried from step to step (``init_state(x_init)``
# at the start, () by default).
Update = Callable[..., tuple[jax.Array, Any]]


def _run_chain(
    update: Update,
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    steps: int,
    prediction: str,
    clip_x0: Any,
    init_state: Callable[[jax.Array], Any] = lambda x_init: (),
    noise: bool = True,
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

    def step(carry, xs):
        x, state = carry
        i, t, a_t, a_prev = xs
        t_batch = jnp.full((batch,), t, jnp.int32)
        out = model_fn(x, t_batch)
        if out.shape != x.shape:
            raise ValueError(f"model_fn output shape {out.shape} != input shape {x.shape}.")
        x0, eps = predict_x0_eps(schedule, x, t_batch, out.astype(jnp.float32), prediction)
        x0, eps = _clip_x0(x, x0, eps, a_t, clip_x0)
        z = _per_example_normal(keys, i + 1, shape) if noise else None
        return update(x, x0, eps, a_t, a_prev, z, i, state), None

    x_init = _per_example_normal(keys, 0, shape)
    xs = (jnp.arange(steps, dtype=jnp.int32), jnp.asarray(ts), ab_t, ab_prev)
    (x, _), _ = jax.lax.scan(step, (x_init, init_state(x_init)), xs)
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

    def update(x, x0, eps, ab_t, ab_prev, z, i, state):
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * jnp.maximum(1.0 - ab_t / ab_prev, 0.0))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
        return jnp.sqrt(ab_prev) * x0 + direction + sigma * z, state

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

    def update(x, x0, eps, ab_t, ab_prev, z, i, state):
        del eps  # The posterior is written in terms of x0 and x_t.
        alpha_t = ab_t / ab_prev
        beta_t = 1.0 - alpha_t
        coef_x0 = jnp.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
        coef_xt = jnp.sqrt(alpha_t) * (1.0 - ab_prev) / (1.0 - ab_t)
        variance = (1.0 - ab_prev) / (1.0 - ab_t) * beta_t
        std = jnp.where(i == steps - 1, 0.0, jnp.sqrt(jnp.maximum(variance, 0.0)))
        return coef_x0 * x0 + coef_xt * x + std * z, state

    return _run_chain(update, model_fn, schedule, keys, shape, steps, prediction, clip_x0)


def _half_log_snr(alpha_bar: jax.Array) -> jax.Array:
    """lambda = log(alpha / sigma), alpha = sqrt(abar), sigma = sqrt(1 - abar); +inf at abar = 1 (the clean end)."""
    return 0.5 * (jnp.log(alpha_bar) - jnp.log1p(-alpha_bar))


def _exponential_step(x_s: jax.Array, ab_s: jax.Array, ab_t: jax.Array, x0: jax.Array) -> jax.Array:
    """x_t = (sigma_t/sigma_s) x_s - alpha_t (exp(-h) - 1) x0, h = lambda_t - lambda_s: DPM-Solver++'s step.

    The exact solution of the probability-flow ODE from s to t if the data prediction were ``x0`` all the way
    (Lu et al. 2022, the first-order DPM-Solver++ update; with the model's x0 at s it is DDIM with eta = 0).
    ``ab_t = 1`` (the clean end, h = inf) gives x0.
    """
    h = _half_log_snr(ab_t) - _half_log_snr(ab_s)
    return jnp.sqrt((1.0 - ab_t) / (1.0 - ab_s)) * x_s - jnp.sqrt(ab_t) * jnp.expm1(-h) * x0


def _multistep_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    steps: int,
    prediction: str,
    clip_x0: Any,
    corrector: bool,
) -> jax.Array:
    """The DPM-Solver++(2M) chain; with ``corrector`` (static), UniPC: UniC applied at each new point first.

    Step i goes from grid point t_i to t_{i+1} (abar = 1 after the last point) with x0_i, the model's x0 at the
    predicted x_i. Its predictor is second order for 1 <= i <= steps - 3 and first order (DDIM) otherwise: the first
    step has no earlier x0, and the last two are the step into the grid's last point t = 0 and the step from there
    to the clean end (h = inf). The authors' codes end alike: their grid stops at t_0 = 1/N, reached by a first-order
    step (``lower_order_final``: always in UniPC's, below 10 or 15 steps in DPM-Solver's), then an optional denoise to
    zero, which is our last step. The carry holds the x0 and abar of the two previous points and the previous
    (corrected) x.
    """
    second_order = lambda i: (i >= 1) & (i <= steps - 3)  # noqa: E731 (is the predictor of step i second order?)

    def update(x, x0, eps, ab_t, ab_next, z, i, state):
        del eps, z  # data prediction only, and deterministic
        x_c1, x0_1, x0_2, ab_1, ab_2 = state  # previous point's corrected x, x0 and abar; x0, abar two points back
        lam_t, lam_1, lam_2 = _half_log_snr(ab_t), _half_log_snr(ab_1), _half_log_snr(ab_2)
        h = lam_t - lam_1
        if corrector:  # UniC with B(h) = e^h - 1 for the step t_{i-1} -> t_i, of that step's predictor order
            hh = -h
            e = jnp.expm1(hh)  # h phi_1(hh), and B(h)
            k1 = e / hh - 1.0  # hh phi_2(hh); b_k = k! hh phi_{k+1}(hh) / B(h), the reference code's recursion
            b1, b2 = k1 / e, 2.0 * (k1 / hh - 0.5) / e
            r1 = (lam_2 - lam_1) / h
            rho1 = (b1 - b2) / (1.0 - r1)  # rho solves [[1, 1], [r1, 1]] rho = [b1, b2]
            order2 = rho1 * (x0_2 - x0_1) / r1 + (b1 - rho1) * (x0 - x0_1)
            d = x0_1 + jnp.where(second_order(i - 1), order2, 0.5 * (x0 - x0_1))  # order 1: rho = 1/2
            x = jnp.where(i > 0, _exponential_step(x_c1, ab_1, ab_t, d), x)
        # Predictor, DPM-Solver++(2M) = UniP-2: D = x0_i + (x0_i - x0_{i-1})/(2 r), r = h_i / h_{i+1}.
        h_next = _half_log_snr(ab_next) - lam_t
        half_inv_r = jnp.where(second_order(i), 0.5 * h_next / h, 0.0)  # h_next = inf on the last step
        d = x0 + half_inv_r * (x0 - x0_1)
        return _exponential_step(x, ab_t, ab_next, d), (x, x0, x0_1, ab_t, ab_1)

    def init_state(x_init):
        zeros, half = jnp.zeros_like(x_init), jnp.float32(0.5)  # placeholders, masked until real values replace them
        return zeros, zeros, zeros, half, half / 2.0

    return _run_chain(update, model_fn, schedule, keys, shape, steps, prediction, clip_x0, init_state, noise=False)


def dpmpp_2m_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    *,
    steps: int,
    prediction: str = "eps",
    clip_x0: Any = True,
) -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); returns x0 of shape [B, *shape], float32.

    Multistep second-order solver of the probability-flow ODE in data prediction and
    lambda = log(alpha/sigma), alpha = sqrt(abar), sigma = sqrt(1 - abar). From t_{i-1} to t_i, with
    h_i = lambda_{t_i} - lambda_{t_{i-1}}, r_i = h_{i-1}/h_i and the (clipped) x0 predictions x0_{i-1}, x0_{i-2}:
    D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2},
    x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i.
    First order (D_i = x0_{i-1}, exactly DDIM with eta = 0) on the first step, which has no x0_{i-2}, and on the last
    two: the step into the grid's t = 0 (``lower_order_final``; measured on Gaussian data of scales 0.05-1, where the
    exact answer is known, a second-order step there, whose h is several times the previous one, was less accurate
    than a first-order one from 10 to 200 steps, and at 10 steps less accurate than DDIM) and the step from t = 0 to
    the clean end, which returns the last x0 as DDIM does. So ``steps <= 3`` is DDIM. One model call a step,
    ``steps`` in all. Deterministic: there is no ``eta``.
    """
    return _multistep_sample(model_fn, schedule, keys, shape, steps, prediction, clip_x0, corrector=False)


def unipc_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    keys: jax.Array,
    shape: Sequence[int],
    *,
    steps: int,
    prediction: str = "eps",
    clip_x0: Any = True,
) -> jax.Array:
    """UniPC-2 with B(h) = e^h - 1, data prediction (Zhao et al. 2023, UniP-p and UniC-p); x0 [B, *shape], f32.

    The predictor UniP-2 is the ``dpmpp_2m`` step, with the same orders. After the model call at the predicted
    x_{t_i}, which gives x0_i, the corrector UniC redoes the step from the corrected x^c_{t_{i-1}}:
    x^c_{t_i} = (sigma_i/sigma_{i-1}) x^c_{t_{i-1}} - alpha_i (exp(-h_i) - 1) (x0_{i-1} + rho_1 D_1 + rho_2 D_2),
    D_2 = x0_i - x0_{i-1}. If the step into t_i was second order, D_1 = (x0_{i-2} - x0_{i-1})/r_1 with
    r_1 = (lambda_{i-2} - lambda_{i-1})/h_i, and rho solves [[1, 1], [r_1, 1]] rho = (b_1, b_2),
    b_k = -k! h phi_{k+1}(-h) / (exp(-h) - 1), phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z; after a
    first-order step rho_2 = 1/2 and no D_1 (the authors' code). The predictor then continues from x^c_{t_i} with
    x0_i, which is not recomputed, so the corrector costs no model call: ``steps`` in all. The last step, from t = 0
    to the clean end, returns x0 there, so the last correction has no effect. Deterministic: there is no ``eta``.
    """
    return _multistep_sample(model_fn, schedule, keys, shape, steps, prediction, clip_x0, corrector=True)


SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "ddim": ddim_sample, "ddpm": ddpm_sample, "dpmpp_2m": dpmpp_2m_sample, "unipc": unipc_sample,
}


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
    """Run the sampler registered under ``name`` (see SAMPLERS).

    ``eta`` is used by 'ddim' only; the others ignore it: 'ddpm' always adds the posterior's noise, 'dpmpp_2m' and
    'unipc' are deterministic ODE solvers.
    """
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid choices: {tuple(SAMPLERS)}.")
    kwargs = dict(steps=steps, prediction=prediction, clip_x0=clip_x0)
    if name == "ddim":
        kwargs["eta"] = eta
    return SAMPLERS[name](model_fn, schedule, keys, shape, **kwargs)


def shift_time(t: Any, shift: float) -> Any:
    """SD3's time shift t -> s t / (1 + (s - 1) t) (Esser et al. 2024, sec. 5.3.2): s > 1 moves t towards noise, 1 is
    the identity; 0 and 1 stay fixed."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def flow_time_grid(steps: int, shift: float = 1.0) -> np.ndarray:
    """The float32 times [steps + 1] a flow sampler visits: linspace(1, 0) shifted (`shift_time`), 1 first, 0 last."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}.")
    return shift_time(np.linspace(1.0, 0.0, steps + 1, dtype=np.float64), shift).astype(np.float32)


def _flow_velocity(model_fn: ModelFn, x: jax.Array, t: jax.Array, time_scale: float, clip_x0: Any) -> jax.Array:
    """The model's velocity at (x, t), t > 0 a scalar; with `clip_x0`, made consistent with the clipped clean image
    x0 = x - t v (v = (x - clip(x0)) / t where x0 left [-1, 1]; elsewhere the model's v exactly)."""
    batch = x.shape[0]
    v = model_fn(x, jnp.full((batch,), time_scale * t, jnp.float32))
    if v.shape != x.shape:
        raise ValueError(f"model_fn output shape {v.shape} != input shape {x.shape}.")
    v = v.astype(jnp.float32)
    if isinstance(clip_x0, (bool, np.bool_)) and not clip_x0:
        return v
    x0 = x - t * v
    x0_c = jnp.clip(x0, -1.0, 1.0)
    return jnp.where(jnp.asarray(clip_x0, bool) & (x0_c != x0), (x - x0_c) / t, v)


def flow_sample(name: str, model_fn: ModelFn, keys: jax.Array, shape: Sequence[int], *, steps: int,
                shift: float = 1.0, clip_x0: Any = True, time_scale: float = 1000.0) -> jax.Array:
    """Integrates the flow ODE dx/dt = v(x, t) from t = 1 (x = the example's noise, as the VP samplers draw it) to
    t = 0 on `flow_time_grid(steps, shift)`, one ``lax.scan``; returns x0 [B, *shape], float32.

    - ``euler``: x <- x + (t_next - t) v(x, t); ``steps`` model calls.
    - ``heun``: Heun's second-order step (Karras et al. 2022, Algorithm 1): an Euler step, then the average of the
      velocities at both ends; the last step, into t = 0, stays an Euler step; 2 ``steps`` - 1 model calls.
    - ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022) on flow's path (alpha = 1 - t, sigma = t, so its first-order
      step is the Euler step): second order from the model's clean image x0 = x - t v at this step and the last,
      ``steps`` model calls. lambda = log((1 - t) / t) is infinite at t = 1 and t = 0, so the first two steps and
      the last are first order (Euler).

    The model sees the time in its units (`time_scale` t: 1000 t, as SD3). Deterministic.
    """
    if name not in FLOW_SAMPLERS:
        raise ValueError(f"Unknown flow sampler {name!r}; valid choices: {tuple(FLOW_SAMPLERS)}.")
    keys = _as_key_array(keys)
    shape = tuple(int(d) for d in shape)
    grid = flow_time_grid(steps, shift)
    velocity = lambda x, t: _flow_velocity(model_fn, x, t, time_scale, clip_x0)  # noqa: E731

    def step(carry, xs):
        x, x0_prev = carry
        i, t_prev, t, t_next = xs
        v = velocity(x, t)
        x_euler = x + (t_next - t) * v
        if name == "euler":
            return (x_euler, x0_prev), None
        if name == "dpmpp_2m":
            x0 = x - t * v
            second = (i >= 2) & (i < steps - 1)
            # lambda's steps h (this one) and h_prev (the last), at finite stand-in times where the step is first order
            t_prev_, t_, t_next_ = (jnp.where(second, a, b) for a, b in ((t_prev, 0.75), (t, 0.5), (t_next, 0.25)))
            lam = lambda u: jnp.log1p(-u) - jnp.log(u)  # noqa: E731
            h, h_prev = lam(t_next_) - lam(t_), lam(t_) - lam(t_prev_)
            d = x0 + h / (2.0 * h_prev) * (x0 - x0_prev)
            return (jnp.where(second, t_next / t * x + (t - t_next) / t * d, x_euler), x0), None
        # Heun: the velocity at the Euler point, except on the last step (t_next = 0), whose x0 is already final
        v_next = jax.lax.cond(i < steps - 1, lambda: velocity(x_euler, jnp.maximum(t_next, 1e-8)), lambda: v)
        return (x + (t_next - t) * 0.5 * (v + v_next), x0_prev), None

    x_init = _per_example_normal(keys, 0, shape)
    xs = (jnp.arange(steps, dtype=jnp.int32), jnp.asarray(np.concatenate([grid[:1], grid[:-2]])),
          jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]))
    (x, _), _ = jax.lax.scan(step, (x_init, jnp.zeros_like(x_init)), xs)
    return x


FLOW_SAMPLERS = ("euler", "heun", "dpmpp_2m")


def classifier_free_guidance(
    apply_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    cond: Any,
    null_cond: Any,
    guidance: Any,
    interval: Optional[tuple[float, float]] = None,
) -> ModelFn:
    """Wrap a conditional model into a guided ``model_fn(x, t)`` (Ho & Salimans 2022, eq. 6).

    Makes ONE batched call ``apply_fn([x; x], [t; t], [cond; null_cond])`` (cond and
    null_cond: pytrees of arrays with the same structure and leading batch axis B, e.g.
    labels now and text embeddings later), splits it into conditional c and
    unconditional u and returns u + guidance (c - u) in float32. guidance = 1 gives the
    conditional model, 0 the unconditional one. Pass ``guidance`` into a jitted sampler
    as an argument so it is traced: changing it then does not recompile.

    ``interval`` = (t_lo, t_hi) in the model's timesteps guides only where t_lo <= t <= t_hi and gives the
    conditional prediction elsewhere (guidance in a limited interval, Kynkaenniemi et al. 2024); None guides every
    step.
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
        scale = jnp.asarray(guidance, jnp.float32)
        if interval is not None:
            inside = (t >= interval[0]) & (t <= interval[1])
            scale = jnp.where(inside, scale, 1.0).astype(jnp.float32).reshape((batch,) + (1,) * (x.ndim - 1))
        return u + scale * (c - u)

    return model_fn
