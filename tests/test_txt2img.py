"""Text to image: cross-attention and its mask, guidance, prompt errors, attribute checks, 1 vs 8 devices, e2e."""
import functools
import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax import api
from diffusion_jax.checkpoint import CheckpointMismatchError
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import mnist
from diffusion_jax.diffusion import process as process_lib
from diffusion_jax.diffusion import samplers, schedules
from diffusion_jax.evaluation import txt2img as checks
from diffusion_jax.parallel import DataParallel
from diffusion_jax.text.tokenizer import TokenizerWarning
from diffusion_jax.trainers import diffusion, txt2img
from diffusion_jax.trainers.state import TrainState
from tests import mains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/txt2img_digits.py:tiny")
_run = functools.partial(mains.run, TINY)  # _run(workdir, mode, sample__prompts=...): main in this process
L, W, D = 6, 12, 8  # caption length, token width, pooled width of the fake text conditions


def _cond(rng, n, lengths):
    mask = np.arange(L)[None, :] < np.asarray(lengths)[:, None]
    tokens = rng.normal(size=(n, L, W)).astype(np.float32) * mask[..., None]
    return {"tokens": tokens, "mask": mask, "pooled": rng.normal(size=(n, D)).astype(np.float32)}


@pytest.fixture(scope="module")
def unet():
    """The tiny text U-Net with every parameter perturbed (zero-initialised output layers would hide the text)."""
    model = diffusion.build_model(load_config(TINY).model, num_classes=None, out_channels=3, text=True)
    rng = np.random.default_rng(0)
    cond = _cond(rng, 2, [3, 5])
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((2, 32, 32, 3), np.float32), np.zeros(2, np.int32),
                                 cond)
    params = jax.tree.map(lambda p: p + 0.2 * rng.normal(size=p.shape).astype(p.dtype), params)
    return model, params, jax.jit(model.apply)


def test_cross_attention_shape_and_padding_tokens_change_nothing(unet):
    model, params, apply = unet
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    t = np.array([5, 50], np.int32)
    cond = _cond(rng, 2, [3, 5])
    out = np.asarray(apply(params, x, t, cond))
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    garbage = dict(cond, tokens=np.where(cond["mask"][..., None], cond["tokens"],
                                         rng.normal(size=cond["tokens"].shape).astype(np.float32) * 50))
    np.testing.assert_allclose(apply(params, x, t, garbage), out, atol=1e-5)
    # Control: changing a REAL token does change the prediction, so the check above can fail.
    real = dict(cond, tokens=cond["tokens"].copy())
    real["tokens"][:, 0] += 1.0
    assert np.abs(np.asarray(apply(params, x, t, real)) - out).max() > 1e-3
    # And the pooled embedding enters too.
    assert np.abs(np.asarray(apply(params, x, t, dict(cond, pooled=cond["pooled"] + 1.0))) - out).max() > 1e-3


