"""Rectified flow and the transformer backbones through the one train step, loop, sampler and checkpoints: the flow
process and its samplers against the exact answer on Gaussian data, named config errors, resume after SIGKILL equal
to an uninterrupted run, damaged-checkpoint fallback, and 8 devices equal to 1."""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.data import pipeline
from diffusion_jax.diffusion import process as process_lib
from diffusion_jax.diffusion import samplers
from diffusion_jax.parallel import DataParallel
from diffusion_jax.trainers import diffusion, digits, txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments/digits.py")
SCENES = os.path.join(ROOT, "experiments/txt2img_scenes.py")


def test_flow_process_interpolates_noise_and_data_and_draws_times_in_the_unit_interval():
    flow = process_lib.Flow()
    x0, noise = jnp.full((3, 2, 2, 1), 0.5), jnp.full((3, 2, 2, 1), -1.0)
    t = jnp.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(flow.noisy(x0, t, noise)[:, 0, 0, 0], [0.5, 0.125, -1.0])
    np.testing.assert_allclose(flow.target(x0, t, noise), -1.5)
    keys = jax.random.split(jax.random.key(0), 4000)
    for p, mean in ((flow, 0.5), (process_lib.Flow(time_sampling="uniform"), 0.5),
                    (process_lib.Flow(shift=3.0), None)):
        ts = np.asarray(jax.vmap(p.draw_time)(keys))
        assert ts.min() > 0.0 and ts.max() < 1.0
        if mean is not None:
            assert abs(ts.mean() - mean) < 0.02
    shifted = np.asarray(jax.vmap(process_lib.Flow(shift=3.0).draw_time)(keys))
    assert shifted.mean() > 0.6  # the shift moves training towards noise
    grid = samplers.flow_time_grid(4, shift=3.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and np.all(np.diff(grid) < 0)
    np.testing.assert_allclose(grid[2], 3 * 0.5 / (1 + 2 * 0.5), rtol=1e-6)


@pytest.mark.parametrize("sigma", [0.3, 1.5])
def test_flow_samplers_reach_the_exact_ode_solution_on_gaussian_data(sigma):
    """x0 ~ N(0, sigma^2): the exact velocity is v(x, t) = (t - (1 - t) sigma^2) / V(t) x with
    V(t) = (1 - t)^2 sigma^2 + t^2, and the ODE carries the noise x(1) to sigma x(1). Euler converges at first
    order, Heun (last step Euler) at second. DPM-Solver++(2M) is second order between its first-order ends (next to
    t = 1 and t = 0, where lambda's steps do not shrink as the steps double), so its error levels off with many steps;
    at 10 steps, at Euler's cost, it is 3.0x (sigma 0.3) and 6.7x (sigma 1.5) closer."""
    def model_fn(x, t_model):
        t = (t_model / 1000.0)[:, None, None, None]
        return (t - (1 - t) * sigma**2) / ((1 - t) ** 2 * sigma**2 + t**2) * x

    keys = jax.random.split(jax.random.key(1), 64)
    x1 = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (4,)).reshape(2, 2, 1))(keys)
    errors = {}
    for name in ("euler", "heun", "dpmpp_2m"):
        for steps in (10, 20):
            x0 = samplers.flow_sample(name, model_fn, keys, (2, 2, 1), steps=steps, clip_x0=False)
            errors[name, steps] = float(jnp.max(jnp.abs(x0 - sigma * x1)))
    # Doubling the steps halves Euler's error (first order) and quarters Heun's (second order; measured 4.2x, 4.4x).
    assert 1.6 < errors["euler", 10] / errors["euler", 20] < 2.5
    assert errors["heun", 10] / errors["heun", 20] > 3.2
    assert errors["heun", 10] < errors["euler", 10] / 3
    assert errors["dpmpp_2m", 10] < errors["euler", 10] / 2.5 and errors["dpmpp_2m", 10] / errors["dpmpp_2m", 20] > 3
    with pytest.raises(ValueError, match="'ddim'"):
        samplers.flow_sample("ddim", model_fn, keys, (2, 2, 1), steps=3)


@pytest.mark.parametrize("spec,overrides,key", [
    (f"{DIGITS}:tiny+flow", {"sample.sampler": "ddpm"}, "sample.sampler"),
    (f"{DIGITS}:tiny", {"sample.sampler": "heun"}, "sample.sampler"),
    (f"{DIGITS}:tiny+flow", {"diffusion.process": "sde"}, "diffusion.process"),
    (f"{DIGITS}:tiny+flow", {"diffusion.time_sampling": "beta"}, "diffusion.time_sampling"),
    (f"{DIGITS}:tiny+flow", {"diffusion.loss_weighting": "min_snr"}, "diffusion.loss_weighting"),
    (f"{DIGITS}:tiny+dit", {"model.name": "vit"}, "model.name"),
    (f"{DIGITS}:tiny+dit", {"model.patch_size": 3}, "model.patch_size"),
    (f"{DIGITS}:tiny+mmdit", {"model.width": 17}, "model.width"),
    (f"{DIGITS}:tiny+dit", {"model.depth": 0}, "model.depth"),
])
def test_bad_backbone_and_process_keys_are_named(spec, overrides, key):
    config = load_config(spec)
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ConfigError, match=rf"config\.{key}="):
        digits.validate_config(config)


