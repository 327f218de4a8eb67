"""DiT and MMDiT: the conditioning contract (`models/conditioning.py`), adaLN-Zero's zero output at init, that the
prediction depends on t and on the condition but not on text padding, bad input, jit and bfloat16.

Tiny models (width 16, depth 2, 8x8 inputs); each (model, conditioning) pair is initialised and compiled once.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models.dit import DiT
from diffusion_jax.models.mmdit import MMDiT

CLASSES = (DiT, MMDiT)
T = jnp.array([3, 700])
MASK = jnp.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)


def make(cls, text, **overrides):
    kwargs = dict(patch_size=2, width=16, depth=2, num_heads=2, num_classes=None if text else 10, text=text,
                  out_channels=3 if text else 1)
    return cls(**{**kwargs, **overrides})


def inputs(text, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3 if text else 1)), jnp.float32)
    if not text:
        return x, jnp.array([3, 10])  # 10: the null class
    return x, {"tokens": jnp.asarray(rng.standard_normal((2, 5, 12)), jnp.float32), "mask": MASK,
               "pooled": jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)}


@functools.lru_cache(maxsize=None)
def setup(cls, text):
    """(model, jitted apply, initial params, perturbed params, x, cond) for one (model, conditioning) pair."""
    model = make(cls, text)
    x, cond = inputs(text)
    params = jax.jit(model.init)(jax.random.key(0), x, T, cond)
    # adaLN-Zero makes a fresh model predict exactly 0: perturb every weight to see how inputs flow through it.
    rng = np.random.default_rng(1)  # NumPy: one jax.random call per leaf shape would compile a program each
    perturbed = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
    return model, jax.jit(model.apply), params, perturbed, x, cond


def differs(a, b):
    """Per example: whether the outputs differ noticeably."""
    return np.abs(np.asarray(a) - np.asarray(b)).reshape(len(a), -1).max(axis=1) > 1e-4


@pytest.mark.parametrize("text", [False, True], ids=["labels", "text"])
@pytest.mark.parametrize("cls", CLASSES)
def test_zero_at_init_and_depends_on_time_and_condition(cls, text):
    model, apply, params, perturbed, x, cond = setup(cls, text)
    out = apply(params, x, T, cond)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert not np.asarray(out).any(), "adaLN-Zero: the output is exactly 0 at init"

    base = apply(perturbed, x, T, cond)
    assert np.abs(np.asarray(base)).max(axis=(1, 2, 3)).min() > 1e-3 and np.isfinite(base).all()
    assert differs(base, apply(perturbed, x, jnp.array([3.5, 10.0]), cond)).all()  # float t, too
    if text:
        others = [dict(cond, pooled=cond["pooled"][::-1]), dict(cond, tokens=cond["tokens"].at[:, 0].add(1.0))]
    else:
        others = [jnp.array([7, 1])]
    for other in others:
        assert differs(base, apply(perturbed, x, T, other)).all()
    # Examples stay independent: changing example 0's condition leaves example 1's prediction alone.
    one = dict(cond, pooled=cond["pooled"].at[0].add(1.0)) if text else jnp.array([7, 10])
    assert differs(base, apply(perturbed, x, T, one)).tolist() == [True, False]


@pytest.mark.parametrize("cls", CLASSES)
def test_text_padding_is_ignored(cls):
    _, apply, _, perturbed, x, cond = setup(cls, True)
    rng = np.random.default_rng(2)
    base = apply(perturbed, x, T, cond)
    # New values under the existing padding and three more padded tokens: the prediction must not move.
    tokens = np.where(np.asarray(MASK)[..., None], cond["tokens"], rng.standard_normal((2, 5, 12)))
    tokens = np.concatenate([tokens, rng.standard_normal((2, 3, 12))], axis=1).astype(np.float32)
    mask = jnp.concatenate([MASK, jnp.zeros((2, 3), bool)], axis=1)
    padded = apply(perturbed, x, T, dict(cond, tokens=jnp.asarray(tokens), mask=mask))
    np.testing.assert_allclose(padded, base, atol=1e-5)
    # ...while the same tokens, unmasked, do change it (the test can see the padding at all).
    assert differs(base, apply(perturbed, x, T, dict(cond, tokens=jnp.asarray(tokens), mask=mask | True))).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_input_raises(cls):
    name = re.escape(f"this {cls.__name__} ")  # "DiT" alone would also match "MMDiT"
    init = lambda model, x, cond: jax.eval_shape(model.init, jax.random.key(0), x, T, cond)  # noqa: E731
    x, labels = inputs(False)
    x_text, text_cond = inputs(True)
    with pytest.raises(ValueError, match=name):
        init(make(cls, True), x_text, labels)
    with pytest.raises(ValueError, match=name):
        init(make(cls, False), x, text_cond)
    with pytest.raises(ValueError, match="patch_size"):
        init(make(cls, False, patch_size=3), x, labels)
    with pytest.raises(ValueError, match="num_heads"):
        init(make(cls, False, width=20, num_heads=3), x, labels)


@pytest.mark.parametrize("text", [False, True], ids=["labels", "text"])
@pytest.mark.parametrize("cls", CLASSES)
def test_jit_matches_eager(cls, text):
    model, apply, _, perturbed, x, cond = setup(cls, text)
    np.testing.assert_allclose(model.apply(perturbed, x, T, cond), apply(perturbed, x, T, cond), atol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_bfloat16_params_stay_float32_and_output_is_float32(cls):
    _, apply, _, perturbed, x, cond = setup(cls, True)
    model = make(cls, True, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, T, cond)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(model.apply)(perturbed, x, T, cond)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    reference = apply(perturbed, x, T, cond)
    assert np.abs(np.asarray(out) - np.asarray(reference)).max() < 0.1 * np.abs(np.asarray(reference)).max()