def test_text_unet_rejects_labels_and_wrong_keys(unet):
    model, params, apply = unet
    x = np.zeros((2, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="text-conditional"):
        model.apply(params, x, np.zeros(2, np.int32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="pooled"):
        model.apply(params, x, np.zeros(2, np.int32), {"tokens": np.zeros((2, L, W)), "mask": np.ones((2, L))})


def test_guidance_scale_one_is_the_conditional_prediction(unet):
    model, params, _ = unet
    rng = np.random.default_rng(2)
    cond, null = _cond(rng, 3, [2, 4, 6]), _cond(rng, 3, [2, 2, 2])
    x = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    t = np.array([1, 10, 90], np.int32)
    apply = jax.jit(lambda x, t, c: model.apply(params, x, t, c))
    guided = jax.jit(lambda g: samplers.classifier_free_guidance(apply, cond, null, g)(x, t))
    np.testing.assert_allclose(guided(1.0), apply(x, t, cond), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(guided(3.0)) - np.asarray(apply(x, t, cond))).max() > 1e-3


def test_drop_condition_replaces_whole_examples():
    cond = {"tokens": np.ones((3, L, W), np.float32), "mask": np.ones((3, L), bool),
            "pooled": np.ones((3, D), np.float32)}
    null = {"tokens": np.zeros((L, W), np.float32), "mask": np.arange(L) < 2, "pooled": np.zeros(D, np.float32)}
    out = jax.tree.map(np.asarray, diffusion.drop_condition(cond, null, jnp.array([False, True, False])))
    np.testing.assert_array_equal(out["tokens"][1], 0)
    np.testing.assert_array_equal(out["mask"][1], null["mask"])
    np.testing.assert_array_equal(out["tokens"][[0, 2]], 1)
    np.testing.assert_array_equal(out["pooled"][1], 0)


def test_attribute_checks_read_real_captioned_images():
    data = cd.make_dataset("test", seed=1, num_examples=300)
    np.testing.assert_array_equal(checks.layouts(data["image"]), data["layout"])
    np.testing.assert_array_equal(checks.colors(data["image"]), data["color"])
    centred = np.flatnonzero(data["layout"] == cd.LAYOUTS.index("center"))[:3]
    crops = checks.digit_crops(data["image"][centred], data["layout"][centred])
    assert crops.shape == (3, 32, 32, 1) and crops.min() >= -1 and crops.max() <= 1
    # A centred red digit's crop is exactly the digit as the classifier sees real MNIST (red channel = intensity).
    red = centred[data["color"][centred] == cd.COLORS.index("red")]
    for i in red:
        expected = mnist.to_model_images(data["image"][i, 2:30, 2:30, 0][None])[0]
        np.testing.assert_allclose(checks.digit_crops(data["image"][i:i + 1], data["layout"][i:i + 1])[0], expected)
    blank = np.zeros((1, 32, 32, 3), np.uint8)
    assert checks.layouts(blank)[0] == cd.LAYOUTS.index("center")  # defined, and scored wrong for quadrant prompts
    scores = checks.attribute_scores({"digit": np.array([1, 2]), "color": np.array([0, 0]), "layout": np.array([0, 1])},
                                     [1, 2], [0, 0], [0, 0], [False, True])
    assert scores["seen_all_accuracy"] == 1.0 and scores["heldout_all_accuracy"] == 0.0
    assert scores["heldout_digit_accuracy"] == 1.0
    assert checks.diversity(np.zeros((4, 32, 32, 3), np.uint8), [0, 0, 1, 1]) == 0.0


def _text_step_run(dp, model, schedule, null, batches):
    step = dp.lift(diffusion.make_train_step(model, process_lib.VP(schedule, prediction="v"), optax.sgd(0.05), seed=0,
                                             cond_dropout=0.5, ema_decay=0.9, null_cond=null),
                   ("replicated", "sharded"), ("replicated", "replicated"))
    params = jax.jit(model.init)(jax.random.key(0), batches[0]["image"][:2], np.zeros(2, np.int32),
                                 jax.tree.map(lambda a: a[:2], batches[0]["cond"]))
    state = dp.replicate(TrainState.create(params, optax.sgd(0.05)))
    losses = []
    for b in batches:
        state, metrics = step(state, dp.shard_batch(b))
        losses.append(float(dp.unreplicate(metrics)["loss"]))
    return dp.unreplicate(state), losses


def test_text_conditioned_step_eight_devices_equals_one(unet, mode="shard_map"):
    # shard_map only: the condition path does not depend on the lift, and pmap's lift is covered by the digits and
    # CLIP 1-vs-8 tests (tests/test_parallel.py, tests/test_clip_train.py); this keeps the suite's time down.
    model, _, _ = unet
    schedule = schedules.make_schedule("cosine", 100)
    rng = np.random.default_rng(3)
    null = jax.tree.map(lambda a: a[0], _cond(rng, 1, [2]))
    batches = [{"image": rng.uniform(-1, 1, size=(16, 32, 32, 3)).astype(np.float32),
                "cond": _cond(rng, 16, rng.integers(2, L + 1, size=16))} for _ in range(2)]
    ref, ref_losses = _text_step_run(DataParallel("shard_map", jax.local_devices()[:1]), model, schedule, null,
                                     batches)
    got, got_losses = _text_step_run(DataParallel(mode), model, schedule, null, batches)
    np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _main(workdir, *flags, mode="train"):
    """The command line in a subprocess: the e2e fixture and one bad prompt; other cases run in this process
    (`_run`, tests/mains.py)."""
    cmd = [sys.executable, "-m", "diffusion_jax.main", f"--config={TINY}", f"--workdir={workdir}", f"--mode={mode}",
           *flags]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """From nothing: the tiny preset trains CLIP in WORKDIR/clip, then the U-Net, then evaluates."""
    workdir = str(tmp_path_factory.mktemp("txt2img"))
    code, out = _main(workdir)
    assert code == 0, out
    return workdir, out


def test_tiny_run_from_nothing_trains_clip_then_unet_and_evaluates(e2e):
    workdir, out = e2e
    assert "training CLIP there first" in out
    assert os.path.exists(os.path.join(workdir, "clip", "tokenizer.json"))
    assert os.listdir(os.path.join(workdir, "clip", "checkpoints"))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and rows[-1]["loss"] < rows[0]["loss"]
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert set(result["guidance"]) == {"1", "3", "4"}  # eval.guidance_scales (1, 4) plus sample.guidance 3
    for scores in result["guidance"].values():
        assert 0 <= scores["seen_all_accuracy"] <= 1 and scores["seen_count"] == 250 and scores["heldout_count"] == 50
        assert -1 <= scores["clip_score"] <= 1
    # The attribute checker is near-perfect on real images: colour and layout exactly, the digit mostly.
    real = result["checker_on_real_images"]
    assert real["seen_color_accuracy"] == real["seen_layout_accuracy"] == 1.0
    assert os.path.exists(os.path.join(workdir, "samples", "eval_guidance_3.png"))


def test_sample_mode_prompts_file_and_outputs(e2e, tmp_path):
    workdir, _ = e2e
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a blue seven in the center\n\na green 2 in the bottom right\n")
    output = str(tmp_path / "out.npz")
    _run(workdir, "sample", sample__prompts="a red 3 in the top left", sample__prompts_file=str(prompts_file),
         sample__num_per_prompt=3, sample__output=output)
    with np.load(output) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (9, 32, 32, 3)
        assert list(f["prompts"]) == ["a red 3 in the top left"] * 3 + ["a blue seven in the center"] * 3 + [
            "a green 2 in the bottom right"] * 3
    assert os.path.getsize(output[:-4] + ".png") > 0


def test_bad_prompts_are_clear_errors(e2e):
    workdir, _ = e2e
    code, out = _main(workdir, "--config.sample.prompts=a red 3 in the top left;;a blue 4", mode="sample")
    assert code == 2 and "prompt 1 is empty" in out
    with pytest.raises(txt2img.PromptError) as excinfo:
        _run(workdir, "sample", sample__prompts="zebra quokka")
    assert "zebra" in mains.user_error(excinfo) and "only unknown words" in str(excinfo.value)
    task = txt2img.Pipeline.load(load_config(TINY), workdir)
    with pytest.raises(txt2img.PromptError, match="empty"):
        task.prompt_condition(["a red 3", "  "])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = task.prompt_condition(["a red 3 wearing a hat in the top left"])
    assert cond["pooled"].shape[0] == 1
    assert any(issubclass(w.category, TokenizerWarning) and "wearing" in str(w.message) and "hat" in str(w.message)
               for w in caught)


def test_sampling_reads_the_unet_of_sample_checkpoint_workdir(e2e, tmp_path):
    """A sweep point samples another run's U-Net (sample.checkpoint_workdir) with the CLIP that run recorded, and
    writes nothing but its own outputs; a folder without checkpoints is named in the error."""
    workdir, _ = e2e
    config = load_config(TINY)
    config.sample.checkpoint_workdir = workdir
    model, state = txt2img.load_for_sampling(config, str(tmp_path / "point"))
    assert model.clip_workdir == os.path.join(workdir, "clip")  # the recorded CLIP, not the point's own clip/
    own = txt2img.Pipeline.load(load_config(TINY), workdir).load_state(workdir)
    assert int(state.step) == int(own.step) == config.train.num_steps
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(own.ema_params)))
    assert not os.path.exists(tmp_path / "point")
    load = lambda: model.task.load_for_sampling(str(tmp_path / "point"), "the text-to-image U-Net")  # noqa: E731
    config.sample.checkpoint_step = 10  # a kept checkpoint before the last (issue 26's curve scores them all)
    step, state = load()
    assert step == int(state.step) == 10
    config.sample.checkpoint_step = 15
    with pytest.raises(FileNotFoundError, match=r"step 15 .*finished steps: \[10, 20\].*sample.checkpoint_step=15"):
        load()
    config.sample.checkpoint_step = -1
    with pytest.raises(ConfigError, match="sample.checkpoint_step=-1"):
        load()
    config.sample.checkpoint_step = 0
    config.sample.checkpoint_workdir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere/checkpoints.*text-to-image U-Net.*sample.checkpoint_workdir"):
        model.task.load_for_sampling(str(tmp_path / "point"), "the text-to-image U-Net")


