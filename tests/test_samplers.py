"""Samplers against an independent float64 NumPy reference, plus RNG, guidance and tracing behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.diffusion import samplers, schedules

SHAPE = (4, 4, 2)
D = int(np.prod(SHAPE))
_rng = np.random.default_rng(0)
W = _rng.normal(size=(D, D)) * 0.6 / np.sqrt(D)
PATTERN = _rng.normal(size=SHAPE)


def fake_model_np(x, t):
    """A fixed random linear map of x plus a function of t, in float64."""
    b = x.shape[0]
    t = np.broadcast_to(np.asarray(t, np.float64), (b,))
    return (x.reshape(b, D) @ W).reshape(x.shape) + 0.3 * np.cos(0.07 * t)[:, None, None, None] * PATTERN


def fake_model(x, t):
    """The same model in JAX; checks the sampler's model interface at trace time."""
    assert x.dtype == jnp.float32, x.dtype
    assert t.dtype == jnp.int32 and t.shape == (x.shape[0],), (t.dtype, t.shape)
    b = x.shape[0]
    w, pattern = jnp.asarray(W, jnp.float32), jnp.asarray(PATTERN, jnp.float32)
    lin = (x.reshape(b, D) @ w).reshape(x.shape)
    return lin + 0.3 * jnp.cos(0.07 * t.astype(jnp.float32))[:, None, None, None] * pattern


# The documented noise convention, one key at a time (jitted once: eager draws compile slowly).
_draw = jax.jit(lambda key, i: jax.random.normal(jax.random.fold_in(key, i), SHAPE))


def jax_noises(keys, num):
    """normal(fold_in(keys[b], i), SHAPE) for i < num, as float64 [num, B, *SHAPE]."""
    return np.array([[np.asarray(_draw(k, i), np.float64) for k in keys] for i in range(num)])


def np_x0_eps(model, x, t, a_t, prediction, clip):
    """(x0, eps) from the model output at x_t, float64, x0 clipped and eps made consistent with it if ``clip``."""
    out = model(x, t)
    if prediction == "eps":
        eps = out
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    else:  # x_t = a x0 + s eps and v = a eps - s x0 with a^2 + s^2 = 1
        x0 = np.sqrt(a_t) * x - np.sqrt(1 - a_t) * out
        eps = np.sqrt(1 - a_t) * x + np.sqrt(a_t) * out
    if clip:
        x0 = np.clip(x0, -1, 1)
        eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    return x0, eps


