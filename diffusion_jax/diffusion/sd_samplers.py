"""Stable Diffusion's samplers as diffusers defines them, each one `lax.scan` (issue 25, item 3).

A pretrained folder's `scheduler/scheduler_config.json` names its default; any sampler here can be chosen instead,
and its config is built as diffusers' `from_config` builds it: the keys the JSON holds, the chosen sampler's own
defaults for the rest. Everything that depends only on the config and the step count (SD's `scaled_linear` betas
and float32 `alphas_cumprod`, the "leading" / "trailing" / "linspace" grids with `steps_offset`,
`set_alpha_to_one`, the sigmas, the per-step coefficients) is computed on the host in float32, as torch computes
it; the chain itself is traced: one compile per (shape, sampler, steps), the guidance scale an argument.

Samplers (diffusers' class, what SD uses of it):
  ddim      DDIMScheduler: deterministic (eta = 0), x0 clipped when `clip_sample`.
  euler     EulerDiscreteScheduler: Euler steps in sigma space, inputs scaled by 1/sqrt(sigma^2 + 1).
  dpmpp_2m  DPMSolverMultistepScheduler: DPM-Solver++ 2M (midpoint), first order on the first and the last step.
  pndm      PNDMScheduler with `skip_prk_steps` (SD 1.x's shipped default): PLMS, steps + 1 model calls (the second
            timestep is evaluated twice: an Euler step, then its redo with the average of the two outputs), then
            Adams-Bashforth combinations of up to four past outputs.
  unipc     UniPCMultistepScheduler (bh2, order 2, data prediction): the DPM-Solver++ step as predictor, first order
            on the first and the last step, and the UniC corrector at every step after the first (no extra call).

This project's own models keep their samplers (diffusion/samplers.py); these reproduce diffusers' numbers for a
pretrained SD folder.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CLASSES = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
           "pndm": "PNDMScheduler", "unipc": "UniPCMultistepScheduler"}
_COMMON = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
               trained_betas=None, prediction_type="epsilon", steps_offset=0, rescale_betas_zero_snr=False)
DEFAULTS = {  # each class's constructor defaults (diffusers 0.42), for the keys a JSON leaves out
    "ddim": dict(_COMMON, clip_sample=True, set_alpha_to_one=True, thresholding=False, clip_sample_range=1.0,
                 timestep_spacing="leading"),
    "euler": dict(_COMMON, interpolation_type="linear", use_karras_sigmas=False, use_exponential_sigmas=False,
                  use_beta_sigmas=False, timestep_spacing="linspace", timestep_type="discrete",
                  final_sigmas_type="zero"),
    "dpmpp_2m": dict(_COMMON, solver_order=2, thresholding=False, algorithm_type="dpmsolver++",
                     solver_type="midpoint", lower_order_final=True, euler_at_final=False, use_karras_sigmas=False,
                     use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
                     use_flow_sigmas=False, final_sigmas_type="zero", lambda_min_clipped=-float("inf"),
                     variance_type=None, timestep_spacing="linspace"),
    "pndm": dict(_COMMON, skip_prk_steps=False, set_alpha_to_one=False, timestep_spacing="leading"),
    "unipc": dict(_COMMON, solver_order=2, thresholding=False, predict_x0=True, solver_type="bh2",
                  lower_order_final=True, disable_corrector=[], solver_p=None, use_karras_sigmas=False,
                  use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False,
                  timestep_spacing="linspace", final_sigmas_type="zero"),
}
# Options whose other values these samplers do not implement (a named error, never a silent difference).
SUPPORTED = {"trained_betas": (None,), "rescale_betas_zero_snr": (False,), "thresholding": (False,),
             "beta_schedule": ("linear", "scaled_linear"), "prediction_type": ("epsilon", "v_prediction"),
             "timestep_spacing": ("leading", "trailing", "linspace"), "interpolation_type": ("linear",),
             "use_karras_sigmas": (False, None), "use_exponential_sigmas": (False, None),
             "use_beta_sigmas": (False, None), "use_lu_lambdas": (False,), "use_flow_sigmas": (False,),
             "timestep_type": ("discrete",), "final_sigmas_type": ("zero",), "solver_order": (2,),
             "algorithm_type": ("dpmsolver++",), "lower_order_final": (True,),
             "euler_at_final": (False,), "lambda_min_clipped": (-float("inf"),), "variance_type": (None,),
             "skip_prk_steps": (True,), "predict_x0": (True,), "disable_corrector": ([],), "solver_p": (None,)}
CLASS_SAMPLERS = {v: k for k, v in CLASSES.items()}


class SamplerConfigError(ValueError):
    """A scheduler config or sampler choice these samplers cannot reproduce: names the key."""


def resolve(folder_config: dict, sampler: str = None) -> tuple:
    """(sampler name, config): the folder's own class when `sampler` is None, else `sampler`'s defaults updated with
    the JSON's keys that it knows (diffusers' `from_config`; keys the JSON marks as defaults are left out)."""
    own = CLASS_SAMPLERS.get(folder_config.get("_class_name"))
    name = sampler or own
    if name not in DEFAULTS:
        raise SamplerConfigError(f"sampler={name!r} (the folder's scheduler is {folder_config.get('_class_name')!r})"
                                 f": choose one of {sorted(DEFAULTS)}")
    defaulted = set(folder_config.get("_use_default_values", ()))
    config = dict(DEFAULTS[name])
    config.update({k: v for k, v in folder_config.items() if k in config and k not in defaulted})
    supported = dict(SUPPORTED, solver_type=("bh2",) if name == "unipc" else ("midpoint",))
    for key, values in supported.items():
        if key in config and config[key] not in values:
            raise SamplerConfigError(f"scheduler config {key}={config[key]!r} is not supported by sampler {name!r}")
    return name, config


def alphas_cumprod(config: dict) -> np.ndarray:
    """float32 [T] as torch computes it: linspace (of sqrt for scaled_linear) in float32, then a float32 cumprod."""
    t = config["num_train_timesteps"]
    if config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, t, dtype=np.float32) ** 2
    else:
        betas = np.linspace(config["beta_start"], config["beta_end"], t, dtype=np.float32)
    return np.cumprod(np.float32(1.0) - betas.astype(np.float32), dtype=np.float32)


def timesteps(config: dict, steps: int, extra: int = 0) -> np.ndarray:
    """The grid of `steps` timesteps, descending, by the config's spacing (`extra=1`: DPM-Solver's grid of
    steps + 1 points with the last dropped)."""
    total, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, total - 1, steps + extra).round()[::-1][:steps].astype(np.int64)
    if spacing == "leading":
        ratio = total // (steps + extra)
        return (np.arange(0, steps + extra) * ratio).round()[::-1][:steps].astype(np.int64) + config["steps_offset"]
    return np.round(np.arange(total, 0, -total / steps)).astype(np.int64) - 1  # trailing


class Plan(NamedTuple):
    """Everything a chain needs, per step i (arrays of length steps): the model's timestep, the input scale, and
    the sampler's coefficients; `init_sigma` scales the initial unit noise; `noise_scale` (a, s) noises a clean
    latent to the first step as the scheduler's `add_noise` does (img2img: a x0 + s noise)."""
    name: str
    t: np.ndarray
    scale_in: np.ndarray
    coef: dict
    init_sigma: float
    prediction: str
    clip: Any  # DDIM's clip_sample_range, or None
    noise_scale: tuple = (1.0, 1.0)