def test_mmdit_by_rectified_flow_trains_on_the_runs_clip_and_draws_prompts(e2e, tmp_path):
    """The other backbone and objective through the same text-to-image pipeline: a tiny MMDiT, trained by rectified
    flow on the e2e run's CLIP, draws each prompt; the text changes the image."""
    workdir, _ = e2e
    config = load_config(TINY + "+mmdit+flow")
    config.clip.workdir = os.path.join(workdir, "clip")
    config.train.update(final_eval=False, sample_every=0)
    state = txt2img.train(config, str(tmp_path / "mmdit"))
    assert int(state.step) == config.train.num_steps
    model = txt2img.Pipeline.load(config, str(tmp_path / "mmdit"))
    assert type(model.task.model).__name__ == "MMDiT" and model.task.process.name == "flow"
    params = model.task.params_for_sampling(state)
    images = txt2img.generate(model, params, ["a red 3 in the top left", "a blue seven in the center"], seed=0,
                              guidance=4.0)
    again = txt2img.generate(model, params, ["a red 3 in the top left", "a red 3 in the top left"], seed=0,
                             guidance=4.0)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], again[0])  # image i depends on (seed, i, prompt, guidance) only
    assert not np.array_equal(images[1], again[1])  # another prompt at the same index: another image


def _other_clip(workdir: str, destination) -> str:
    """A copy of the run's CLIP whose tokenizer lists its vocabulary in another order: it loads, but it is not the
    CLIP the U-Net was trained on."""
    shutil.copytree(os.path.join(workdir, "clip"), destination)
    path = os.path.join(destination, "tokenizer.json")
    data = json.load(open(path))
    data["vocab"][5], data["vocab"][6] = data["vocab"][6], data["vocab"][5]
    json.dump(data, open(path, "w"))
    return str(destination)