def reference_sample(kind, abar, ts, noises, eta, prediction, clip, model=fake_model_np):
    """Plain float64 NumPy DDIM (Song et al. eq. 12) / DDPM posterior (Ho et al. eq. 6-7) chain.

    'dpmpp_2m' and 'unipc' are passed on to their own references below (they ignore eta and use noises[0] only).
    """
    if kind in ("dpmpp_2m", "unipc"):
        ref = reference_dpmpp_2m if kind == "dpmpp_2m" else reference_unipc
        return ref(abar, ts, noises[0], prediction, clip, model)
    abar = np.asarray(abar, np.float64)
    x = noises[0]
    for i, t in enumerate(ts):
        last = i == len(ts) - 1
        a_t = abar[t]
        a_prev = 1.0 if last else abar[ts[i + 1]]
        x0, eps = np_x0_eps(model, x, t, a_t, prediction, clip)
        z = noises[i + 1]
        if kind == "ddim":
            sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
            x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z
        else:
            beta = 1 - a_t / a_prev
            mean = (np.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (np.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
            var = (1 - a_prev) / (1 - a_t) * beta
            x = mean if last else mean + np.sqrt(var) * z
    return x


def _second_order_into(j, num_points):
    """Whether the step into grid point j (of num_points; the last is t = 0) is second order in the solvers below.

    The first step has no earlier point; the one into t = 0 is first order as in the papers' codes, whose grid ends at
    t_0 = 1/N reached by a first-order step (lower_order_final) and then denoise to zero.
    """
    return 2 <= j <= num_points - 2


def reference_dpmpp_2m(abar, ts, x, prediction, clip, model=fake_model_np):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in float64 from x = x_{t_0}: returns the final x0."""
    abar = np.asarray(abar, np.float64)[ts]
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    lam = np.log(alpha / sigma)
    x0s = []  # x_theta(x_{t_j}, t_j)
    for j in range(len(ts)):
        x0s.append(np_x0_eps(model, x, ts[j], abar[j], prediction, clip)[0])
        if j == len(ts) - 1:
            return x0s[-1]  # denoise to zero: the first-order step to sigma = 0
        h = lam[j + 1] - lam[j]
        if _second_order_into(j + 1, len(ts)):
            r = (lam[j] - lam[j - 1]) / h
            d = (1 + 1 / (2 * r)) * x0s[j] - 1 / (2 * r) * x0s[j - 1]
        else:
            d = x0s[j]
        x = sigma[j + 1] / sigma[j] * x - alpha[j + 1] * (np.exp(-h) - 1) * d


def reference_unipc(abar, ts, x, prediction, clip, model=fake_model_np):
    """UniPC, B(h) = e^h - 1, data prediction (Zhao et al. 2023), in float64 from x = x_{t_0}; returns the final x0.

    Written after the structure of the authors' multistep bh update: R and b built by the phi recursion, rho from a
    linear solve (0.5 for the order-2 predictor and the order-1 corrector), the model called at the predicted point
    and the corrector then applied from the previous corrected x.
    """
    abar = np.asarray(abar, np.float64)[ts]
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    lam = np.log(alpha / sigma)
    x0s = [np_x0_eps(model, x, ts[0], abar[0], prediction, clip)[0]]
    for j in range(1, len(ts)):
        order = 2 if _second_order_into(j, len(ts)) else 1
        s0 = j - 1
        h = lam[j] - lam[s0]
        hh = -h
        rks = [(lam[s0 - k] - lam[s0]) / h for k in range(1, order)]
        d1s = [(x0s[s0 - k] - x0s[s0]) / rk for k, rk in zip(range(1, order), rks)]
        rks = np.array(rks + [1.0])
        h_phi_1 = np.expm1(hh)
        b_h = np.expm1(hh)
        h_phi_k, factorial, big_r, b = h_phi_1 / hh - 1, 1, [], []
        for k in range(1, order + 1):
            big_r.append(rks ** (k - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        x_base = sigma[j] / sigma[s0] * x - alpha[j] * h_phi_1 * x0s[s0]
        x_pred = x_base - alpha[j] * b_h * (0.5 * d1s[0] if order == 2 else 0.0)
        x0_t = np_x0_eps(model, x_pred, ts[j], abar[j], prediction, clip)[0]
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(np.array(big_r), np.array(b))
        corr = sum(rho * d1 for rho, d1 in zip(rhos[:-1], d1s))
        x = x_base - alpha[j] * b_h * (corr + rhos[-1] * (x0_t - x0s[s0]))
        x0s.append(x0_t)
    return x0s[-1]  # the model's x0 at the last (predicted) point: denoise to zero


def _keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


SAMPLER_CASES = [("ddim", 0.0), ("ddim", 0.7), ("ddpm", None), ("dpmpp_2m", None), ("unipc", None)]
ALL_SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "unipc")
# (schedule, T, steps, clip_x0): respaced (uneven gaps 8-9) and not, with and without x0 clipping.
SCHEDULE_CASES = [("linear", 50, 7, True), ("cosine", 50, 50, False)]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sched_name,T,steps,clip", SCHEDULE_CASES)
def test_samplers_match_numpy_reference(prediction, sched_name, T, steps, clip):
    sched = schedules.make_schedule(sched_name, T)
    keys = _keys(T + steps, 3)
    ts = samplers.sampling_timesteps(T, steps)

    @jax.jit  # one compilation for all the samplers keeps the test fast on a small CPU
    def run_all(sched, keys):
        return [samplers.sample(kind, fake_model, sched, keys, SHAPE, steps=steps, eta=eta or 0.0,
                                prediction=prediction, clip_x0=clip) for kind, eta in SAMPLER_CASES]

    noises = jax_noises(keys, steps + 1)
    for (kind, eta), got in zip(SAMPLER_CASES, run_all(sched, keys)):
        assert got.shape == (3,) + SHAPE and got.dtype == jnp.float32
        want = reference_sample(kind, sched.alpha_bars, ts, noises, eta, prediction, clip)
        assert np.all(np.isfinite(want))
        # float32 rounding error scales with the array's magnitude (unclipped chains reach ~1e4), not with an element
        # that cancellation left small; any real error in the update rule would be of the order of the whole scale.
        atol = 1e-4 + 1e-6 * np.abs(want).max()
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=atol,
                                   err_msg=f"sampler {kind} eta={eta}")


def test_ddim_eta_one_equals_ddpm():
    """With eta = 1 DDIM's sigma^2 is the posterior variance, so both samplers coincide."""
    sched = schedules.make_schedule("cosine", 50)
    keys = _keys(11, 2)
    a, b = jax.jit(lambda k: (samplers.ddim_sample(fake_model, sched, k, SHAPE, steps=10, eta=1.0),
                              samplers.ddpm_sample(fake_model, sched, k, SHAPE, steps=10)))(keys)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "unipc"])