def check_steps(steps: int, config: dict) -> None:
    """A step count is an int (not a bool) in [1, num_train_timesteps]; else a named SamplerConfigError."""
    total = config["num_train_timesteps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
        raise SamplerConfigError(f"steps={steps!r} must be an int in [1, {total}]")


def start_of(steps: int, strength: float) -> int:
    """img2img's first step (diffusers' rule): int(steps * strength) steps are run, the last ones."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise SamplerConfigError(f"strength={strength!r} must be in (0, 1]")
    run = min(int(steps * strength), steps)
    if run < 1:
        raise SamplerConfigError(f"strength={strength!r} with steps={steps} runs no step (int(steps * strength) "
                                 "must be at least 1)")
    return steps - run


def plan(name: str, config: dict, steps: int, start: int = 0) -> Plan:
    """The host-side plan of `steps` steps of sampler `name` with `config` (from `resolve`); `start` > 0 (img2img,
    `start_of`) keeps the grid of `steps` and runs it from step `start`, the multistep histories starting there."""
    check_steps(steps, config)
    total = config["num_train_timesteps"]
    ac = alphas_cumprod(config)
    f32 = np.float32
    prediction = config["prediction_type"]
    with np.errstate(divide="ignore", invalid="ignore"):  # the clean end: sigma 0, lambda and h infinite
        if name == "ddim":
            ts = timesteps(config, steps)
            prev = ts - total // steps
            final = f32(1.0) if config["set_alpha_to_one"] else ac[0]
            a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final).astype(f32)
            clip = config["clip_sample_range"] if config["clip_sample"] else None
            t0 = ts[start]
            return Plan(name, ts[start:].astype(f32), np.ones(steps - start, f32),
                        {"a": ac[ts][start:], "a_prev": a_prev[start:]}, 1.0, prediction, clip,
                        (float(ac[t0] ** 0.5), float((1 - ac[t0]) ** 0.5)))
        if name == "pndm":
            return _pndm_plan(config, steps, ac, prediction, start)
        all_sigmas = (((1 - ac) / ac) ** 0.5).astype(f32)
        if name == "euler":
            if config["timestep_spacing"] == "linspace":
                ts = np.linspace(0, total - 1, steps, dtype=f32)[::-1].copy()
            else:
                ts = timesteps(config, steps).astype(f32)
            sigmas = np.concatenate([np.interp(ts, np.arange(total), all_sigmas), [0.0]]).astype(f32)
            init = sigmas.max() if config["timestep_spacing"] in ("linspace", "trailing") else \
                (sigmas.max() ** 2 + 1) ** 0.5
            return Plan(name, ts[start:], (1 / (sigmas[:-1] ** 2 + 1) ** 0.5).astype(f32)[start:],
                        {"sigma": sigmas[:-1][start:], "sigma_next": sigmas[1:][start:]}, float(init), prediction,
                        None, (1.0, float(sigmas[start])))
        if name == "unipc":
            return _unipc_plan(config, steps, all_sigmas, prediction, start)
        # dpmpp_2m
        ts = timesteps(config, steps, extra=1)
        sigmas = np.concatenate([np.interp(ts, np.arange(total), all_sigmas), [0.0]]).astype(f32)
        alpha = (1 / (sigmas ** 2 + 1) ** 0.5).astype(f32)
        sigma = (sigmas * alpha).astype(f32)
        lam = (np.log(alpha) - np.log(sigma)).astype(f32)
        h = (lam[1:] - lam[:-1]).astype(f32)
        c = (alpha[1:] * (np.exp(-h) - 1)).astype(f32)
        h_prev = np.concatenate([[np.inf], h[:-1]]).astype(f32)
        second = (np.arange(steps) > start) & (np.arange(steps) < steps - 1)
        inv_r = np.where(second, h / h_prev, 0.0).astype(f32)  # 1 / r0, r0 = h_0 / h
        coef = {"alpha": alpha[:-1], "sigma": sigma[:-1], "ratio": (sigma[1:] / sigma[:-1]).astype(f32), "c": c,
                "inv_r": inv_r}
        return Plan(name, ts[start:].astype(f32), np.ones(steps - start, f32),
                    {k: v[start:] for k, v in coef.items()}, 1.0, prediction, None,
                    (float(alpha[start]), float(sigma[start])))


# PLMS: the model output used at call c is (sum_k n_k e_k) / d over the newest outputs e (this call's first).
_PLMS = {0: ((1, 0, 0, 0), 1), 1: ((1, 1, 0, 0), 2), 2: ((3, -1, 0, 0), 2), 3: ((23, -16, 5, 0), 12),
         4: ((55, -59, 37, -9), 24)}


def _pndm_plan(config: dict, steps: int, ac: np.ndarray, prediction: str, start: int) -> Plan:
    total, f32 = config["num_train_timesteps"], np.float32
    ratio = total // steps
    grid = timesteps(config, steps)[::-1]  # ascending
    calls = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1]  # steps + 1 calls (1 when steps == 1)
    calls = calls[start:]  # img2img: the counter starts again there (diffusers' PNDM does the same)
    t_from, t_to = calls.copy(), calls - ratio
    if len(calls) > 1:  # the redo: from the first timestep to the second, again
        t_from[1], t_to[1] = calls[1] + ratio, calls[1]
    final = f32(1.0) if config["set_alpha_to_one"] else ac[0]
    a = ac[t_from]
    a_prev = np.where(t_to >= 0, ac[np.maximum(t_to, 0)], final).astype(f32)
    mode = np.minimum(np.arange(len(calls)), 4)
    weights = np.array([_PLMS[m][0] for m in mode], f32)
    return Plan("pndm", calls.astype(f32), np.ones(len(calls), f32),
                {"a": a, "a_prev": a_prev, "n": weights, "d": np.array([_PLMS[m][1] for m in mode], f32),
                 "redo": mode == 1, "first": mode == 0}, 1.0, prediction, None,
                (float(ac[calls[0]] ** 0.5), float((1 - ac[calls[0]]) ** 0.5)))


def _unipc_plan(config: dict, steps: int, all_sigmas: np.ndarray, prediction: str, start: int) -> Plan:
    """Per step k: the predictor x' = r x - a m_k - b (m_{k-1} - m_k), and (k > 0) the corrector of the previous
    point x_k = r' x_{k-1} - a' m_{k-1} - c1 (m_{k-2} - m_{k-1}) - c2 (m_k - m_{k-1}), with diffusers' orders
    (the predictor's order: 1 at the first and the last step, 2 between; each corrector takes its step's)."""
    total = config["num_train_timesteps"]
    ts = timesteps(config, steps, extra=1)
    sig = np.concatenate([np.interp(ts, np.arange(total), all_sigmas), [0.0]]).astype(np.float32).astype(np.float64)
    alpha = 1 / np.sqrt(sig ** 2 + 1)
    sigma = sig * alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    order = np.array([1 if k == start or k == steps - 1 else 2 for k in range(steps)])
    coef = {k: np.zeros(steps) for k in ("r", "a", "b", "rc", "ac", "c1", "c2")}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(steps):
            h = lam[k + 1] - lam[k]
            e = np.expm1(-h)
            coef["r"][k], coef["a"][k] = sigma[k + 1] / sigma[k], alpha[k + 1] * e
            if order[k] == 2:
                rk = (lam[k - 1] - lam[k]) / h
                coef["b"][k] = alpha[k + 1] * e * 0.5 / rk
            if k == start:
                continue
            h = lam[k] - lam[k - 1]  # the corrector redoes step k-1 -> k, of that step's order
            hh, e = -h, np.expm1(-h)
            coef["rc"][k], coef["ac"][k] = sigma[k] / sigma[k - 1], alpha[k] * e
            b1 = (e / hh - 1) / e
            if order[k - 1] == 1:
                coef["c2"][k] = alpha[k] * e * 0.5
            else:
                rk = (lam[k - 2] - lam[k - 1]) / h
                b2 = ((e / hh - 1) / hh - 0.5) * 2 / e
                rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array([b1, b2]))
                coef["c1"][k], coef["c2"][k] = alpha[k] * e * rho[0] / rk, alpha[k] * e * rho[1]
    coef = {k: v.astype(np.float32) for k, v in coef.items()}
    coef.update(alpha=alpha[:-1].astype(np.float32), sigma=sigma[:-1].astype(np.float32),
                correct=np.arange(steps) > start)
    return Plan("unipc", ts[start:].astype(np.float32), np.ones(steps - start, np.float32),
                {k: v[start:] for k, v in coef.items()}, 1.0, prediction, None,
                (float(np.float32(alpha[start])), float(np.float32(sigma[start]))))


def add_noise(p: Plan, x0: jax.Array, noise: jax.Array) -> jax.Array:
    """A clean latent noised to the plan's first step, as the scheduler's `add_noise` (img2img's start)."""
    a, s = p.noise_scale
    return a * x0 + s * noise


def run(p: Plan, model_fn: Callable, x_init: jax.Array, noised: bool = False) -> jax.Array:
    """The chain of plan `p` from the unit noise `x_init` (scaled by `init_sigma`), or from a latent already at
    the first step (`noised`, img2img): one lax.scan; `model_fn(x, t [B]) -> output`."""
    batch = x_init.shape[0]
    xs = {"t": jnp.asarray(p.t), "scale_in": jnp.asarray(p.scale_in),
          **{k: jnp.asarray(v) for k, v in p.coef.items()}}

    def step(carry, s):
        x, previous = carry
        out = model_fn(x * s["scale_in"], jnp.full((batch,), s["t"], jnp.float32)).astype(jnp.float32)
        if p.name == "ddim":
            a, a_prev = s["a"], s["a_prev"]
            b = 1 - a
            if p.prediction == "epsilon":
                x0, eps = (x - b ** 0.5 * out) / a ** 0.5, out
            else:
                x0, eps = a ** 0.5 * x - b ** 0.5 * out, a ** 0.5 * out + b ** 0.5 * x
            if p.clip is not None:
                x0 = jnp.clip(x0, -p.clip, p.clip)
            return (a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps, previous), None
        if p.name == "euler":
            sigma = s["sigma"]
            x0 = x - sigma * out if p.prediction == "epsilon" else \
                out * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
            return (x + (x - x0) / sigma * (s["sigma_next"] - sigma), previous), None
        if p.name == "pndm":
            cur, e1, e2, e3 = previous  # the sample before the redo; the outputs kept, newest first
            n = s["n"]
            combined = (n[0] * out + n[1] * e1 + n[2] * e2 + n[3] * e3) / s["d"]
            base = jnp.where(s["redo"], cur, x)
            a, a_prev = s["a"], s["a_prev"]
            if p.prediction == "v_prediction":
                combined = a ** 0.5 * combined + (1 - a) ** 0.5 * base
            denom = a * (1 - a_prev) ** 0.5 + (a * (1 - a) * a_prev) ** 0.5
            x_next = (a_prev / a) ** 0.5 * base - (a_prev - a) * combined / denom
            kept = jax.tree.map(lambda new, old: jnp.where(s["redo"], old, new), (out, e1, e2), (e1, e2, e3))
            return (x_next, (jnp.where(s["first"], x, cur), *kept)), None
        x0 = (x - s["sigma"] * out) / s["alpha"] if p.prediction == "epsilon" else s["alpha"] * x - s["sigma"] * out
        if p.name == "unipc":
            m1, m2, x_last = previous  # the previous two points' x0, the previous point's (corrected) x
            corrected = s["rc"] * x_last - s["ac"] * m1 - s["c1"] * (m2 - m1) - s["c2"] * (x0 - m1)
            x = jnp.where(s["correct"], corrected, x)
            return (s["r"] * x - s["a"] * x0 - s["b"] * (m1 - x0), (x0, m1, x)), None
        d1 = s["inv_r"] * (x0 - previous)
        return (s["ratio"] * x - s["c"] * x0 - 0.5 * s["c"] * d1, x0), None

    x = x_init if noised else x_init * p.init_sigma
    zeros = jnp.zeros_like(x)
    history = {"pndm": (zeros,) * 4, "unipc": (zeros,) * 3}.get(p.name, zeros)
    (x, _), _ = jax.lax.scan(step, (x, history), xs)
    return x