def test_the_clip_a_unet_was_trained_on_is_recorded_and_checked(e2e, tmp_path):
    """Issue 27: clip.json records the CLIP (workdir, step, tokenizer and text-tower hashes); sampling another run
    defaults to that CLIP, and another CLIP is refused naming both before anything is loaded or written."""
    workdir, _ = e2e
    recorded = json.load(open(os.path.join(workdir, txt2img.CLIP_FILE)))
    encoder = txt2img.Pipeline.load(load_config(TINY), workdir).encoder
    assert recorded == {"workdir": "clip", **encoder.fingerprint()}
    assert recorded["step"] == load_config(TINY).clip.train.num_steps
    point = tmp_path / "point"
    _other_clip(workdir, point / "clip")  # before issue 27, sampling from `point` took this CLIP
    config = load_config(TINY)
    config.sample.checkpoint_workdir = workdir
    assert txt2img.load_for_sampling(config, str(point))[0].clip_workdir == os.path.join(workdir, "clip")
    config.clip.workdir = str(point / "clip")
    before = sorted(os.listdir(workdir))
    with pytest.raises(CheckpointMismatchError, match=r"trained on the CLIP of 'clip' at step \d+ .*tokenizer or text"):
        txt2img.load_for_sampling(config, str(point))
    with pytest.raises(CheckpointMismatchError) as excinfo:  # the whole sample mode too
        _run(point, "sample", sample__checkpoint_workdir=workdir, clip__workdir=str(point / "clip"),
             sample__prompts="a red 3 in the top left")
    assert "tokenizer or text tower differ" in mains.user_error(excinfo)
    assert sorted(os.listdir(workdir)) == before and not os.path.exists(point / "samples")


