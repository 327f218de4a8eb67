"""The step profiler (ops grouped by kind), the accelerator peaks behind MFU, and the deferred-softmax attention."""
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import profiling
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.models.layers import AttentionBlock, MultiHeadAttention
from diffusion_jax.trainers import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind, tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                          ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-40GB", 312), ("TPU v4", 275),
                                          ("TPU v5 lite", 197), ("TPU v5", 459), ("TPU v6 lite", 918)])
def test_accelerator_peaks_by_device_kind(kind, tflops):
    assert profiling.accelerator_peak(kind) == tflops * 1e12


def test_unknown_accelerator_asks_for_its_peak_and_override_wins():
    assert profiling.accelerator_peak("cpu") is None
    assert profiling.accelerator_peak("Some New Chip") is None
    assert profiling.accelerator_peak("NVIDIA H100 80GB HBM3", override_tflops=100) == 100e12
    gpu = types.SimpleNamespace(platform="gpu", device_kind="Some New Chip")
    assert "--peak_tflops" in profiling.utilisation(1e9, 10.0, [gpu])
    h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    # 1 TFLOP per image x 100 images/s on 2 chips of 989 TFLOP/s: 100 / 1978 = 5.1 %.
    line = profiling.utilisation(1e12, 100.0, [h100, h100])
    assert "MFU 5.1%" in line and "2 x 989 TFLOP/s" in line
    cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
    assert "MFU" not in profiling.utilisation(1e9, 10.0, [cpu]) and "2.5" in profiling.utilisation(
        1e9, 2.5, [cpu])


def test_op_kinds_from_jax_names_and_shapes():
    kernels = {(3, 3, 16, 32)}
    kind = lambda opcode, name, shape=(8, 4, 4, 32): profiling.op_kind(opcode, name, shape, kernels)  # noqa: E731
    assert kind("convolution", "jit(s)/jvp(UNet)/ResBlock_0/Conv_0/conv_general_dilated") == "conv forward"
    assert kind("convolution", "", (32, 3, 3, 16)) == "conv backward: weight gradient"
    assert kind("convolution", "jit(s)/transpose(jvp(UNet))/ResBlock_0/Conv_0/conv_general_dilated") == \
        "conv backward: input gradient"
    assert kind("dot", "jit(s)/jvp(UNet)/AttentionBlock_0/MultiHeadDotProductAttention_0/query/dot_general") == \
        "attention forward"
    assert kind("fusion", "jit(s)/transpose(jvp(UNet))/ResBlock_1/GroupNorm_1/reduce_sum") == \
        "normalisation + activation backward"
    assert kind("fusion", "jit(s)/jvp(UNet)/ResBlock_1/jit(silu)/logistic") == "normalisation + activation forward"
    assert kind("fusion", "jit(s)/optimizer/add") == "optimizer + EMA"
    assert kind("fusion", "jit(s)/noise/mul") == "noise generation"
    assert kind("all-reduce", "jit(s)/psum").startswith("cross-device mean")
    assert kind("fusion", "jit(s)/add") == "other (loss, reductions, copies)"


def test_profile_of_a_train_step_accounts_for_every_op():
    """The tiny digits step under the profiler: every op the trace names is one of the compiled program's, and the
    forward, both gradient convolutions, attention, normalisation, optimizer and noise all show up."""
    config = load_config(os.path.join(ROOT, "experiments/digits.py:tiny"))
    digits.validate_config(config)
    task = digits.make_task(config)
    dp, b = task.dp, config.train.batch_size
    state = dp.replicate(jax.device_get(jax.jit(task.init_state)()))
    batch = dp.shard_batch({"image": np.zeros((b, 32, 32, 1), np.float32), "cond": np.arange(b, dtype=np.int32) % 10})
    compiled = task.train_step().lower(state, batch).compile()
    result = profiling.profile(compiled, (state, batch), num_calls=2, num_devices=dp.num_devices,
                               carry=lambda args, out: (out[0], args[1]))
    instructions, _ = profiling.parse_hlo(compiled.as_text())
    assert result["ops"] and set(result["ops"]) <= set(instructions)
    assert sum(result["kinds"].values()) == pytest.approx(sum(result["ops"].values()))
    for kind in ("conv forward", "conv backward: weight gradient", "conv backward: input gradient",
                 "attention forward", "attention backward", "normalisation + activation forward",
                 "optimizer + EMA", "noise generation"):
        assert result["kinds"].get(kind, 0) > 0, kind
    assert result["wall_s"] > 0
    table = profiling.format_profile(result)
    assert "| conv forward |" in table and "wall time per step" in table


def test_deferred_attention_is_flax_attention_with_the_same_parameters():
    """Same parameter tree and init as Flax's MultiHeadDotProductAttention; same outputs and gradients, padding
    masked, within float32 rounding."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 10, 32)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((3, 7, 32)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(3, 7)) > 0.5).at[:, 0].set(True)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=4)
    ours = MultiHeadAttention(4)
    params = flax_mha.init(jax.random.key(0), x, context, mask=mask[:, None, None, :])
    assert jax.tree.structure(ours.init(jax.random.key(0), x, context, mask)) == jax.tree.structure(params)
    for name in ("query", "key", "value"):  # identical init (the out projection's init is the caller's choice)
        np.testing.assert_array_equal(ours.init(jax.random.key(0), x, context, mask)["params"][name]["kernel"],
                                      params["params"][name]["kernel"])
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    want = lambda p: flax_mha.apply(p, x, context, mask=mask[:, None, None, :])  # noqa: E731
    got = lambda p: ours.apply(p, x, context, mask)  # noqa: E731
    np.testing.assert_allclose(got(params), want(params), atol=2e-6)
    g_want = jax.jit(jax.grad(lambda p: jnp.sum(want(p) ** 2)))(params)
    g_got = jax.jit(jax.grad(lambda p: jnp.sum(got(p) ** 2)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()) + 1e-5),
                 g_got, g_want)


def test_attention_implementations_share_checkpoints():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 16)), jnp.float32)
    a, b = AttentionBlock(4, 4, implementation="deferred"), AttentionBlock(4, 4, implementation="flax")
    params = a.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # the zero-initialised out projection would hide everything
    assert jax.tree.structure(b.init(jax.random.key(0), x)) == jax.tree.structure(params)
    np.testing.assert_allclose(a.apply(params, x), b.apply(params, x), atol=2e-6)
    with pytest.raises(ValueError, match="unknown attention implementation 'fast'"):
        AttentionBlock(4, 4, implementation="fast").init(jax.random.key(0), x)
    config = load_config(os.path.join(ROOT, "experiments/digits.py:tiny"))
    config.model.attention = "fast"
    with pytest.raises(ConfigError, match="model.attention"):
        digits.validate_config(config)