def test_determinism_and_batch_split(name):
    sched = schedules.make_schedule("linear", 50)
    keys = _keys(5, 4)
    # ddpm shares ddim's chain; ddim with eta > 0 uses the per-step noise too.
    run = jax.jit(lambda k: samplers.sample(name, fake_model, sched, k, SHAPE, steps=10, eta=0.7))
    whole = run(keys)
    np.testing.assert_array_equal(whole, run(keys))
    halves = jnp.concatenate([run(keys[:2]), run(keys[2:])])
    np.testing.assert_allclose(halves, whole, rtol=1e-6, atol=1e-6)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(run(keys[perm]), whole[perm], rtol=1e-6, atol=1e-6)
    other = run(_keys(6, 4))
    assert np.min(np.max(np.abs(np.asarray(other) - np.asarray(whole)), axis=(1, 2, 3))) > 0.1


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_chain_is_one_scan_and_traces_model_once(name):
    sched = schedules.make_schedule("linear", 50)
    calls = []

    def counting_model(x, t):
        calls.append(1)
        return fake_model(x, t)

    jaxpr = jax.make_jaxpr(
        lambda k: samplers.sample(name, counting_model, sched, k, SHAPE, steps=10, eta=0.5)
    )(_keys(0, 2))
    assert len(calls) == 1
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 10  # one model call a step


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_jitted_sampler_traces_once_for_new_eta_and_schedule(name):
    traces = []

    @jax.jit
    def run(sched, keys, eta):
        traces.append(1)
        return samplers.sample(name, fake_model, sched, keys, SHAPE, steps=5, eta=eta)

    keys = _keys(1, 2)
    a = run(schedules.make_schedule("linear", 50), keys, 0.0)
    b = run(schedules.make_schedule("cosine", 50), keys, 0.7)
    assert len(traces) == 1
    assert not np.allclose(a, b)


def test_bf16_model_output_is_cast_to_f32():
    sched = schedules.make_schedule("linear", 50)
    keys = _keys(2, 2)
    bf16_model = lambda x, t: fake_model(x, t).astype(jnp.bfloat16)
    got = jax.jit(lambda k: samplers.ddim_sample(bf16_model, sched, k, SHAPE, steps=5))(keys)
    assert got.dtype == jnp.float32
    ref = reference_sample("ddim", sched.alpha_bars, samplers.sampling_timesteps(50, 5),
                           jax_noises(keys, 6), 0.0, "eps", True)
    np.testing.assert_allclose(got, ref, atol=0.05)  # bf16 rounding of the model output only


