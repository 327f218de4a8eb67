"""One per-device train step, two lifts (shard_map, pmap): same result on 8 devices as on 1, for steps and sampling."""
import dataclasses
import os

import jax
import numpy as np
import optax
import pytest

from diffusion_jax.data import pipeline
from diffusion_jax.diffusion import process as process_lib
from diffusion_jax.parallel import DataParallel
from diffusion_jax.trainers import diffusion
from diffusion_jax.trainers import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from diffusion_jax.config import load_config


def _run_steps(task: diffusion.DiffusionTask, dp: DataParallel, num_steps: int = 3, loss_weighting: str = "none"):
    c = task.config
    proc = dataclasses.replace(task.process, loss_weighting=loss_weighting)
    step = dp.lift(diffusion.make_train_step(task.model, proc, task.tx, seed=c.seed,
                                             cond_dropout=c.diffusion.cond_dropout, ema_decay=c.train.ema_decay),
                   ("replicated", "sharded"), ("replicated", "replicated"))
    data = digits.train_data(task.config)
    state = dp.replicate(jax.jit(task.init_state)())
    metrics_seen = []
    for s in range(num_steps):
        state, metrics = step(state, dp.shard_batch(pipeline.get_batch(data, c.train.batch_size, c.seed, s)))
        metrics_seen.append({k: float(v) for k, v in dp.unreplicate(metrics).items()})
    return dp.unreplicate(state), metrics_seen


@pytest.fixture(scope="module")
def task():
    assert jax.local_device_count() == 8, "tests/conftest.py should give 8 fake CPU devices"
    config = load_config(os.path.join(ROOT, "experiments/digits.py:tiny"))
    task = digits.make_task(config)
    # Plain SGD for the comparison: Adam divides by sqrt(v) + 1e-8, so for near-zero gradients it turns float
    # reduction-order noise into full-size updates and no two summation orders agree. SGD keeps the comparison tight.
    task.tx = optax.sgd(0.05)
    return task


@pytest.fixture(scope="module")
def one_device(task):
    return _run_steps(task, DataParallel("shard_map", jax.local_devices()[:1]))


def test_min_snr_weighting_in_the_step_on_eight_devices_equals_one_device(task, one_device):
    """The Min-SNR-weighted loss is a different loss (smaller: weights <= 1) with the same 1-vs-8-device equality."""
    _, metrics = _run_steps(task, DataParallel("shard_map"), num_steps=2, loss_weighting="min_snr")
    _, ref = _run_steps(task, DataParallel("shard_map", jax.local_devices()[:1]), num_steps=2, loss_weighting="min_snr")
    np.testing.assert_allclose([m["loss"] for m in metrics], [m["loss"] for m in ref], rtol=1e-4)
    assert metrics[0]["loss"] < one_device[1][0]["loss"]
    with pytest.raises(ValueError, match="'snr'"):
        process_lib.VP(task.process.schedule, loss_weighting="snr")


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_eight_devices_equal_one_device(task, one_device, mode):
    state, metrics = _run_steps(task, DataParallel(mode))
    ref_state, ref_metrics = one_device
    # Same loss, and the same gradient norm (a psum in place of the pmean would scale it by 8).
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in metrics], [m[key] for m in ref_metrics], rtol=1e-4)
    assert int(state.step) == int(ref_state.step) == 3
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ref_state.ema_params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The parameters really moved, so the equality is not trivially true.
    init = jax.jit(task.init_state)()
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(init.params)))
    assert moved > 1e-3


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_sampling_spread_over_devices_equals_one_device(task, one_device, mode):
    params = one_device[0].ema_params
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 9], np.int32)  # 12: not a multiple of 8, so padding is used
    dp1 = DataParallel("shard_map", jax.local_devices()[:1])
    eps = process_lib.VP(task.process.schedule, prediction="eps")
    single = diffusion.Sampler(dp1, task.model, eps, (32, 32, 1), sampler="ddim", steps=3, eta=0.5, batch_size=12)
    dp8 = DataParallel(mode)
    multi = diffusion.Sampler(dp8, task.model, eps, (32, 32, 1), sampler="ddim", steps=3, eta=0.5, batch_size=8)
    a = single(dp1.replicate(params), labels, seed=3, guidance=2.0)
    b = multi(dp8.replicate(params), labels, seed=3, guidance=2.0)
    assert a.shape == (12, 32, 32, 1)
    np.testing.assert_allclose(a, b, atol=1e-4)
    c = single(dp1.replicate(params), labels, seed=4, guidance=2.0)
    assert float(np.mean(np.abs(a - c))) > 1e-2  # another seed draws other images


def test_bad_mode_and_indivisible_batch():
    with pytest.raises(ValueError, match="train.parallel"):
        DataParallel("vmap")
    dp = DataParallel("shard_map")
    with pytest.raises(ValueError, match="12 examples .* 8 devices"):
        dp.shard_batch({"x": np.zeros((12, 2))})
