"""End to end: the absl main on the tiny preset, resume after SIGKILL, checkpoint fallback and mismatch, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffusion_jax import api, distributed
from diffusion_jax.checkpoint import Checkpointer, CheckpointMismatchError
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.parallel import DataParallel
from diffusion_jax.trainers import digits, loop
from tests import mains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/digits.py:tiny")


def _main(workdir, *flags, mode="train"):
    cmd = [sys.executable, "-m", "diffusion_jax.main", f"--config={TINY}", f"--workdir={workdir}", f"--mode={mode}",
           *flags]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _restore(workdir):
    task = digits.make_task(load_config(TINY))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        return ckpt.restore(jax.eval_shape(task.init_state))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One uninterrupted tiny run through the absl main: train 20 steps, sample, evaluate."""
    workdir = str(tmp_path_factory.mktemp("e2e"))
    code, out = _finish(_main(workdir))
    assert code == 0, out
    return workdir, out


def test_main_end_to_end_outputs(e2e):
    workdir, out = e2e
    with np.load(os.path.join(workdir, "samples", "samples.npz")) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (20, 32, 32, 1)
        np.testing.assert_array_equal(f["labels"], np.repeat(np.arange(10), 2))
    assert os.path.getsize(os.path.join(workdir, "samples", "samples.png")) > 0
    assert os.path.exists(os.path.join(workdir, "samples", "step_000010.png"))  # periodic grid during training
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and all(np.isfinite(r["loss"]) for r in rows)
    # Phase 1's promise: the noise-prediction loss falls as the model trains (even in 20 tiny steps).
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tensorboard")))
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert 0.0 <= result["accuracy"] <= 1.0 and set(result["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert result["fd"] > 0 and result["fd_floor"] > 0
    assert "eval: accuracy" in out


def test_api_draws_the_digits_sample_mode_drew(e2e, monkeypatch):
    """Issue 27: a digits API, whose seed defaults to sample.seed: it reproduces the run's samples.npz exactly, and
    places the weights on the devices once per load, not once per call."""
    workdir, _ = e2e
    model = api.Digits.load(workdir, TINY)
    placed = []
    replicate = DataParallel.replicate
    monkeypatch.setattr(DataParallel, "replicate", lambda self, tree: placed.append(tree) or replicate(self, tree))
    images = model(list(range(10)), num_per_label=2)
    with np.load(os.path.join(workdir, "samples", "samples.npz")) as f:
        np.testing.assert_array_equal(images, f["images"])
    assert model([3], seed=5).shape == (1, 32, 32, 1)
    assert all(np.ndim(tree) == 0 for tree in placed), "the weights were placed on the devices again"
    for bad in ([10], [[1, 2]], ["3"]):
        with pytest.raises(ValueError, match="labels must be digits 0-9"):
            model(bad)


def test_sample_mode_options_and_rerun_keeps_previous_result(e2e, tmp_path):
    workdir, _ = e2e
    output = str(tmp_path / "mine.npz")
    flags = dict(sample__output=output, sample__labels="3,9", sample__num_per_class=3, sample__sampler="ddpm",
                 sample__steps=4, sample__guidance=1.5)
    mains.run(TINY, workdir, "sample", **flags)  # the command line's own test: test_main_end_to_end_outputs
    with np.load(output) as f:
        assert f["images"].shape == (6, 32, 32, 1)
        np.testing.assert_array_equal(f["labels"], [3, 3, 3, 9, 9, 9])
        first = f["images"].copy()
    mains.run(TINY, workdir, "sample", **flags)
    kept = [n for n in os.listdir(tmp_path) if n.startswith("mine-") and n.endswith(".npz")]
    assert len(kept) == 1  # the earlier result was moved aside, not overwritten
    with np.load(output) as f:
        np.testing.assert_array_equal(f["images"], first)  # same seed, same images


def test_resume_after_sigkill_equals_uninterrupted_run(e2e, tmp_path):
    workdir = str(tmp_path / "killed")
    proc = _main(workdir, "--config.train.final_sample=False")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while not os.path.isdir(os.path.join(ckpt_dir, "10")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # while the step-10 sample grid is compiling: before step 20
    proc.wait()
    assert not os.path.isdir(os.path.join(ckpt_dir, "20"))
    code, out = _finish(_main(workdir, "--config.train.final_sample=False"))
    assert code == 0, out
    step, resumed = _restore(workdir)
    ref_step, reference = _restore(e2e[0])
    assert step == ref_step == 20
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    rows = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows[-2:] == [15, 20]


def test_damaged_latest_checkpoint_falls_back_and_is_kept(e2e, tmp_path):
    workdir = str(tmp_path / "damaged")
    shutil.copytree(e2e[0], workdir)
    step20 = os.path.join(workdir, "checkpoints", "20")
    os.remove(os.path.join(step20, "default", "manifest.ocdbt"))
    step, _ = _restore(workdir)
    assert step == 10
    assert os.path.isdir(step20)


def test_mismatched_checkpoint_is_refused_and_nothing_written(e2e, tmp_path):
    workdir = str(tmp_path / "mismatch")
    shutil.copytree(e2e[0], workdir)
    before = sorted(os.walk(workdir))
    config = load_config(TINY)
    config.model.channels = (16, 64)
    with pytest.raises(CheckpointMismatchError, match="checkpoint .* vs config"):
        digits.train(config, workdir)
    assert sorted(os.walk(workdir)) == before


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    dp = DataParallel("shard_map", jax.local_devices()[:1])

    def init_state():
        return {"step": jax.numpy.zeros((), jax.numpy.int32), "w": jax.numpy.ones(3)}

    def fake_step(state, batch):  # the loss becomes NaN at step 7
        step = state["step"] + 1
        loss = jax.numpy.where(step == 7, jax.numpy.nan, 1.0 / step)
        return {"step": step, "w": state["w"] * 0.9}, {"loss": loss}

    lifted = dp.lift(fake_step, ("replicated", "sharded"), ("replicated", "replicated"))
    with pytest.raises(FloatingPointError, match=r"step 7 .* \(step 5\) is kept"):
        loop.train_loop(workdir=str(tmp_path), dp=dp, init_state=init_state, train_step=lifted,
                        get_batch=lambda s: {"x": np.zeros((1, 1))}, num_steps=20, log_every=2,
                        checkpoint_every=5, progress=False)
    with Checkpointer(os.path.join(tmp_path, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [5]


def test_bad_config_fails_with_named_key(tmp_path):
    """Through the command line (the flag parser and main's one-line error), then two bad values through `run`, in
    this process: what main runs after parsing (two more subprocesses, each a Python start and the imports, would
    test nothing new)."""
    code, out = _finish(_main(str(tmp_path / "bad"), "--config.train.not_a_key=1", mode="sample"))
    assert code != 0 and "not_a_key" in out, out
    for flags, message in (({"sample__labels": "3,12"}, "label 12"),
                           ({"diffusion__schedule": "quadratic"}, "diffusion.schedule")):
        with pytest.raises(ConfigError, match=message) as excinfo:
            mains.run(TINY, tmp_path / "bad", "sample", **flags)
        mains.user_error(excinfo)
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")


def test_config_validation_in_process():
    config = load_config(TINY)
    config.sample.steps = 500  # more than the 100 training timesteps of the tiny preset
    with pytest.raises(ConfigError, match="sample.steps"):
        digits.validate_config(config)
    config = load_config(TINY)
    config.diffusion.loss_weighting = "snr"
    with pytest.raises(ConfigError, match="diffusion.loss_weighting"):
        digits.validate_config(config)
    for guidance in (float("inf"), float("nan"), -1.0):  # a guidance scale must be a finite number >= 0
        config = load_config(TINY)
        config.sample.guidance = guidance
        with pytest.raises(ConfigError, match="sample.guidance"):
            digits.validate_config(config)
    config = load_config(TINY)
    config.sample.sampler = "dpm_solver"  # not one of ddim | ddpm | dpmpp_2m | unipc
    with pytest.raises(ConfigError, match=r"sample\.sampler.*dpm_solver.*unipc"):
        digits.validate_config(config)
    for steps in (0, 101):  # the sampler's steps: 1 .. the training timesteps
        config = load_config(TINY)
        config.sample.steps = steps
        with pytest.raises(ConfigError, match="sample.steps"):
            digits.validate_config(config)
    with pytest.raises(ConfigError, match="preset|does not exist"):
        load_config(os.path.join(ROOT, "experiments/nope.py"))


def test_tfds_source_through_the_config_on_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    from tests.test_data import _write_prepared_metadata

    _write_prepared_metadata(tmp_path)
    config = load_config(TINY)
    config.data.source = "tfds"
    config.data.tfds_data_dir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        data = digits.train_data(config)
    assert data["image"].shape == (12, 32, 32, 1) and data["image"].dtype == np.float32
    assert data["image"].min() >= -1 and data["image"].max() <= 1 and data["cond"].shape == (12,)


def test_unprepared_tfds_fails_fast_in_main_without_downloading(tmp_path):
    start = time.time()
    code, out = _finish(_main(str(tmp_path / "run"), "--config.data.source=tfds",
                              f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"))
    assert code != 0 and "tfds build mnist" in out, out
    assert time.time() - start < 120
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("cores,batch,want", [(2, 64, 2), (16, 64, 8), (6, 64, 4), (4, 6, 2), (1, 64, 1), (8, 3, 1)])
def test_split_cpu_auto_picks_a_power_of_two_dividing_the_batch(monkeypatch, cores, batch, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert distributed.split_cpu(-1, batch, env) == want
    assert f"--xla_force_host_platform_device_count={want}" in env["XLA_FLAGS"]
    assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/x")  # the user's own flags are kept
    assert ("--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]) == (want > 1)


def test_split_cpu_respects_the_users_choice():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert distributed.split_cpu(-1, 64, env) == 0 and env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    env = {}
    assert distributed.split_cpu(0, 64, env) == 0 and env == {}
    assert distributed.split_cpu(4, 64, env) == 4 and "device_count=4" in env["XLA_FLAGS"]
    with pytest.raises(ValueError, match=r"--cpu_devices=3 does not divide config.train.batch_size=64"):
        distributed.split_cpu(3, 64, {})