def test_multistep_samplers_are_ddim_while_every_step_is_first_order():
    """DPM-Solver++'s first-order step is DDIM (eta = 0); with <= 3 steps all its steps are first order, and UniPC's
    only correction for 2 steps is at t = 0, which the final denoising step does not read."""
    sched = schedules.make_schedule("cosine", 50)
    keys = _keys(12, 2)
    for steps, names in ((1, ("dpmpp_2m", "unipc")), (2, ("dpmpp_2m", "unipc")), (3, ("dpmpp_2m",))):
        run = jax.jit(lambda k: [samplers.sample(n, fake_model, sched, k, SHAPE, steps=steps, prediction="v")
                                 for n in ("ddim",) + names])
        ddim, *others = run(keys)
        for name, got in zip(names, others):
            np.testing.assert_allclose(got, ddim, rtol=1e-5, atol=1e-5, err_msg=f"{name} steps={steps}")
    # From 4 steps on the second-order term and the corrector make a difference.
    run = jax.jit(lambda k: [samplers.sample(n, fake_model, sched, k, SHAPE, steps=4)
                             for n in ("ddim", "dpmpp_2m", "unipc")])
    ddim, *others = run(keys)
    for got in others:
        assert np.max(np.abs(np.asarray(ddim - got))) > 1e-3


# ---------------------------------------------------------------- an exactly solvable case

def _gaussian_data(seed=7):
    """Data x0 ~ N(mu, diag(s^2)) with per-element scales s from 0.05 to 1 (a spread of scales, as images have)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, size=SHAPE), np.exp(rng.uniform(np.log(0.05), 0.0, size=SHAPE))


def exact_gaussian_model(sched, prediction, mu, s):
    """The exact eps or v model for Gaussian data: E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sig^2) (x_t - a mu)."""
    abar = jnp.asarray(sched.alpha_bars, jnp.float32)
    mu, s2 = jnp.asarray(mu, jnp.float32), jnp.asarray(s, jnp.float32) ** 2

    def model(x, t):
        ab = abar[t][:, None, None, None]
        a, sig = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        x0 = mu + a * s2 / (ab * s2 + 1.0 - ab) * (x - a * mu)
        eps = (x - a * x0) / sig
        return eps if prediction == "eps" else a * eps - sig * x0

    return model


def exact_gaussian_result(sched, ts, x_start, mu, s):
    """What a sampler would return if it solved the probability-flow ODE exactly from t_0 to the last grid point.

    In EDM's variables (x_e = x / alpha, sigma_e = sigma / alpha) the ODE dx_e/dsigma_e = (x_e - D) / sigma_e of
    Karras et al. 2022, with D the Gaussian's exact denoiser, keeps u = (x_e - mu) / sqrt(s^2 + sigma_e^2) fixed;
    every sampler's last step then returns that denoiser's x0 at t = 0, mu + s^2 u / sqrt(s^2 + sigma_e(0)^2).
    """
    abar = np.asarray(sched.alpha_bars, np.float64)
    sig_e = lambda t: np.sqrt((1 - abar[t]) / abar[t])  # noqa: E731
    u = (x_start / np.sqrt(abar[ts[0]]) - mu) / np.sqrt(s**2 + sig_e(ts[0]) ** 2)
    return mu + s**2 * u / np.sqrt(s**2 + sig_e(ts[-1]) ** 2)


def log_snr_uniform_schedule(num_steps, lam_max=5.0, lam_min=-5.0):
    """A schedule whose lambda = log(alpha/sigma) falls linearly in t, so that every sampler step has the same h."""
    lam = np.linspace(lam_max, lam_min, num_steps)
    abar = 1.0 / (1.0 + np.exp(-2.0 * lam))
    alphas = abar / np.append(1.0, abar[:-1])
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return schedules.Schedule(betas=f32(1.0 - alphas), alphas=f32(alphas), alpha_bars=f32(abar))


def gaussian_errors(sched, prediction, steps_list, names=("ddim", "dpmpp_2m", "unipc")):
    """RMS distance of each sampler's result to the exact one on Gaussian data, {(name, steps): error}."""
    mu, s = _gaussian_data()
    model = exact_gaussian_model(sched, prediction, mu, s)
    keys = _keys(21, 16)
    x_start = jax_noises(keys, 1)[0]
    err = {}
    for steps in steps_list:
        run = jax.jit(lambda k: [samplers.sample(n, model, sched, k, SHAPE, steps=steps, prediction=prediction,
                                                 clip_x0=False) for n in names])
        want = exact_gaussian_result(sched, samplers.sampling_timesteps(sched.num_steps, steps), x_start, mu, s)
        for name, got in zip(names, run(keys)):
            err[name, steps] = float(np.sqrt(np.mean((np.asarray(got, np.float64) - want) ** 2)))
    return err


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_orders_of_convergence_on_gaussian_data(prediction):
    """With equal steps in lambda, each doubling of the steps divides the error by 2^order: DDIM is first order,
    DPM-Solver++(2M) second, and UniPC-2 third (the corrector raises the order by one; Zhao et al. 2023). A wrong
    coefficient in a second-order term would leave a solver first order. DDIM needs more than 40 steps to come as
    close as DPM-Solver++(2M) or UniPC with 10 (measured: DDIM 8.6e-2 / 4.4e-2 / 2.2e-2 at 10 / 20 / 40 steps,
    DPM-Solver++ 9.2e-3 at 10, UniPC 1.6e-2)."""
    err = gaussian_errors(log_snr_uniform_schedule(1000), prediction, (10, 20, 40, 80))
    ratio = lambda name, steps: err[name, steps] / err[name, 2 * steps]  # noqa: E731
    for steps in (20, 40):
        assert 1.8 < ratio("ddim", steps) < 2.2, err
        assert 3.3 < ratio("dpmpp_2m", steps) < 4.7, err
        assert ratio("unipc", steps) > 6.0, err
    for name in ("dpmpp_2m", "unipc"):
        assert err[name, 10] < 0.25 * err["ddim", 10] and err[name, 20] < 0.25 * err["ddim", 20], err
        assert err[name, 10] < err["ddim", 40], err


