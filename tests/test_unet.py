"""U-Net: shapes, and that the prediction really depends on the timestep and on the label."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models.layers import timestep_embedding
from diffusion_jax.models.unet import UNet

MODEL = UNet(channels=(8, 16), attention_resolutions=(8,), num_classes=10, patch_size=2, norm_groups=4)


def _params(model, x):
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros(len(x), jnp.int32), jnp.zeros(len(x), jnp.int32))
    # Zero-initialised output layers make a fresh U-Net predict exactly 0; perturb every weight so the test sees
    # how inputs flow through the whole network.
    rng = np.random.default_rng(1)  # NumPy: one jax.random call per leaf shape would compile dozens of programs
    return jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32), params)


def test_timestep_embedding_matches_formula():
    t = jnp.array([0, 7, 999])
    emb = np.asarray(timestep_embedding(t, 8))
    freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 4)
    expected = np.concatenate([np.cos(np.outer(t, freqs)), np.sin(np.outer(t, freqs))], axis=1)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("patch_size,channels", [(1, (8, 16)), (2, (8, 16, 16)), (4, (16, 32))])
def test_output_shape_and_dtype(patch_size, channels):
    model = UNet(channels=channels, attention_resolutions=(8,), patch_size=patch_size, norm_groups=4, out_channels=3)
    x = jnp.zeros((2, 32, 32, 3))
    labels = jnp.array([3, 10])
    # Shapes only: jax.eval_shape traces without compiling, which keeps this test fast on a 2-core CPU.
    params = jax.eval_shape(model.init, jax.random.key(0), x, labels, labels)
    out = jax.eval_shape(model.apply, params, x, jnp.array([1, 500]), labels)
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32


@pytest.fixture(scope="module")
def perturbed():
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 1))
    return x, _params(MODEL, x)


def test_prediction_depends_on_time_and_label(perturbed):
    x, params = perturbed
    apply = jax.jit(MODEL.apply)  # one compile, not one an op
    base = apply(params, x, jnp.array([10, 10]), jnp.array([3, 3]))
    other_t = apply(params, x, jnp.array([900, 900]), jnp.array([3, 3]))
    other_label = apply(params, x, jnp.array([10, 10]), jnp.array([7, 7]))
    null_label = apply(params, x, jnp.array([10, 10]), jnp.array([10, 10]))
    for changed in (other_t, other_label, null_label):
        assert float(jnp.mean(jnp.abs(changed - base))) > 1e-3
    # Examples are independent: changing example 1's label leaves example 0 untouched.
    mixed = apply(params, x, jnp.array([10, 10]), jnp.array([3, 7]))
    np.testing.assert_allclose(mixed[0], base[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], other_label[1], atol=1e-5)


def test_bfloat16_compute_gives_float32_output_close_to_float32(perturbed):
    x, params = perturbed
    t, y = jnp.array([5, 600]), jnp.array([1, 2])
    full = jax.jit(MODEL.apply)(params, x, t, y)
    half = jax.jit(MODEL.clone(dtype=jnp.bfloat16).apply)(params, x, t, y)
    assert half.dtype == jnp.float32
    assert float(jnp.mean(jnp.abs(half - full))) < 0.05 * float(jnp.mean(jnp.abs(full)))


def test_errors():
    x = jnp.zeros((1, 32, 32, 1))
    with pytest.raises(ValueError, match="labels"):
        MODEL.init(jax.random.key(0), x, jnp.zeros(1, jnp.int32))
    with pytest.raises(ValueError, match="patch_size"):
        UNet(channels=(8,), patch_size=3, norm_groups=4).init(jax.random.key(0), x, jnp.zeros(1, jnp.int32),
                                                             jnp.zeros(1, jnp.int32))
