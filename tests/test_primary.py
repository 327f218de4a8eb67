"""Multi-process runs: decisions with collective consequences are process 0's, and only process 0 writes shared files.

Process 1 of a two-process run is simulated in this one process: `jax.process_index` returns 1, and
`distributed.primary_decides` returns what process 0 saw (tests/test_multihost.py runs real processes for training,
checkpoints and sampling). Before issue 27 each process decided from its own listing whether to train CLIP or the
autoencoder (a hang when listings differ), and wrote the embeddings and the classifier cache itself.
"""
import os

import jax
import numpy as np
import pytest

from diffusion_jax import distributed
from diffusion_jax.config import load_config
from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.trainers import clip, txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def process_one(monkeypatch):
    """This process as process 1 of 2; `seen_by_primary` is what process 0's listing shows (None: the same)."""
    seen = {}
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    monkeypatch.setattr(jax, "process_count", lambda *a, **k: 2)

    def decided(value):
        return seen.get("value", value)
    monkeypatch.setattr(distributed, "primary_decides", decided)
    return seen


def test_primary_is_process_zero(process_one):
    assert not distributed.is_primary()


def test_process_zeros_listing_decides_whether_clip_is_trained(process_one, tmp_path, monkeypatch):
    config = load_config(os.path.join(ROOT, "experiments/txt2img_digits.py:tiny"))
    trained = []
    monkeypatch.setattr(clip, "train", lambda c, w: trained.append(w))
    process_one["value"] = config.clip.train.num_steps  # process 0 sees a finished CLIP; this process sees nothing
    assert txt2img.ensure_clip(config, str(tmp_path)) == os.path.join(tmp_path, "clip")
    assert trained == []
    process_one["value"] = -1  # process 0 sees none: every process trains, this one too
    txt2img.ensure_clip(config, str(tmp_path))
    assert trained == [os.path.join(tmp_path, "clip")]


def test_only_process_zero_writes_the_classifier_cache(process_one, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (16, 32, 32, 1)).astype(np.float32)
    params = classifier_lib.load_or_train_classifier(str(tmp_path / "classifier"), images, np.arange(16) % 10,
                                                     steps=2, batch_size=8)
    assert jax.tree.leaves(params) and not os.path.exists(tmp_path / "classifier")


def test_only_process_zero_writes_the_embeddings(process_one, tmp_path, monkeypatch):
    config = load_config(os.path.join(ROOT, "experiments/clip_digits.py:tiny"))
    texts = tmp_path / "texts.txt"
    texts.write_text("a red 3 in the top left\n")
    config.embed.update(texts_file=str(texts), output=str(tmp_path / "out.npz"))

    class FakeEncoder:
        def embed_texts(self, t):
            return np.ones((len(t), 4), np.float32), None, None
    monkeypatch.setattr(clip, "load", lambda c, w: FakeEncoder())
    assert clip.embed(config, str(tmp_path)) == str(tmp_path / "out.npz")
    assert not os.path.exists(tmp_path / "out.npz")  # process 0 writes it; before issue 27 every process did
    process_one["value"] = True  # the output exists for process 0 (not yet visible here): refused on every process
    with pytest.raises(FileExistsError, match="config.embed.output"):
        clip.embed(config, str(tmp_path))
