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


def reference_sample(kind, abar, ts, noises, eta, prediction, clip, model=fake_model_np):
    """Plain float64 NumPy DDIM (Song et al. eq. 12) / DDPM posterior (Ho et al. eq. 6-7) chain."""
    abar = np.asarray(abar, np.float64)
    x = noises[0]
    for i, t in enumerate(ts):
        last = i == len(ts) - 1
        a_t = abar[t]
        a_prev = 1.0 if last else abar[ts[i + 1]]
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


def _keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


SAMPLER_CASES = [("ddim", 0.0), ("ddim", 0.7), ("ddpm", None)]
# (schedule, T, steps, clip_x0): respaced (uneven gaps 8-9) and not, with and without x0 clipping.
SCHEDULE_CASES = [("linear", 50, 7, True), ("cosine", 50, 50, False)]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sched_name,T,steps,clip", SCHEDULE_CASES)
def test_samplers_match_numpy_reference(prediction, sched_name, T, steps, clip):
    sched = schedules.make_schedule(sched_name, T)
    keys = _keys(T + steps, 3)
    ts = samplers.sampling_timesteps(T, steps)

    @jax.jit  # one compilation for all three samplers keeps the test fast on a small CPU
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


def test_determinism_and_batch_split():
    sched = schedules.make_schedule("linear", 50)
    keys = _keys(5, 4)
    # Both samplers share one chain; ddim with eta > 0 uses the per-step noise too.
    run = jax.jit(lambda k: samplers.ddim_sample(fake_model, sched, k, SHAPE, steps=10, eta=0.7))
    whole = run(keys)
    np.testing.assert_array_equal(whole, run(keys))
    halves = jnp.concatenate([run(keys[:2]), run(keys[2:])])
    np.testing.assert_allclose(halves, whole, rtol=1e-6, atol=1e-6)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(run(keys[perm]), whole[perm], rtol=1e-6, atol=1e-6)
    other = run(_keys(6, 4))
    assert np.min(np.max(np.abs(np.asarray(other) - np.asarray(whole)), axis=(1, 2, 3))) > 0.1


def test_chain_is_one_scan_and_traces_model_once():
    sched = schedules.make_schedule("linear", 50)
    calls = []

    def counting_model(x, t):
        calls.append(1)
        return fake_model(x, t)

    jaxpr = jax.make_jaxpr(
        lambda k: samplers.ddim_sample(counting_model, sched, k, SHAPE, steps=10, eta=0.5)
    )(_keys(0, 2))
    assert len(calls) == 1
    assert [e.primitive.name for e in jaxpr.eqns].count("scan") == 1


def test_jitted_sampler_traces_once_for_new_eta_and_schedule():
    traces = []

    @jax.jit
    def run(sched, keys, eta):
        traces.append(1)
        return samplers.ddim_sample(fake_model, sched, keys, SHAPE, steps=5, eta=eta)

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
    assert samplers.SAMPLERS == {"ddim": samplers.ddim_sample, "ddpm": samplers.ddpm_sample}
    seen = {}
    for name in ("ddim", "ddpm"):
        monkeypatch.setitem(samplers.SAMPLERS, name, lambda *a, _n=name, **kw: seen.setdefault(_n, (a, kw)))
    samplers.sample("ddim", fake_model, sched, keys, SHAPE, steps=5, eta=0.5, prediction="v", clip_x0=False)
    samplers.sample("ddpm", fake_model, sched, keys, SHAPE, steps=6, eta=0.5)
    assert seen["ddim"][1] == dict(steps=5, eta=0.5, prediction="v", clip_x0=False)
    assert seen["ddpm"][1] == dict(steps=6, prediction="eps", clip_x0=True)  # eta dropped
    assert seen["ddpm"][0][0] is fake_model and seen["ddpm"][0][3] == SHAPE
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"'euler'.*ddim.*ddpm"):
        samplers.sample("euler", fake_model, sched, keys, SHAPE, steps=5)
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


def test_classifier_free_guidance_structure_mismatch_errors():
    _, _, cond, null = _cfg_inputs()
    with pytest.raises(ValueError, match="same pytree structure"):
        samplers.classifier_free_guidance(fake_cond_apply, cond, {"label": null["label"]}, 1.0)


def test_jitted_guided_sampler_does_not_retrace_for_new_guidance():
    _, _, cond, null = _cfg_inputs()
    sched = schedules.make_schedule("cosine", 50)
    traces = []

    @jax.jit
    def run(keys, guidance):
        traces.append(1)
        model_fn = samplers.classifier_free_guidance(fake_cond_apply, cond, null, guidance)
        return samplers.sample("ddim", model_fn, sched, keys, SHAPE, steps=5, eta=0.0)

    keys = _keys(4, 3)
    a = run(keys, 1.0)
    b = run(keys, 3.0)
    assert len(traces) == 1
    assert not np.allclose(a, b, atol=1e-3)
    # guidance = 1 is the plain conditional model.
    shift = np.asarray(cond["label"], np.float64) * 0.5 + np.asarray(cond["emb"], np.float64).sum(-1)
    cond_np = lambda x, t: fake_model_np(x, t) + shift[:, None, None, None]
    want = reference_sample("ddim", sched.alpha_bars, samplers.sampling_timesteps(50, 5),
                            jax_noises(keys, 6), 0.0, "eps", True, model=cond_np)
    np.testing.assert_allclose(np.asarray(a, np.float64), want, rtol=1e-4, atol=1e-4)
