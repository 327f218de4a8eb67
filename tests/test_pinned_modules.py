"""Today's modules, pinned before issue 25 generalised them: the same parameter trees and the same numbers.

Each module is built with its defaults (what every preset relies on; a preset only sets sizes), initialised from
key 0 and applied to a fixed input. The pin is (a hash of every parameter path, shape and dtype; the sum of
|params|; the sum and the sum of |output|). A new option whose default changed a name, the RNG stream or one
operation would move the hash or the sums by far more than the tolerance, which only absorbs float32 reduction
order (recorded here; XLA's optimisation levels move the sums by about 1e-6 relative, cancellation included).
"""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.models.clip import TextTower
from diffusion_jax.models.unet import UNet

B, L = 2, 8


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 30, (B, L)).astype(np.int32)
    mask = np.arange(L)[None] < np.array([[5], [8]])
    text = {"tokens": rng.normal(size=(B, L, 16)).astype(np.float32), "mask": mask,
            "pooled": rng.normal(size=(B, 16)).astype(np.float32)}
    return rng, ids, mask, text


def _cases():
    rng, ids, mask, text = _inputs()
    x4 = rng.normal(size=(B, 8, 8, 4)).astype(np.float32)
    img = rng.normal(size=(B, 16, 16, 3)).astype(np.float32)
    t = np.array([3, 700], np.int32)
    # The modules issue 25 generalises (the U-Net's label path and CLIP's image tower share these ops and are left
    # to the end-to-end fingerprints, benchmarks/fingerprints.py, to keep this test cheap).
    return {
        "unet_text": (UNet(channels=(16, 32), num_classes=None, text=True, out_channels=4, num_heads=2),
                      (x4, t, text)),
        "autoencoder": (AutoencoderKL(channels=(16, 32)), (img, np.zeros((B, 8, 8, 4), np.float32))),
        "text_tower": (TextTower(vocab_size=32, max_length=L, width=16, num_heads=2), (ids, mask)),
    }


PINNED = {  # name: (tree hash, sum |params|, sum output, sum |output|), from `python -m tests.test_pinned_modules`
    "autoencoder": ("ea061f804196a3d8", 4919.604919749105, -68.95989753305912, 1392.7739826105535),
    "text_tower": ("33d7a8d5dca56070", 1229.0448861427649, 0.5047095753252506, 199.0477747246623),
    "unet_text": ("cc35520d3b8f1140", 9026.71012126494, 3.26597741805017, 35.76717116404325),
}


def _pin(module, args):
    params = jax.jit(module.init)(jax.random.key(0), *args)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    tree = hashlib.sha256(repr([(jax.tree_util.keystr(p), v.shape, str(v.dtype)) for p, v in flat]).encode())
    # Zero-initialised output layers would give zero outputs: apply a fixed perturbation of every parameter.
    moved = jax.tree.map(lambda v: v + 0.02 * jnp.cos(jnp.arange(v.size, dtype=v.dtype)).reshape(v.shape), params)
    out = jax.jit(module.apply)(moved, *args)
    leaves = [np.asarray(v, np.float64) for v in jax.tree.leaves(out)]
    return (tree.hexdigest()[:16], float(sum(np.abs(np.asarray(v, np.float64)).sum() for _, v in flat)),
            float(sum(v.sum() for v in leaves)), float(sum(np.abs(v).sum() for v in leaves)))


@pytest.mark.parametrize("name", sorted(_cases()))
def test_module_defaults_are_unchanged(name):
    module, args = _cases()[name]
    tree, params, out, out_abs = _pin(module, args)
    want = PINNED[name]
    assert tree == want[0], f"{name}: the parameter tree (names, shapes, dtypes) changed"
    np.testing.assert_allclose([params, out, out_abs], want[1:], rtol=1e-5, atol=1e-5, err_msg=name)


if __name__ == "__main__":  # prints the pins (run once on the code being pinned)
    for name, (module, args) in sorted(_cases().items()):
        print(f"    {name!r}: {_pin(module, args)!r},")
