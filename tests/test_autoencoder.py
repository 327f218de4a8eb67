"""The KL autoencoder on the tiny preset: shapes for f=4 and f=8, the KL against NumPy, training end to end
(checkpoints, latent.json and its scale, resume, a missing latent.json rewritten), the Codec, config errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import main as main_lib
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.models.autoencoder import LOGVAR_RANGE, AutoencoderKL, kl_divergence
from diffusion_jax.sweep import load_sweep
from diffusion_jax.trainers import autoencoder as ae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/autoencoder_scenes.py:tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("autoencoder"))
    config = load_config(TINY)
    state = ae.train(config, workdir)
    return config, workdir, state


@pytest.mark.parametrize("channels,factor", [((8, 16, 16), 4), ((8, 16, 16, 16), 8)])
def test_shapes_for_f4_and_f8(channels, factor):
    model = AutoencoderKL(channels=channels, latent_channels=4, norm_groups=4)
    assert model.factor == factor
    x = jnp.zeros((2, 64, 64, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compile
    mean, logvar = jax.eval_shape(lambda p, x: model.apply(p, x, method=AutoencoderKL.encode), params, x)
    assert mean.shape == logvar.shape == (2, 64 // factor, 64 // factor, 4)
    out = jax.eval_shape(lambda p, x, e: model.apply(p, x, e), params, x, mean)
    assert out["reconstruction"].shape == (2, 64, 64, 3) and out["z"].shape == mean.shape
    assert out["reconstruction"].dtype == jnp.float32


def test_kl_matches_numpy_and_logvar_is_clipped():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    logvar = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    m, lv = mean.astype(np.float64), logvar.astype(np.float64)
    expected = 0.5 * np.sum(m ** 2 + np.exp(lv) - 1.0 - lv, axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(kl_divergence(mean, logvar)), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(kl_divergence(np.zeros_like(mean), np.zeros_like(mean))), 0.0, atol=1e-6)
    # A huge input drives the raw log-variance far outside SD's clamp; encode must return it clipped.
    model = AutoencoderKL(channels=(4, 4), latent_channels=2, norm_groups=2)
    x = jnp.full((1, 8, 8, 3), 1.0)
    params = model.init(jax.random.key(0), x)
    params = jax.tree.map(lambda a: a * 1e4, params)
    _, logvar = model.apply(params, x, method=AutoencoderKL.encode)
    assert LOGVAR_RANGE[0] <= float(jnp.min(logvar)) and float(jnp.max(logvar)) <= LOGVAR_RANGE[1]


def test_train_writes_checkpoints_latent_json_and_eval(trained):
    config, workdir, state = trained
    assert int(state.step) == config.train.num_steps
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [15, 30]
    info = json.load(open(os.path.join(workdir, "latent.json")))
    assert info["step"] == 30 and info["latent_shape"] == [32, 32, 4]
    # The scale recomputed here: 1 / std of the EMA posterior means of the seeded training subset.
    task = ae.AutoencoderTask(config)
    images = task.data("train")["image"]
    subset = ae.to_model_images(images[ae.scale_indices(len(images), config)])
    assert len(subset) == config.data.scale_examples
    mean, _ = task.model.apply(state.ema_params, subset, method=AutoencoderKL.encode)
    np.testing.assert_allclose(info["scale"], 1.0 / np.std(np.asarray(mean, np.float64)), rtol=1e-4)
    result = json.load(open(os.path.join(workdir, "eval.json")))
    for key in ("psnr", "psnr_overall", "psnr_heldout_pairs", "psnr_seen_pairs"):
        assert 5.0 < result[key] < 100.0, result
    assert result["num_images"] == 500 and result["step"] == 30
    # The scene checker on originals vs reconstructions: fractions, and the originals read near their ceiling.
    for key in ("same_reading", "same_reading_heldout_pairs", "checker_all_on_reconstructions"):
        assert 0.0 <= result[key] <= 1.0, result
    assert result["checker_all_on_originals"] > 0.3, result  # a 30-step classifier; colours and relations exact
    assert os.path.exists(os.path.join(workdir, "samples", "reconstructions.png"))
    # The sweep tabulates keys of this eval.json.
    sweep = load_sweep(os.path.join(ROOT, "experiments/sweeps/autoencoder_f.py"))
    assert set(sweep.metrics) <= set(result) and sweep.metric in result


def test_loss_decreases(trained):
    _, workdir, _ = trained
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], rows
    assert all(np.isfinite(r["kl"]) and r["kl"] > 0 for r in rows)


def test_resume_after_completion_does_nothing_and_rewrites_a_missing_latent_json(trained):
    config, workdir, _ = trained
    latent = os.path.join(workdir, "latent.json")
    metrics = open(os.path.join(workdir, "metrics.jsonl")).read()
    before = open(latent).read()
    config = load_config(TINY)
    config.train.final_eval = False
    mtime = os.path.getmtime(latent)
    ae.train(config, workdir)
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics  # no new step
    assert os.path.getmtime(latent) == mtime and open(latent).read() == before  # same step: kept as it was
    os.remove(latent)
    ae.train(config, workdir)
    again, first = json.load(open(latent)), json.loads(before)
    assert again["step"] == first["step"] and again["latent_shape"] == first["latent_shape"]
    np.testing.assert_allclose(again["scale"], first["scale"], rtol=1e-6)
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == [15, 30]


def test_codec_round_trip_is_deterministic_and_compiles_once_per_bucket(trained):
    config, workdir, _ = trained
    codec = ae.load(config, workdir)
    info = json.load(open(os.path.join(workdir, "latent.json")))
    assert codec.image_shape == (64, 64, 3) and codec.latent_shape == (32, 32, 4) and codec.step == 30
    assert codec.fingerprint() == {"latent_shape": [32, 32, 4], "scale": info["scale"]}
    images = ae.to_model_images(ae.AutoencoderTask(config).data("test")["image"][:4])
    z = codec.encode(images[:3])
    np.testing.assert_array_equal(codec.encode(images[:3]), z)  # the same inputs: bitwise the same latents
    assert z.shape == (3, 32, 32, 4) and z.dtype == np.float32
    enc_before, dec_before = codec._encode._cache_size(), codec._decode._cache_size()
    z4 = codec.encode(images)  # 3 and 4 inputs share the bucket of 4
    np.testing.assert_allclose(z4[:3], z, rtol=1e-4, atol=1e-4)  # deterministic: the posterior mean, not a sample
    x = codec.decode(z4)
    codec.decode(z)
    assert codec._encode._cache_size() == enc_before == 1
    assert codec._decode._cache_size() == dec_before + 1 == 1
    assert x.shape == (4, 64, 64, 3) and x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    # Scaled latents: the unscaled posterior mean times latent.json's scale.
    mean, _ = codec.model.apply(codec.params, images, method=AutoencoderKL.encode)
    np.testing.assert_allclose(z4, np.asarray(mean) * info["scale"], rtol=1e-4, atol=1e-4)
    rec = ae.reconstruct(codec, ae.to_uint8_images(images))
    assert rec.shape == (4, 64, 64, 3) and rec.dtype == np.uint8


def test_bad_config_keys_raise_config_error_naming_them():
    config = load_config(TINY)
    config.model.channels = (8, 16, 16, 16, 16, 16, 16, 16)  # f = 128 does not divide 64
    with pytest.raises(ConfigError, match="model.channels"):
        ae.validate_config(config)
    config = load_config(TINY)
    config.train.kl_weight = -1.0
    with pytest.raises(ConfigError, match="train.kl_weight"):
        ae.validate_config(config)
    config = load_config(TINY)
    del config.data["scale_examples"]
    with pytest.raises(ConfigError, match="data.scale_examples"):
        ae.validate_config(config)
    with pytest.raises(ValueError, match="'huge'"):
        load_config(os.path.join(ROOT, "experiments/autoencoder_scenes.py:huge"))
    with pytest.raises(ConfigError, match="--mode=sample"):
        main_lib.run(load_config(TINY), "/nonexistent", "sample")


def test_load_of_an_empty_workdir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ae.load(load_config(TINY), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="latent.json"):
        ae.read_latent_info(str(tmp_path))


def test_autoencoder_step_eight_devices_equals_one_device():
    """The step's noise comes from (seed, step, global example index): any device split trains the same model."""
    import optax

    from diffusion_jax.parallel import DataParallel

    config = load_config(TINY)
    task = ae.AutoencoderTask(config)
    tx = optax.sgd(0.05)  # plain SGD: Adam's normalisation would hide a wrongly scaled gradient
    images = task.data("train")["image"][:16]
    init = jax.jit(lambda: ae.TrainState.create(task.init_state().params, tx))()

    def run(dp):
        step = dp.lift(ae.make_train_step(task.model, tx, seed=0, kl_weight=1e-3, ema_decay=0.9),
                       ("replicated", "sharded"), ("replicated", "replicated"))
        state, losses = dp.replicate(init), []
        for s in range(2):
            state, m = step(state, dp.shard_batch({"image": ae.to_model_images(images)}))
            losses.append(float(dp.unreplicate(m)["loss"]))
        return dp.unreplicate(state), losses

    ref_state, ref_losses = run(DataParallel("shard_map", jax.local_devices()[:1]))
    state, losses = run(DataParallel("shard_map"))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(state.params),
                                                            jax.tree.leaves(init.params))) > 1e-4
