"""The training objective as one object that the train step and the samplers take (`diffusion.process`).

- `VP`: the variance-preserving diffusion of DDPM (`schedules.py`): integer timesteps t ~ U{0..T-1},
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, target eps or v, samplers DDIM, DDPM, DPM-Solver++(2M), UniPC.
- `Flow`: rectified flow (Liu et al. 2023; Lipman et al. 2023; Esser et al. 2024, SD3): t in [0, 1],
  x_t = (1 - t) x0 + t eps, target the velocity eps - x0, t drawn logit-normal (SD3's default) or uniform and
  optionally shifted towards noise (SD3's resolution shift); samplers: Euler and Heun steps of the ODE dx/dt = v.

Both give the model its time in "model units" (`model_time`): VP the integer timestep, flow 1000 t (as SD3), so a
backbone's sinusoidal timestep embedding sees the same range either way; guidance intervals are given in these
units (`time_scale`: T, or 1000).
"""
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffusion_jax.diffusion import losses, samplers, schedules

PROCESSES = ("vp", "flow")
TIME_SAMPLINGS = ("logit_normal", "uniform")
FLOW_TIME_SCALE = 1000.0


@dataclasses.dataclass(frozen=True)
class VP:
    """Variance-preserving diffusion on a discrete `schedule`, predicting `prediction` (eps | v)."""

    schedule: schedules.Schedule
    prediction: str = "v"
    loss_weighting: str = "none"
    snr_gamma: float = 5.0

    name = "vp"
    samplers = tuple(samplers.SAMPLERS)

    def __post_init__(self):
        schedules.check_prediction(self.prediction)
        schedules.check_loss_weighting(self.loss_weighting)

    @property
    def time_scale(self) -> float:
        return float(self.schedule.num_steps)

    def draw_time(self, key: jax.Array) -> jax.Array:
        """One example's timestep: int32 in [0, T)."""
        return jax.random.randint(key, (), 0, self.schedule.num_steps)

    def model_time(self, t: jax.Array) -> jax.Array:
        return t

    def noisy(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        return schedules.q_sample(self.schedule, x0, t, noise)

    def target(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        return schedules.prediction_target(self.schedule, x0, t, noise, self.prediction)

    def loss(self, pred: jax.Array, target: jax.Array, t: jax.Array) -> jax.Array:
        """The MSE on the target, weighted per example (`schedules.loss_weight`: none | min_snr)."""
        if self.loss_weighting == "none":  # the plain mean: bitwise the loss of runs made before weighting existed
            return losses.noise_mse(pred, target)
        weights = schedules.loss_weight(self.schedule, t, self.prediction, self.loss_weighting, self.snr_gamma)
        return losses.weighted_noise_mse(pred, target, weights)

    def sample(self, sampler: str, model_fn: Callable, keys: jax.Array, shape, *, steps: int, eta: Any = 0.0,
               clip_x0: Any = True) -> jax.Array:
        return samplers.sample(sampler, model_fn, self.schedule, keys, shape, steps=steps, eta=eta,
                               prediction=self.prediction, clip_x0=clip_x0)


@dataclasses.dataclass(frozen=True)
class Flow:
    """Rectified flow: x_t = (1 - t) x0 + t eps, velocity target eps - x0, t in [0, 1] (0 clean, 1 noise).

    `time_sampling`: 'logit_normal' (t = sigmoid(n), n ~ N(`logit_mean`, `logit_std`^2): SD3's default, which puts
    the training signal in the middle of the path) or 'uniform'. `shift` s maps t -> s t / (1 + (s - 1) t) in
    training and on the sampling grid (SD3's resolution-dependent shift; 1 = none, > 1 spends more at high noise).
    """

    time_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    name = "flow"
    samplers = tuple(samplers.FLOW_SAMPLERS)
    time_scale = FLOW_TIME_SCALE

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"Unknown flow time sampling {self.time_sampling!r}; valid choices: {TIME_SAMPLINGS}.")

    def draw_time(self, key: jax.Array) -> jax.Array:
        """One example's t in (0, 1), float32."""
        if self.time_sampling == "uniform":
            t = jax.random.uniform(key, (), jnp.float32)
        else:
            t = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, (), jnp.float32))
        return samplers.shift_time(t, self.shift)

    def model_time(self, t: jax.Array) -> jax.Array:
        return FLOW_TIME_SCALE * t

    def noisy(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        t = t.reshape(t.shape + (1,) * (x0.ndim - 1))
        x_t = (1.0 - t) * x0.astype(jnp.float32) + t * noise.astype(jnp.float32)
        return x_t.astype(x0.dtype)

    def target(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        del t
        return noise.astype(jnp.float32) - x0.astype(jnp.float32)

    def loss(self, pred: jax.Array, target: jax.Array, t: jax.Array) -> jax.Array:
        del t
        return losses.noise_mse(pred, target)

    def sample(self, sampler: str, model_fn: Callable, keys: jax.Array, shape, *, steps: int, eta: Any = 0.0,
               clip_x0: Any = True) -> jax.Array:
        del eta  # the flow samplers are deterministic ODE solvers
        return samplers.flow_sample(sampler, model_fn, keys, shape, steps=steps, shift=self.shift, clip_x0=clip_x0,
                                    time_scale=FLOW_TIME_SCALE)


def make_process(diffusion_config) -> "VP | Flow":
    """The process the `diffusion` config group describes (a validated config: `validate_process`)."""
    d = diffusion_config
    if d.get("process", "vp") == "flow":
        return Flow(time_sampling=d.time_sampling, logit_mean=float(d.logit_mean), logit_std=float(d.logit_std),
                    shift=float(d.shift))
    return VP(schedules.make_schedule(d.schedule, d.num_steps), prediction=d.prediction,
              loss_weighting=d.loss_weighting, snr_gamma=d.snr_gamma)


def guidance_interval(process, interval: tuple) -> Optional[tuple]:
    """(lo, hi) as fractions of the noise range -> bounds in the model's time units; None for (0, 1) (every step)."""
    lo, hi = (float(v) for v in interval)
    return None if (lo, hi) == (0.0, 1.0) else (lo * process.time_scale, hi * process.time_scale)
