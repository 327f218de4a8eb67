"""CLIP end to end on the tiny preset: training beats chance, retrieval is reported, --mode=embed, 1-vs-8 devices."""
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import pipeline
from diffusion_jax.parallel import DataParallel
from diffusion_jax.trainers import clip
from tests import mains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/clip_digits.py:tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("clip"))
    config = load_config(TINY)
    config.train.final_eval = False
    clip.train(config, workdir)
    return config, workdir


def test_tiny_clip_run_beats_chance_and_reports_retrieval(trained):
    config, workdir = trained
    scores = clip.evaluate(config, workdir)
    # Chance: colour 1/6, layout 1/5. 150 tiny steps learn the easy attributes (measured: colour 1.00, layout 0.48).
    assert scores["seen_color_accuracy"] > 0.5 and scores["seen_layout_accuracy"] > 0.3, scores
    assert scores["heldout_color_accuracy"] > 0.5, scores
    for key in ("image_to_text_recall@1", "image_to_text_recall@5", "text_to_image_recall@1"):
        assert 0.0 <= scores[key] <= 1.0
    assert scores["image_to_text_recall@5"] >= scores["image_to_text_recall@1"]
    assert scores["image_to_text_recall@5"] > 5 / 500  # above chance for 500 held-out pairs
    assert os.path.exists(os.path.join(workdir, "tokenizer.json"))


def test_embed_mode_writes_normalised_embeddings_in_order(trained, tmp_path):
    _, workdir = trained
    texts = ["a red 3 in the top left", "a blue seven in the center", "a red 3 in the top left"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    data = cd.make_dataset("test", seed=5, num_examples=4)
    np.savez(tmp_path / "images.npz", images=data["image"])
    out = tmp_path / "out.npz"
    embed = dict(embed__texts_file=str(tmp_path / "texts.txt"), embed__output=str(out))
    mains.run(TINY, workdir, "embed", embed__images=str(tmp_path / "images.npz"), **embed)  # main, in this process
    with np.load(out) as f:
        text, image = f["text_embeddings"], f["image_embeddings"]
    assert text.shape == (3, 32) and image.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(text[0], text[2], atol=1e-6)  # same text, same embedding, order kept
    assert np.abs(text[0] - text[1]).max() > 1e-3
    with pytest.raises(FileExistsError) as excinfo:
        mains.run(TINY, workdir, "embed", **embed)
    assert "exists" in mains.user_error(excinfo)  # never overwrites a result


def test_embed_texts_errors_name_the_prompt(trained):
    config, workdir = trained
    encoder = clip.load(config, workdir)
    with pytest.raises(ValueError, match="''"):
        encoder.embed_texts([""])
    with pytest.raises(ValueError, match="zebra"):
        encoder.embed_texts(["zebra giraffe"])
    with pytest.warns(UserWarning, match="purple"):
        encoder.embed_texts(["a purple 3 in the center"])


@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_clip_step_eight_devices_equals_one_device(trained, loss):
    config, workdir = trained
    task = clip.ClipTask(config, clip.load_tokenizer(workdir))
    task.tx = optax.sgd(0.5)  # plain SGD: Adam's normalisation would hide a wrongly scaled gradient
    data = {k: v[:16] for k, v in task.data("train").items() if k in ("image", "ids", "mask")}
    init = jax.jit(task.init_state)()

    def run(dp):
        step = dp.lift(clip.make_train_step(task.model, task.tx, 0.9, loss), ("replicated", "sharded"),
                       ("replicated", "replicated"))
        state, metrics = dp.replicate(init), []
        for s in range(2):
            state, m = step(state, dp.shard_batch(pipeline.get_batch(data, 16, 0, s)))
            metrics.append(float(dp.unreplicate(m)["loss"]))
        return dp.unreplicate(state), metrics

    ref_state, ref_losses = run(DataParallel("shard_map", jax.local_devices()[:1]))
    for mode in ("shard_map", "pmap"):
        state, losses = run(DataParallel(mode))
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref_state.params),
                                                               jax.tree.leaves(init.params)))
    assert moved > 1e-3


def test_weight_decay_reaches_kernels_only():
    from diffusion_jax.trainers.state import decay_mask, make_optimizer
    config = load_config(TINY)
    task = clip.ClipTask(config, clip.build_tokenizer(config))
    params = jax.jit(task.init_state)().params
    mask = decay_mask(params)
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat["['params']['logit_scale']"] is False and flat["['params']['logit_bias']"] is False
    assert any(k.endswith("['kernel']") for k in flat) and all(m == k.endswith("['kernel']") for k, m in flat.items())
    # With zero gradients only weight decay moves a parameter: kernels shrink, everything else stays put.
    tx = make_optimizer(learning_rate=0.1, warmup_steps=1, num_steps=10, weight_decay=0.5, grad_clip=1.0)
    opt_state = tx.init(params)
    zeros = jax.tree.map(np.zeros_like, params)
    update = jax.jit(tx.update)  # one compile, not one an op
    for _ in range(2):
        updates, opt_state = update(zeros, opt_state, params)
    moved = jax.tree.map(lambda u: bool(np.any(np.asarray(u) != 0)), updates)
    assert jax.tree.leaves(moved) == jax.tree.leaves(mask)


def test_clip_config_is_validated_before_anything_is_written(tmp_path):
    config = load_config(TINY)
    config.train.loss = "triplet"
    with pytest.raises(ConfigError, match="config.train.loss='triplet'"):
        clip.train(config, str(tmp_path / "run"))
    config = load_config(TINY)
    config.data.train_copies = 30
    with pytest.raises(ConfigError, match="config.data.train_copies=30"):
        clip.train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_config_module_imports_nothing_of_the_package():
    code = ("import sys, diffusion_jax.config; "
            "print(sorted(m for m in sys.modules if m.startswith('diffusion_jax.') and m != 'diffusion_jax.config'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
