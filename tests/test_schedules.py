"""Tests of the noise schedules, the forward process and the loss, against closed forms."""
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.diffusion import losses, schedules


def _cosine_abar_closed_form(t, T, s=0.008):
    f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
    return f(np.asarray(t, np.float64)) / f(0.0)


def test_linear_schedule_matches_ho_et_al_at_1000_steps():
    sched = schedules.make_schedule("linear", 1000)
    betas = np.asarray(sched.betas, np.float64)
    assert sched.num_steps == 1000 and isinstance(sched.num_steps, int)
    np.testing.assert_allclose(betas[0], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(betas[-1], 0.02, rtol=1e-6)
    np.testing.assert_allclose(betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-6)
    np.testing.assert_allclose(sched.alphas, 1.0 - betas, rtol=1e-6)
    np.testing.assert_allclose(sched.alpha_bars, np.cumprod(1.0 - betas), rtol=1e-5)


def test_linear_schedule_scales_endpoints_for_other_lengths():
    sched = schedules.make_schedule("linear", 100)
    np.testing.assert_allclose(sched.betas[0], 1e-3, rtol=1e-6)
    np.testing.assert_allclose(sched.betas[-1], 0.2, rtol=1e-6)
    # Comparable total noise: the final alpha_bar is tiny for both lengths.
    assert float(sched.alpha_bars[-1]) < 1e-3
    assert float(schedules.make_schedule("linear", 1000).alpha_bars[-1]) < 1e-3


def test_cosine_schedule_matches_closed_form():
    T = 100
    sched = schedules.make_schedule("cosine", T)
    abar = np.asarray(sched.alpha_bars, np.float64)
    expected = _cosine_abar_closed_form(np.arange(1, T + 1), T)
    # The last beta is clipped at 0.999 (the closed form reaches alpha_bar = 0 at t = T).
    np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(abar[-1], expected[-2] * (1 - 0.999), rtol=1e-4)
    np.testing.assert_allclose(sched.betas[-1], 0.999, rtol=1e-6)
    assert float(jnp.max(sched.betas)) <= 0.999 + 1e-7


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1, 10, 50, 1000])
def test_schedules_are_float32_and_monotone(name, T):
    sched = schedules.make_schedule(name, T)
    for arr in sched:
        assert arr.dtype == jnp.float32 and arr.shape == (T,)
    abar = np.asarray(sched.alpha_bars)
    assert np.all(abar > 0) and np.all(abar <= 1)
    assert np.all(np.diff(abar) < 0)
    assert np.all(np.asarray(sched.betas) > 0) and np.all(np.asarray(sched.betas) < 1)


def test_make_schedule_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"'quadratic'.*linear.*cosine"):
        schedules.make_schedule("quadratic", 100)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=str(bad)):
            schedules.make_schedule("linear", bad)


def test_q_sample_bf16_input_keeps_dtype_and_uses_f32_math():
    sched = schedules.make_schedule("linear", 100)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 2)), jnp.bfloat16)
    noise = jnp.asarray(rng.normal(size=(3, 4, 4, 2)), jnp.bfloat16)
    t = jnp.array([0, 50, 99])
    xt = schedules.q_sample(sched, x0, t, noise)
    assert xt.dtype == jnp.bfloat16
    abar = np.asarray(sched.alpha_bars, np.float64)[np.asarray(t)][:, None, None, None]
    expected = np.sqrt(abar) * np.asarray(x0, np.float64) + np.sqrt(1 - abar) * np.asarray(noise, np.float64)
    # Only the final rounding to bf16 may differ (bf16 has an 8-bit mantissa).
    np.testing.assert_allclose(np.asarray(xt, np.float64), expected, rtol=2 ** -8, atol=1e-6)
    assert schedules.q_sample(sched, x0.astype(jnp.float32), t, noise).dtype == jnp.float32
    target = schedules.prediction_target(sched, x0, t, noise, "v")
    assert target.dtype == jnp.float32


