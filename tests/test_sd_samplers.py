"""Stable Diffusion's samplers (diffusion/sd_samplers.py) step as diffusers' schedulers do (issue 25, item 3).

Each of the five is run as one lax.scan with a stand-in model (a smooth function of the input and the timestep, so
every coefficient, grid point and history term shows) against diffusers' scheduler loop, on SD 1.x's shipped
config (PNDM, scaled_linear, "leading" + steps_offset, set_alpha_to_one False, epsilon) and an SD 2.x-style one
(DDIM class, v_prediction), for 1, 2, 10 and 20 steps, and with "trailing" and "linspace" grids. The timesteps
must be equal; the samples agree to float32 rounding of the coefficients: 2e-6 of the chain's largest value (the
initial noise times Euler's sigma_max ~ 14.6, or the end: ~40 in epsilon mode, as the stand-in is no denoiser).
"""
import diffusers
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from diffusion_jax.diffusion import sd_samplers

SD1 = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
       "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
       "clip_sample": False, "prediction_type": "epsilon"}
SD2 = dict(SD1, _class_name="DDIMScheduler", prediction_type="v_prediction", timestep_spacing="leading")
CLASSES = {"ddim": diffusers.DDIMScheduler, "euler": diffusers.EulerDiscreteScheduler,
           "dpmpp_2m": diffusers.DPMSolverMultistepScheduler, "pndm": diffusers.PNDMScheduler,
           "unipc": diffusers.UniPCMultistepScheduler}


def _diffusers_chain(name, folder, steps, noise):
    scheduler = CLASSES[name].from_config({k: v for k, v in folder.items() if k != "_class_name"})
    scheduler.set_timesteps(steps)
    latents = torch.tensor(noise.transpose(0, 3, 1, 2)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(torch.tanh(0.7 * model_in + t.float() / 1000.0), t, latents).prev_sample
    return scheduler.timesteps.numpy(), latents.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("folder", [SD1, SD2, dict(SD1, timestep_spacing="trailing"),
                                    dict(SD2, timestep_spacing="linspace")], ids=["sd1", "sd2", "trailing", "linspace"])
def test_chain_equals_diffusers(name, folder):
    noise = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
    for steps in (1, 2, 10, 20):
        ts, reference = _diffusers_chain(name, folder, steps, noise)
        plan = sd_samplers.plan(*sd_samplers.resolve(folder, name), steps)
        ours = np.asarray(sd_samplers.run(plan, lambda x, t: jnp.tanh(0.7 * x + t[:, None, None, None] / 1000.0),
                                          jnp.asarray(noise)))
        np.testing.assert_array_equal(plan.t, ts.astype(np.float32), err_msg=f"{name} {steps} timesteps")
        scale = max(1.0, float(np.abs(reference).max()), plan.init_sigma * float(np.abs(noise).max()))
        assert np.abs(ours - reference).max() <= 2e-6 * scale, (name, steps)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_img2img_start_equals_diffusers(name):
    """From a clean latent noised to a later step (diffusers' img2img: `strength`, `set_begin_index`, `add_noise`)."""
    rng = np.random.default_rng(0)
    x0, noise = (rng.normal(size=(2, 8, 8, 4)).astype(np.float32) for _ in range(2))
    for steps, strength in ((10, 0.6), (5, 0.5), (4, 1.0), (20, 0.35)):
        scheduler = CLASSES[name].from_config({k: v for k, v in SD1.items() if k != "_class_name"})
        scheduler.set_timesteps(steps)
        start = sd_samplers.start_of(steps, strength)
        assert start == steps - min(int(steps * strength), steps)
        ts = scheduler.timesteps[start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):  # as the img2img pipeline does
            scheduler.set_begin_index(start * scheduler.order)
        to_torch = lambda a: torch.tensor(a.transpose(0, 3, 1, 2))  # noqa: E731
        latents = scheduler.add_noise(to_torch(x0), to_torch(noise), ts[:1])
        for t in ts:
            model_in = scheduler.scale_model_input(latents, t)
            latents = scheduler.step(torch.tanh(0.7 * model_in + t.float() / 1000.0), t, latents).prev_sample
        reference = latents.permute(0, 2, 3, 1).numpy()
        plan = sd_samplers.plan(*sd_samplers.resolve(SD1, name), steps, start)
        noised = sd_samplers.add_noise(plan, jnp.asarray(x0), jnp.asarray(noise))
        ours = np.asarray(sd_samplers.run(plan, lambda x, t: jnp.tanh(0.7 * x + t[:, None, None, None] / 1000.0),
                                          noised, noised=True))
        np.testing.assert_array_equal(plan.t, ts.numpy().astype(np.float32), err_msg=f"{name} {steps} {strength}")
        scale = max(1.0, float(np.abs(reference).max()), float(np.abs(noised).max()))
        assert np.abs(ours - reference).max() <= 2e-6 * scale, (name, steps, strength)


def test_config_resolution_and_bad_choices_are_named():
    name, config = sd_samplers.resolve(SD1)
    assert name == "pndm" and config["timestep_spacing"] == "leading" and config["steps_offset"] == 1
    name, config = sd_samplers.resolve(SD1, "dpmpp_2m")  # keys the JSON holds, DPM's defaults for the rest
    assert config["beta_schedule"] == "scaled_linear" and config["timestep_spacing"] == "linspace"
    name, config = sd_samplers.resolve({**SD1, "_use_default_values": ["steps_offset"]}, "ddim")
    assert config["steps_offset"] == 0  # a key the JSON marks as defaulted takes the chosen class's default
    with pytest.raises(sd_samplers.SamplerConfigError, match="sampler='ddpm'.*choose one of"):
        sd_samplers.resolve(SD1, "ddpm")
    with pytest.raises(sd_samplers.SamplerConfigError, match="use_karras_sigmas=True is not supported"):
        sd_samplers.resolve({**SD1, "use_karras_sigmas": True}, "euler")
    with pytest.raises(sd_samplers.SamplerConfigError, match="skip_prk_steps=False"):
        sd_samplers.resolve({**SD1, "skip_prk_steps": False})
    for strength in (0, 1.5, True):
        with pytest.raises(sd_samplers.SamplerConfigError, match=r"strength=.* must be in \(0, 1\]"):
            sd_samplers.start_of(10, strength)
    with pytest.raises(sd_samplers.SamplerConfigError, match="runs no step"):
        sd_samplers.start_of(10, 0.05)
    for steps in (0, 1001, 2.5, True):  # a bool is not a step count
        with pytest.raises(sd_samplers.SamplerConfigError, match=r"steps=.* must be an int in \[1, 1000\]"):
            sd_samplers.plan(*sd_samplers.resolve(SD1), steps)