def test_bad_latent_patch_size_is_named_for_text_to_image():
    config = load_config(f"{SCENES}:tiny+mmdit")
    txt2img.validate_config(config)
    config.model.patch_size = 3  # the 16x16 latents
    with pytest.raises(ConfigError, match=r"config\.model\.patch_size=3 does not divide the 16x16 latents"):
        txt2img.validate_config(config)
    with pytest.raises(ValueError, match="unknown preset 'tiny\\+dit\\+mmdit'"):
        load_config(f"{SCENES}:tiny+dit+mmdit")


def _train(config, workdir):
    """Trains the digits task in-process through the one loop (as --mode=train without the final sampling)."""
    task = digits.make_task(config)
    data = digits.train_data(config)
    get_batch = lambda step: pipeline.get_batch(data, config.train.batch_size, config.seed, step)  # noqa: E731
    return task.train_loop(workdir, get_batch, description="test"), task


def _main(workdir, preset):
    cmd = [sys.executable, "-m", "diffusion_jax.main", f"--config={DIGITS}:{preset}", f"--workdir={workdir}",
           "--config.train.final_sample=False"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_new_backbone_and_objective_resume_after_sigkill_fall_back_from_damage_and_sample(tmp_path):
    """A DiT trained by rectified flow, killed after its step-10 checkpoint, resumes to the uninterrupted run's
    weights; the MMDiT's checkpoints go through the same loop (and its 8-device run is below)."""
    preset = "tiny+dit+flow"
    killed = str(tmp_path / "killed")
    proc = _main(killed, preset)
    config = load_config(f"{DIGITS}:{preset}")
    reference, task = _train(config, str(tmp_path / "whole"))  # meanwhile, the uninterrupted run in-process
    deadline = time.time() + 300
    while not os.path.isdir(os.path.join(killed, "checkpoints", "10")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # while the step-10 sample grid is compiling: before step 20
    proc.wait()
    assert not os.path.isdir(os.path.join(killed, "checkpoints", "20"))
    out, _ = _main(killed, preset).communicate(timeout=300)
    step, resumed = task.load_state(killed, hint="")
    assert step == int(reference.step) == 20, out
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    os.remove(tmp_path / "whole" / "checkpoints" / "20" / "default" / "manifest.ocdbt")
    step, _ = task.load_state(str(tmp_path / "whole"), hint="")
    assert step == 10
    images = task.sampler_for(4)(task.params_for_sampling(reference), np.arange(4, dtype=np.int32), seed=0,
                                 guidance=2.0)
    assert images.shape == (4, 32, 32, 1) and np.all(np.isfinite(images)) and np.abs(images).max() <= 1.0


@pytest.mark.parametrize("preset", ["tiny+dit+flow", "tiny+mmdit+flow"])
def test_new_backbones_and_flow_on_eight_devices_equal_one_device(preset):
    assert jax.local_device_count() == 8, "tests/conftest.py should give 8 fake CPU devices"
    config = load_config(f"{DIGITS}:{preset}")
    task = digits.make_task(config)
    data = digits.train_data(config)
    runs = []
    for dp in (DataParallel("shard_map", jax.local_devices()[:1]), DataParallel("shard_map")):
        # plain SGD, as tests/test_parallel.py: Adam turns reduction-order noise in tiny gradients into updates
        step = dp.lift(diffusion.make_train_step(task.model, task.process, optax.sgd(0.05), seed=0,
                                                 cond_dropout=0.1, ema_decay=0.9), ("replicated", "sharded"),
                       ("replicated", "replicated"))
        state = dp.replicate(jax.jit(task.init_state)())
        losses = []
        for s in range(2):
            state, metrics = step(state, dp.shard_batch(pipeline.get_batch(data, 16, 0, s)))
            losses.append(float(dp.unreplicate(metrics)["loss"]))
        sampler = diffusion.Sampler(dp, task.model, task.process, (32, 32, 1), sampler="heun", steps=3, eta=0.0,
                                    batch_size=8)
        images = sampler(dp.replicate(dp.unreplicate(state).params), np.arange(8, dtype=np.int32) % 10, seed=3,
                         guidance=2.0)
        runs.append((losses, images))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-4)
