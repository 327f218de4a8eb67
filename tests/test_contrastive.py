"""Contrastive losses: equal to NumPy float64 references, and on 8 devices (both lifts) equal to 1 device, loss and
gradients, which checks that the all-gather's transpose routes the cross-device gradients back correctly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.parallel import AXIS, DataParallel
from diffusion_jax.trainers.contrastive import infonce_loss, sigmoid_loss

GLOBAL_BATCH, RAW_DIM, DIM = 16, 6, 8


def _normalised(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_infonce(img, txt, scale):
    """CLIP loss, written directly from the definition in float64."""
    logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
    n = logits.shape[0]
    ce = lambda lg: np.mean([np.log(np.sum(np.exp(lg[i]))) - lg[i, i] for i in range(n)])  # noqa: E731
    return 0.5 * (ce(logits) + ce(logits.T))


def _np_sigmoid(img, txt, scale, bias):
    """SigLIP loss, Eq. 1 of Zhai et al. 2023, in float64: a double loop over all pairs, divided by the batch."""
    img, txt = img.astype(np.float64), txt.astype(np.float64)
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-z * (scale * img[i] @ txt[j] + bias)))  # -log sigmoid(z * logit)
    return total / n


def test_losses_match_numpy_float64():
    rng = np.random.default_rng(0)
    img, txt = _normalised(rng, 12, DIM), _normalised(rng, 12, DIM)
    got = infonce_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), 7.0)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), _np_infonce(img, txt, 7.0), rtol=1e-5)
    got = sigmoid_loss(jnp.asarray(img, jnp.bfloat16), jnp.asarray(txt, jnp.bfloat16), 10.0, -10.0)
    assert got.dtype == jnp.float32
    # bf16 inputs are upcast; compare against the same rounded inputs.
    ref = _np_sigmoid(np.asarray(jnp.asarray(img, jnp.bfloat16), np.float64),
                      np.asarray(jnp.asarray(txt, jnp.bfloat16), np.float64), 10.0, -10.0)
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    # Perfectly aligned pairs with a large scale: InfoNCE tends to 0; swapping the texts makes it large.
    assert float(infonce_loss(jnp.eye(4), jnp.eye(4), 50.0)) < 1e-6
    assert float(infonce_loss(jnp.eye(4), jnp.eye(4)[::-1], 50.0)) > 10.0


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="text_emb"):
        infonce_loss(jnp.ones((4, 3)), jnp.ones((4,)), 1.0)
    with pytest.raises(ValueError, match="image_emb"):
        sigmoid_loss(jnp.ones((4, 3)), jnp.ones((5, 3)), 1.0, 0.0)
    with pytest.raises(ValueError, match="logit_bias"):
        sigmoid_loss(jnp.ones((4, 3)), jnp.ones((4, 3)), 1.0, jnp.zeros(2))


# ---- 8 devices against 1 device, and against an independent single-device jnp loss ----

def _project(params, batch):
    norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    return norm(batch["img"] @ params["w_img"]), norm(batch["txt"] @ params["w_txt"])


def _loss(kind, params, batch, axis_name):
    img, txt = _project(params, batch)
    scale = jnp.exp(params["log_scale"])
    if kind == "infonce":
        return infonce_loss(img, txt, scale, axis_name=axis_name)
    return sigmoid_loss(img, txt, scale, params["bias"], axis_name=axis_name)


def _reference_loss(kind, params, batch):
    """The same objective written independently in plain jnp on the whole batch (no axis, no module code)."""
    img, txt = _project(params, batch)
    logits = jnp.exp(params["log_scale"]) * img @ txt.T
    n = logits.shape[0]
    if kind == "infonce":
        diag = jnp.diagonal(logits)
        return 0.5 * (jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag) + jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag))
    z = 2.0 * jnp.eye(n) - 1.0
    return jnp.sum(jnp.logaddexp(0.0, -z * (logits + params["bias"]))) / n


def _per_device_step(kind):
    def step(params, batch):
        loss, grads = jax.value_and_grad(lambda p: _loss(kind, p, batch, AXIS))(params)
        return jax.lax.pmean(loss, AXIS), jax.lax.pmean(grads, AXIS)
    return step


def _params_and_batch():
    rng = np.random.default_rng(1)
    params = {"w_img": rng.normal(size=(RAW_DIM, DIM)).astype(np.float32) / np.sqrt(RAW_DIM),
              "w_txt": rng.normal(size=(RAW_DIM, DIM)).astype(np.float32) / np.sqrt(RAW_DIM),
              "log_scale": np.float32(np.log(5.0)), "bias": np.float32(-3.0)}
    # Texts correlated with images, so the loss and its gradient are far from a trivial value.
    img = rng.normal(size=(GLOBAL_BATCH, RAW_DIM)).astype(np.float32)
    txt = (img + 0.5 * rng.normal(size=img.shape)).astype(np.float32)
    return params, {"img": img, "txt": txt}


def _run(kind, dp):
    params, batch = _params_and_batch()
    if kind == "infonce":
        params.pop("bias")
    step = dp.lift(_per_device_step(kind), ("replicated", "sharded"), ("replicated", "replicated"))
    loss, grads = step(dp.replicate(params), dp.shard_batch(batch))
    return float(dp.unreplicate(loss)), dp.unreplicate(grads)


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_eight_devices_equal_one_device_and_reference(kind):
    assert jax.local_device_count() == 8, "tests/conftest.py should give 8 fake CPU devices"
    params, batch = _params_and_batch()
    if kind == "infonce":
        params.pop("bias")
    ref_loss, ref_grads = jax.value_and_grad(lambda p: _reference_loss(kind, p, batch))(params)

    one_loss, one_grads = _run(kind, DataParallel("shard_map", jax.local_devices()[:1]))
    np.testing.assert_allclose(one_loss, float(ref_loss), rtol=1e-5)
    for key in params:
        np.testing.assert_allclose(one_grads[key], ref_grads[key], rtol=1e-4, atol=1e-6, err_msg=key)
        assert np.abs(ref_grads[key]).max() > 1e-3, f"gradient of {key} is trivially small"

    for mode in ("shard_map", "pmap"):
        loss, grads = _run(kind, DataParallel(mode))
        np.testing.assert_allclose(loss, one_loss, rtol=1e-5, err_msg=mode)
        for key in params:
            np.testing.assert_allclose(grads[key], one_grads[key], rtol=1e-5, atol=1e-6, err_msg=f"{mode} {key}")


def test_local_only_loss_would_differ():
    """Sanity of the test above: without the all-gather (each device contrasting only its own 2 examples) the
    8-device loss is a different number, so the equality above really depends on the global batch."""
    params, batch = _params_and_batch()
    params.pop("bias")
    dp = DataParallel("shard_map")
    local = dp.lift(lambda p, b: jax.lax.pmean(_loss("infonce", p, b, None), AXIS),
                    ("replicated", "sharded"), "replicated")
    local_loss = float(dp.unreplicate(local(dp.replicate(params), dp.shard_batch(batch))))
    global_loss = float(_reference_loss("infonce", params, batch))
    assert abs(local_loss - global_loss) > 0.1


def _np_infonce_with_negatives(img, txt, neg, scale):
    """NegCLIP: the image->text cross-entropy also has the hard negatives as keys; text->image is plain CLIP's."""
    img, txt, neg = (a.astype(np.float64) for a in (img, txt, neg))
    keys = np.concatenate([txt, neg])
    n = img.shape[0]
    i2t = np.mean([np.log(np.sum(np.exp(scale * img[i] @ keys.T))) - scale * img[i] @ txt[i] for i in range(n)])
    t2i = np.mean([np.log(np.sum(np.exp(scale * txt[i] @ img.T))) - scale * txt[i] @ img[i] for i in range(n)])
    return 0.5 * (i2t + t2i)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_hard_negatives_match_numpy_and_eight_devices_equal_one(mode):
    rng = np.random.default_rng(3)
    img, txt = _normalised(rng, GLOBAL_BATCH, DIM), _normalised(rng, GLOBAL_BATCH, DIM)
    neg = _normalised(rng, 3 * GLOBAL_BATCH, DIM)
    as32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = infonce_loss(as32(img), as32(txt), 5.0, negative_text_emb=as32(neg))
    np.testing.assert_allclose(float(got), _np_infonce_with_negatives(img, txt, neg, 5.0), rtol=1e-5)
    # The negatives make the loss larger than without them (more keys in the image->text softmax).
    assert float(got) > float(infonce_loss(as32(img), as32(txt), 5.0))
    dp = DataParallel(mode)
    # Negatives travel sharded with their images (3 per image), as the CLIP batch carries them.
    per_device = lambda i, t, n: jax.lax.pmean(  # noqa: E731
        infonce_loss(i, t, 5.0, axis_name=AXIS, negative_text_emb=n.reshape(-1, DIM)), AXIS)
    lifted = dp.lift(per_device, ("sharded", "sharded", "sharded"), "replicated")
    batch = dp.shard_batch({"i": img.astype(np.float32), "t": txt.astype(np.float32),
                            "n": neg.reshape(GLOBAL_BATCH, 3, DIM).astype(np.float32)})
    spread = float(np.asarray(dp.unreplicate(lifted(batch["i"], batch["t"], batch["n"]))))
    assert dp.num_devices == 8
    np.testing.assert_allclose(spread, float(got), rtol=1e-5)
    with pytest.raises(ValueError, match="negative_text_emb"):
        infonce_loss(as32(img), as32(txt), 5.0, negative_text_emb=as32(neg[:, :3]))