def test_a_clip_outside_the_run_is_never_trained_further(e2e, tmp_path):
    workdir, _ = e2e
    shared = str(tmp_path / "shared_clip")
    shutil.copytree(os.path.join(workdir, "clip"), shared)
    listing = sorted(os.listdir(os.path.join(shared, "checkpoints")))
    steps = load_config(TINY).clip.train.num_steps
    with pytest.raises(ConfigError) as excinfo:
        _run(tmp_path / "run", clip__workdir=shared, clip__train__num_steps=steps + 10)
    out = mains.user_error(excinfo)
    assert f"config.clip.workdir={shared!r} holds a CLIP at step {steps}" in out
    assert "is not trained further" in out
    assert sorted(os.listdir(os.path.join(shared, "checkpoints"))) == listing
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    # The run's own CLIP, once its U-Net records it, is not trained further either.
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    with pytest.raises(ConfigError) as excinfo:
        _run(copy, clip__train__num_steps=steps + 10)
    assert "the U-Net in" in mains.user_error(excinfo) and "was trained on it (clip.json)" in str(excinfo.value)
    assert sorted(os.listdir(os.path.join(copy, "clip", "checkpoints"))) == listing


def test_api_draws_what_sample_mode_draws_and_uploads_the_weights_once(e2e, tmp_path, monkeypatch):
    """Issue 27: the API's seed defaults to sample.seed, as --mode=sample's; the weights are placed once per load."""
    workdir, _ = e2e
    output = str(tmp_path / "cli.npz")
    prompts = ["a red 3 in the top left", "a blue seven in the center"]
    _run(workdir, "sample", sample__prompts=";".join(prompts), sample__num_per_prompt=2, sample__output=output)
    t2i = api.TextToImage.load(workdir, TINY)
    placed = []
    replicate = DataParallel.replicate
    monkeypatch.setattr(DataParallel, "replicate", lambda self, tree: placed.append(tree) or replicate(self, tree))
    images = t2i(prompts, num_per_prompt=2)
    t2i(prompts[:1])
    with np.load(output) as f:
        np.testing.assert_array_equal(images, f["images"])
    assert all(np.ndim(tree) == 0 for tree in placed), "the U-Net weights were placed on the devices again"


def test_generate_and_the_text_tower_compile_once_per_shape(e2e, monkeypatch):
    """Repeated `generate` calls reuse one compiled sampler per chunk size, and the CLIP encoder pads remainders."""
    workdir, _ = e2e
    traces = []
    sample = samplers.sample

    def counting_sample(*args, **kwargs):  # runs once per trace of a sampler, never per call of a compiled one
        traces.append(kwargs["steps"])
        return sample(*args, **kwargs)

    monkeypatch.setattr(diffusion.samplers, "sample", counting_sample)
    model = txt2img.Pipeline.load(load_config(TINY), workdir)
    params = model.task.params_for_sampling(model.load_state(workdir))
    first = txt2img.generate(model, params, ["a red 3 in the top left"] * 3, seed=0)
    again = txt2img.generate(model, params, ["a red 3 in the top left"] * 3, seed=0, guidance=5.0)
    four = txt2img.generate(model, params, ["a blue 7 in the center"] * 4, seed=0)
    assert first.shape == (3, 32, 32, 3) and four.shape == (4, 32, 32, 3) and not np.array_equal(first, again)
    assert len(traces) == 1, traces  # 3 and 4 prompts share the chunk of 4; guidance is traced, not static
    encoder = model.encoder
    ids, mask = encoder.tokenizer.encode(["a red 3 in the top left"] * 7)
    before = encoder._text._cache_size()
    full = encoder.text(ids, mask)
    for n in (5, 6, 7):  # all in the bucket of 8
        pooled, tokens = encoder.text(ids[:n], mask[:n])
        np.testing.assert_allclose(pooled, full[0][:n], atol=1e-6)
        assert tokens.shape[0] == n
    assert encoder._text._cache_size() - before == 1


def test_loading_without_a_trained_clip_names_it_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no CLIP in {tmp_path / 'run' / 'clip'}"):
        txt2img.Pipeline.load(load_config(TINY), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")
