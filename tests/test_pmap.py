"""`train.parallel='pmap'` through each task's real training loop, end to end on the tiny presets (8 fake devices).

Before issue 27 every pmap run crashed at its first log step: the lifted step's metrics keep pmap's device axis and
the loop's fetch called float() on them. The loop's own tests (tests/test_loop.py) run under both modes; here each
task's `train` runs under pmap as a user launches it (the digits run beside a shard_map run: the same logged loss;
the digits and CLIP steps of the two lifts are compared in tests/test_parallel.py and tests/test_clip_train.py).
"""
import json
import os

import numpy as np
import pytest

from diffusion_jax.config import load_config
from diffusion_jax.trainers import autoencoder, clip, digits, txt2img

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _config(name: str, mode: str, nested=()):
    config = load_config(os.path.join(ROOT, f"experiments/{name}.py:tiny"))
    for group in (config, *(config[n] for n in nested)):
        group.train.update(parallel=mode, num_steps=STEPS, log_every=2, checkpoint_every=STEPS, progress=False)
        for key in ("final_eval", "final_sample"):
            if key in group.train:
                group.train[key] = False
        if "sample_every" in group.train:
            group.train.sample_every = 0
    return config


def _losses(workdir: str) -> list:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [2, 4]
    return [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def pmap_clip(tmp_path_factory):
    """A tiny CLIP trained under pmap: the CLIP task's own run, and the frozen text encoder of the text-to-image run
    (a finished CLIP outside that run, used as it is), so the suite trains it once."""
    workdir = str(tmp_path_factory.mktemp("clip"))
    return workdir, clip.train(_config("clip_digits", "pmap"), workdir)


def _check_run(workdir: str, state) -> None:
    assert int(np.asarray(state.step)) == STEPS
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(STEPS)]
    assert all(np.isfinite(_losses(workdir)))


def test_clip_trains_under_pmap(pmap_clip):
    _check_run(*pmap_clip)


def test_autoencoder_trains_under_pmap(tmp_path):
    _check_run(str(tmp_path), autoencoder.train(_config("autoencoder_scenes", "pmap"), str(tmp_path)))


def test_txt2img_trains_under_pmap(tmp_path, pmap_clip):
    config = _config("txt2img_digits", "pmap", ("clip",))
    config.clip.workdir = pmap_clip[0]
    _check_run(str(tmp_path), txt2img.train(config, str(tmp_path)))
    assert json.load(open(os.path.join(tmp_path, "clip.json")))["step"] == STEPS


def test_digits_under_pmap_trains_samples_and_evaluates_like_shard_map(tmp_path):
    losses = {}
    for mode in ("pmap", "shard_map"):
        config = _config("digits", mode)
        config.train.final_sample = mode == "pmap"  # the sampler and the evaluation under pmap too
        digits.train(config, str(tmp_path / mode))
        losses[mode] = _losses(str(tmp_path / mode))
    np.testing.assert_allclose(losses["pmap"], losses["shard_map"], rtol=1e-4)
    with np.load(os.path.join(tmp_path, "pmap", "samples", "samples.npz")) as f:
        assert f["images"].shape == (20, 32, 32, 1)
    assert 0 <= json.load(open(os.path.join(tmp_path, "pmap", "eval.json")))["accuracy"] <= 1