def test_second_order_solvers_beat_ddim_on_the_default_schedule():
    """The cosine schedule's linear-in-t grid has very uneven steps in lambda (the first and last few are several
    times the others), which keeps every solver from its asymptotic order here; both still beat DDIM (measured on
    this data, DPM-Solver++ / DDIM: 0.64, 0.49, 0.37 at 10, 20, 40 steps)."""
    err = gaussian_errors(schedules.make_schedule("cosine", 1000), "v", (10, 20, 40))
    for name in ("dpmpp_2m", "unipc"):
        assert err[name, 10] < 0.8 * err["ddim", 10], err
        assert err[name, 20] < 0.6 * err["ddim", 20] and err[name, 40] < 0.5 * err["ddim", 40], err


def test_single_point_data_comes_back_exactly():
    """With data = one point x0*, E[x0 | x_t] = x0* at every t, and every sampler's last step returns the model's x0:
    a check of the eps -> x0 conversion at all noise levels and of the last step's h = inf, not of accuracy."""
    sched = schedules.make_schedule("cosine", 1000)
    x_star = np.asarray(_gaussian_data()[0])
    model = exact_gaussian_model(sched, "eps", x_star, np.zeros(SHAPE))
    run = jax.jit(lambda k: [samplers.sample(n, model, sched, k, SHAPE, steps=7, clip_x0=False) for n in ALL_SAMPLERS])
    for name, got in zip(ALL_SAMPLERS, run(_keys(3, 4))):
        np.testing.assert_allclose(got, np.broadcast_to(x_star, got.shape), atol=1e-4, err_msg=name)


