"""CLIP model: shapes, unit-norm embeddings, the temperature clamped after the update, padding invariance, captions
that differ."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.models.clip import CLIP, TextTower

VOCAB, MAX_LEN, WIDTH, DIM = 20, 8, 16, 12
MODEL = CLIP(vocab_size=VOCAB, max_length=MAX_LEN, embed_dim=DIM, image_channels=(8, 16), text_width=WIDTH,
             text_layers=1, text_heads=2, norm_groups=4)

# <bos>=2 words <eos>=3 <pad>=0 ..., as diffusion_jax.text.tokenizer encodes them.
IDS = np.array([[2, 5, 6, 7, 3, 0, 0, 0],
                [2, 9, 3, 0, 0, 0, 0, 0]], np.int32)
MASK = IDS != 0


def _images(n=2):
    return jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def params():
    return jax.jit(MODEL.init)(jax.random.key(0), _images(), IDS, MASK)


@pytest.fixture(scope="module")
def encode_text(params):
    return jax.jit(lambda ids, mask: MODEL.apply(params, ids, mask, method=CLIP.encode_text))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(dtype):
    model = MODEL.clone(dtype=dtype)
    images = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((3, 5), jnp.int32)
    mask = jax.ShapeDtypeStruct((3, 5), jnp.bool_)
    params = jax.eval_shape(model.init, jax.random.key(0), images, ids, mask)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert params["params"]["logit_scale"].shape == ()
    img, txt, scale = jax.eval_shape(model.apply, params, images, ids, mask)
    assert (img.shape, txt.shape, scale.shape) == ((3, DIM), (3, DIM), ())
    assert img.dtype == txt.dtype == scale.dtype == jnp.float32
    assert jax.eval_shape(lambda p, x: model.apply(p, x, method=CLIP.encode_image), params, images).shape == (3, DIM)
    pooled, tokens = jax.eval_shape(lambda p, i, m: model.apply(p, i, m, method=CLIP.encode_text), params, ids, mask)
    assert pooled.shape == (3, DIM) and tokens.shape == (3, 5, WIDTH) and tokens.dtype == jnp.float32


def test_text_tower_returns_pooled_and_tokens():
    tower = TextTower(vocab_size=VOCAB, max_length=MAX_LEN, width=WIDTH, num_layers=1, num_heads=2)
    params = jax.eval_shape(tower.init, jax.random.key(0), IDS, MASK)
    pooled, tokens = jax.eval_shape(tower.apply, params, IDS, MASK)
    assert pooled.shape == (2, WIDTH) and tokens.shape == (2, MAX_LEN, WIDTH)


def test_embeddings_have_unit_norm_and_scale_starts_at_clip_value(params):
    img, txt, scale = jax.jit(MODEL.apply)(params, _images(), IDS, MASK)
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(params["params"]["logit_scale"]), math.log(1 / 0.07), rtol=1e-6)
    np.testing.assert_allclose(float(scale), 1 / 0.07, rtol=1e-5)


def test_temperature_is_clamped_after_the_update_and_keeps_its_gradient(params):
    # Before issue 27 the scale was min(exp(logit_scale), 100) in the forward pass: its gradient was 0 at the cap,
    # so a temperature that reached it could never come back. Now the parameter is clamped after each update.
    from diffusion_jax.parallel import DataParallel
    from diffusion_jax.trainers import clip as clip_task
    from diffusion_jax.trainers.state import TrainState
    capped = jax.tree.map(lambda x: x, params)
    capped["params"]["logit_scale"] = jnp.asarray(math.log(1000.0), jnp.float32)
    batch = {"image": _images(), "ids": IDS, "mask": MASK}

    def loss(p):
        img, txt, scale = MODEL.apply(p, batch["image"], IDS, MASK)
        return clip_task.infonce_loss(img, txt, scale)
    assert float(jax.jit(jax.grad(loss))(capped)["params"]["logit_scale"]) != 0.0  # jitted: one compile, not one an op
    dp = DataParallel("shard_map", jax.local_devices()[:1])
    tx = optax.sgd(1e-3)
    step = dp.lift(clip_task.make_train_step(MODEL, tx, 0.9), ("replicated", "sharded"), ("replicated", "replicated"))
    state, metrics = step(dp.replicate(TrainState.create(capped, tx)), dp.shard_batch(batch))
    state = dp.unreplicate(state)
    assert float(state.params["params"]["logit_scale"]) == pytest.approx(math.log(100.0), rel=1e-6)
    assert float(state.ema_params["params"]["logit_scale"]) <= math.log(1000.0)
    assert float(metrics["logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    temperature = jax.jit(lambda p: MODEL.apply(p, method=CLIP.temperature))(capped)
    assert float(temperature) == pytest.approx(1000.0, rel=1e-5)


def test_padding_does_not_change_real_tokens_or_pooled(params, encode_text):
    pooled, tokens = encode_text(IDS, MASK)
    # Other ids at the padded positions.
    noisy = np.where(MASK, IDS, np.random.default_rng(3).integers(1, VOCAB, IDS.shape)).astype(np.int32)
    pooled2, tokens2 = encode_text(noisy, MASK)
    np.testing.assert_allclose(pooled2, pooled, atol=1e-5)
    np.testing.assert_allclose(tokens2, tokens, atol=1e-5)
    # Shorter padding: cut the batch to length 5 (the longest caption), so the tensors are shorter.
    pooled3, tokens3 = encode_text(IDS[:, :5], MASK[:, :5])
    np.testing.assert_allclose(pooled3, pooled, atol=1e-5)
    np.testing.assert_allclose(tokens3, tokens[:, :5], atol=1e-5)
    # Padded rows of tokens are zero; real rows are not.
    assert np.all(np.asarray(tokens)[~MASK] == 0)
    assert np.all(np.abs(np.asarray(tokens)[MASK]).sum(-1) > 0)


def test_different_captions_and_images_give_different_embeddings(params, encode_text):
    pooled, tokens = encode_text(IDS, MASK)
    other = IDS.copy()
    other[0, 2] = 11  # one word changed in caption 0; caption 1 unchanged
    pooled2, tokens2 = encode_text(other, MASK)
    assert float(jnp.linalg.norm(pooled2[0] - pooled[0])) > 1e-3
    np.testing.assert_allclose(pooled2[1], pooled[1], atol=1e-6)
    assert float(jnp.linalg.norm(pooled[0] - pooled[1])) > 1e-3
    # The word's change reaches the other real tokens too (bidirectional attention).
    assert float(jnp.abs(tokens2[0, 1] - tokens[0, 1]).max()) > 1e-4
    img = MODEL.apply(params, _images(), method=CLIP.encode_image)
    assert float(jnp.linalg.norm(img[0] - img[1])) > 1e-3


@pytest.mark.parametrize(
    "ids,mask,match",
    [
        (np.zeros((2, 8), np.int32), np.ones((2, 7), bool), "mask shape"),
        (np.zeros((2, 9), np.int32), np.ones((2, 9), bool), "max_length"),
        (np.zeros((8,), np.int32), np.ones((8,), bool), "ids must"),
    ],
)
def test_bad_text_shapes_raise_clear_errors(params, ids, mask, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda p: MODEL.apply(p, ids, mask, method=CLIP.encode_text), params)


def test_bad_image_rank_raises(params):
    with pytest.raises(ValueError, match="images must"):
        jax.eval_shape(lambda p: MODEL.apply(p, jnp.zeros((32, 32, 3)), method=CLIP.encode_image), params)


def test_factorised_image_tower_sees_shape_the_same_in_every_colour():
    """With factorize_color, the ConvNet trunk gets the intensity only: a red and a green copy of one digit differ
    only through the colour branch (zero it and their features are equal), and that branch does tell them apart."""
    from diffusion_jax.data import captioned_digits as cd
    from diffusion_jax.data import mnist
    from diffusion_jax.models.clip import ImageTower

    digit = mnist.load_mnist("bundled", "test")[0][0]
    images = np.stack([cd.render(digit, c, "top left") for c in ("red", "green")]).astype(np.float32) / 127.5 - 1
    tower = ImageTower(channels=(8, 16), features=16, norm_groups=4, factorize_color=True)
    params = tower.init(jax.random.key(0), images)
    features = np.asarray(tower.apply(params, images))
    assert np.abs(features[0] - features[1]).max() > 1e-4
    no_color = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "Dense_2" in jax.tree_util.keystr(path) else x, params)
    same = np.asarray(tower.apply(no_color, images))
    np.testing.assert_allclose(same[0], same[1], atol=1e-5)
    assert params["params"]["Conv_0"]["kernel"].shape[2] == 1  # the trunk's input is the intensity alone