def test_q_sample_statistics():
    sched = schedules.make_schedule("cosine", 100)
    t = jnp.array([0, 30, 70, 99])
    c = 0.7
    x0 = jnp.full((4, 64, 64, 1), c, jnp.float32)
    noise = jnp.asarray(np.random.default_rng(1).normal(size=x0.shape), jnp.float32)
    xt = np.asarray(schedules.q_sample(sched, x0, t, noise)).reshape(4, -1)
    abar = np.asarray(sched.alpha_bars)[np.asarray(t)]
    n = xt.shape[1]  # 4096 draws per timestep
    np.testing.assert_allclose(xt.mean(1), np.sqrt(abar) * c, atol=5 / np.sqrt(n))
    np.testing.assert_allclose(xt.var(1), 1 - abar, rtol=0.1, atol=1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_targets_invert_through_predict_x0_eps(name, prediction):
    T = 100
    sched = schedules.make_schedule(name, T)
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(rng.uniform(-1, 1, (T - 1, 3, 3, 2)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    t = jnp.arange(T - 1)  # all but the last, where alpha_bar ~ 1e-5 amplifies f32 rounding
    xt = schedules.q_sample(sched, x0, t, noise)
    target = schedules.prediction_target(sched, x0, t, noise, prediction)
    if prediction == "eps":
        np.testing.assert_array_equal(target, noise)
    else:
        abar = np.asarray(sched.alpha_bars, np.float64)[:T - 1, None, None, None]
        v = np.sqrt(abar) * np.asarray(noise, np.float64) - np.sqrt(1 - abar) * np.asarray(x0, np.float64)
        np.testing.assert_allclose(target, v, atol=1e-5)
    x0_hat, eps_hat = schedules.predict_x0_eps(sched, xt, t, target, prediction)
    assert x0_hat.dtype == jnp.float32 and eps_hat.dtype == jnp.float32
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, noise, atol=2e-4)


def test_predict_x0_eps_casts_bf16_model_output_to_f32():
    sched = schedules.make_schedule("linear", 50)
    xt = jnp.ones((2, 2, 2, 1), jnp.float32)
    out = jnp.full((2, 2, 2, 1), 0.5, jnp.bfloat16)
    x0, eps = schedules.predict_x0_eps(sched, xt, jnp.array([3, 40]), out, "v")
    assert x0.dtype == jnp.float32 and eps.dtype == jnp.float32


def test_unknown_prediction_errors():
    sched = schedules.make_schedule("linear", 50)
    x = jnp.zeros((1, 2, 2, 1))
    t = jnp.array([0])
    with pytest.raises(ValueError, match=r"'x0'.*eps.*v"):
        schedules.prediction_target(sched, x, t, x, "x0")
    with pytest.raises(ValueError, match=r"'score'"):
        schedules.predict_x0_eps(sched, x, t, x, "score")


def test_noise_mse():
    rng = np.random.default_rng(3)
    pred = jnp.asarray(rng.normal(size=(4, 3, 3, 2)), jnp.bfloat16)
    target = jnp.asarray(rng.normal(size=(4, 3, 3, 2)), jnp.float32)
    loss = losses.noise_mse(pred, target)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    expected = np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        losses.noise_mse(target, jnp.zeros((4,)))


def test_weighted_noise_mse():
    rng = np.random.default_rng(4)
    pred = jnp.asarray(rng.normal(size=(4, 3, 3, 2)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(4, 3, 3, 2)), jnp.float32)
    np.testing.assert_allclose(losses.weighted_noise_mse(pred, target, jnp.ones(4)), losses.noise_mse(pred, target),
                               rtol=1e-6)
    w = np.array([0.0, 1.0, 2.0, 0.5])
    per_example = np.mean((np.asarray(pred) - np.asarray(target)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(losses.weighted_noise_mse(pred, target, jnp.asarray(w)), np.mean(w * per_example),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"weights shape \(3,\)"):
        losses.weighted_noise_mse(pred, target, jnp.ones(3))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weight_is_min_snr_gamma_on_the_x0_error(prediction):
    """Definition check (Hang et al. 2023): weight * (target error)^2 == min(SNR, gamma) * (x0 error)^2 per example."""
    sched = schedules.make_schedule("cosine", 1000)
    rng = np.random.default_rng(5)
    t = jnp.asarray([0, 10, 200, 500, 800, 999])
    x0 = jnp.asarray(rng.uniform(-1, 1, size=(6, 4, 4, 3)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    x_t = schedules.q_sample(sched, x0, t, noise)
    target = schedules.prediction_target(sched, x0, t, noise, prediction)
    pred = target + 0.1 * jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    x0_hat, _ = schedules.predict_x0_eps(sched, x_t, t, pred, prediction)
    abar = np.asarray(sched.alpha_bars, np.float64)[np.asarray(t)]
    snr = abar / (1 - abar)
    w = np.asarray(schedules.loss_weight(sched, t, prediction, "min_snr", gamma=5.0), np.float64)
    target_err = np.sum((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2, axis=(1, 2, 3))
    x0_err = np.sum((np.asarray(x0_hat, np.float64) - np.asarray(x0, np.float64)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(w * target_err, np.minimum(snr, 5.0) * x0_err, rtol=1e-3)
    assert np.all(w > 0) and np.all(w <= 1.0 + 1e-6)
    # Low-noise timesteps (SNR far above gamma) are down-weighted; the noisiest ones keep (eps) or lose little (v).
    assert w[0] < 1e-2 and w[-1] > (0.99 if prediction == "eps" else 0.0)
    np.testing.assert_array_equal(schedules.loss_weight(sched, t, prediction, "none"), np.ones(6))


def test_loss_weight_rejects_unknown_names():
    sched = schedules.make_schedule("linear", 10)
    with pytest.raises(ValueError, match=r"'snr'.*none.*min_snr"):
        schedules.loss_weight(sched, jnp.array([0]), "v", "snr")