def test_sampling_timesteps():
    np.testing.assert_array_equal(samplers.sampling_timesteps(10, 4), [9, 6, 3, 0])
    np.testing.assert_array_equal(samplers.sampling_timesteps(50, 50), np.arange(49, -1, -1))
    np.testing.assert_array_equal(samplers.sampling_timesteps(50, 1), [49])
    for T, S in [(50, 10), (1000, 7), (100, 99), (7, 3)]:
        ts = samplers.sampling_timesteps(T, S)
        assert ts.dtype == np.int32 and len(ts) == S
        assert ts[0] == T - 1 and ts[-1] == (0 if S > 1 else T - 1)
        assert np.all(np.diff(ts) < 0)
        gaps = -np.diff(ts)
        assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding


def test_timestep_errors():
    for bad in (0, 51, -1):
        with pytest.raises(ValueError, match=rf"num_steps={bad}.*T=50"):
            samplers.sampling_timesteps(50, bad)
    with pytest.raises(ValueError, match="2.5"):
        samplers.sampling_timesteps(50, 2.5)
    sched = schedules.make_schedule("linear", 50)
    with pytest.raises(ValueError, match=r"num_steps=51.*T=50"):
        samplers.ddim_sample(fake_model, sched, _keys(0, 2), SHAPE, steps=51)


def test_sample_dispatch_and_errors(monkeypatch):
    sched = schedules.make_schedule("linear", 50)
    keys = _keys(3, 2)
    assert samplers.SAMPLERS == {"ddim": samplers.ddim_sample, "ddpm": samplers.ddpm_sample,
                                 "dpmpp_2m": samplers.dpmpp_2m_sample, "unipc": samplers.unipc_sample}
    seen = {}
    for name in ALL_SAMPLERS:
        monkeypatch.setitem(samplers.SAMPLERS, name, lambda *a, _n=name, **kw: seen.setdefault(_n, (a, kw)))
    samplers.sample("ddim", fake_model, sched, keys, SHAPE, steps=5, eta=0.5, prediction="v", clip_x0=False)
    for name in ("ddpm", "dpmpp_2m", "unipc"):
        samplers.sample(name, fake_model, sched, keys, SHAPE, steps=6, eta=0.5)
        assert seen[name][1] == dict(steps=6, prediction="eps", clip_x0=True)  # eta dropped
    assert seen["ddim"][1] == dict(steps=5, eta=0.5, prediction="v", clip_x0=False)
    assert seen["ddpm"][0][0] is fake_model and seen["ddpm"][0][3] == SHAPE
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"^Unknown sampler 'euler'; valid choices: "
                                         r"\('ddim', 'ddpm', 'dpmpp_2m', 'unipc'\)\.$"):
        samplers.sample("euler", fake_model, sched, keys, SHAPE, steps=5)
    for name in ("dpmpp_2m", "unipc"):
        with pytest.raises(ValueError, match=r"num_steps=51.*T=50"):
            samplers.sample(name, fake_model, sched, keys, SHAPE, steps=51)
    with pytest.raises(ValueError, match=r"'x0'"):
        samplers.ddim_sample(fake_model, sched, keys, SHAPE, steps=5, prediction="x0")
    with pytest.raises(ValueError, match=r"\(2, 1\)"):
        samplers.ddpm_sample(fake_model, sched, keys.reshape(2, 1), SHAPE, steps=5)


# ---------------------------------------------------------------- classifier-free guidance

E = 3


def fake_cond_apply(x, t, cond):
    """A conditional model taking a pytree condition (int label + embedding)."""
    shift = cond["label"].astype(jnp.float32) * 0.5 + cond["emb"].sum(-1)
    return fake_model(x, t.astype(jnp.int32)) + shift[:, None, None, None]


def _cfg_inputs(batch=3):
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(batch,) + SHAPE), jnp.float32)
    t = jnp.array([5, 20, 40][:batch], jnp.int32)
    cond = {"label": jnp.array([1, 4, 7][:batch]), "emb": jnp.asarray(rng.normal(size=(batch, E)), jnp.float32)}
    null = {"label": jnp.full((batch,), 10), "emb": jnp.zeros((batch, E))}
    return x, t, cond, null


def test_classifier_free_guidance_limits_and_single_batched_call():
    x, t, cond, null = _cfg_inputs()
    batches = []

    def apply_fn(xx, tt, cc):
        batches.append(xx.shape[0])
        return fake_cond_apply(xx, tt, cc)

    bf16_apply = lambda xx, tt, cc: fake_cond_apply(xx, tt, cc).astype(jnp.bfloat16)

    @jax.jit
    def evaluate(x, t):
        c, u = fake_cond_apply(x, t, cond), fake_cond_apply(x, t, null)
        guided = [samplers.classifier_free_guidance(apply_fn, cond, null, g)(x, t) for g in (1.0, 0.0, 3.0)]
        from_bf16 = samplers.classifier_free_guidance(bf16_apply, cond, null, 2.0)(x, t)
        return c, u, guided, from_bf16

    c, u, (g1, g0, g3), from_bf16 = evaluate(x, t)
    assert batches == [6, 6, 6]  # one batched call [cond; uncond] per guided evaluation
    assert g1.dtype == jnp.float32 and from_bf16.dtype == jnp.float32
    np.testing.assert_allclose(g1, c, atol=1e-5)
    np.testing.assert_allclose(g0, u, atol=1e-5)
    np.testing.assert_allclose(g3, u + 3.0 * (c - u), atol=1e-4)
    assert np.max(np.abs(np.asarray(c - u))) > 0.1  # the condition matters


def test_guidance_in_a_limited_interval_guides_only_inside_it():
    x, t, cond, null = _cfg_inputs()  # timesteps 5, 20, 40
    c, u = fake_cond_apply(x, t, cond), fake_cond_apply(x, t, null)
    everywhere = samplers.classifier_free_guidance(fake_cond_apply, cond, null, 3.0)(x, t)
    assert np.array_equal(samplers.classifier_free_guidance(fake_cond_apply, cond, null, 3.0, (0, 50))(x, t),
                          everywhere)  # an interval covering every step changes no bit
    limited = samplers.classifier_free_guidance(fake_cond_apply, cond, null, 3.0, (10, 30))(x, t)
    np.testing.assert_allclose(limited[1], u[1] + 3.0 * (c[1] - u[1]), atol=1e-4)  # t = 20: guided
    np.testing.assert_allclose(np.asarray(limited)[[0, 2]], np.asarray(c)[[0, 2]], atol=1e-5)  # t = 5 and 40: the conditional prediction


def test_classifier_free_guidance_structure_mismatch_errors():
    _, _, cond, null = _cfg_inputs()
    with pytest.raises(ValueError, match="same pytree structure"):
        samplers.classifier_free_guidance(fake_cond_apply, cond, {"label": null["label"]}, 1.0)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "unipc"])
def test_jitted_guided_sampler_does_not_retrace_for_new_guidance(name):
    _, _, cond, null = _cfg_inputs()
    sched = schedules.make_schedule("cosine", 50)
    traces = []

    @jax.jit
    def run(keys, guidance):
        traces.append(1)
        model_fn = samplers.classifier_free_guidance(fake_cond_apply, cond, null, guidance)
        return samplers.sample(name, model_fn, sched, keys, SHAPE, steps=5, eta=0.0)

    keys = _keys(4, 3)
    a = run(keys, 1.0)
    b = run(keys, 3.0)
    assert len(traces) == 1
    assert not np.allclose(a, b, atol=1e-3)
    # guidance = 1 is the plain conditional model.
    shift = np.asarray(cond["label"], np.float64) * 0.5 + np.asarray(cond["emb"], np.float64).sum(-1)
    cond_np = lambda x, t: fake_model_np(x, t) + shift[:, None, None, None]
    want = reference_sample(name, sched.alpha_bars, samplers.sampling_timesteps(50, 5),
                            jax_noises(keys, 6), 0.0, "eps", True, model=cond_np)
    np.testing.assert_allclose(np.asarray(a, np.float64), want, rtol=1e-4, atol=1e-4)
