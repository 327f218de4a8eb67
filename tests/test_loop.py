"""The shared train loop does not stall the device: metrics stay on it until a log step, the next batch is built
while a step runs, and every device-to-host transfer is explicit (it runs under `jax.transfer_guard`)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.parallel import MODES, DataParallel
from diffusion_jax.trainers import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _init_state():
    return {"step": jnp.zeros((), jnp.int32), "w": jnp.ones(3)}


def _fake_step(state, batch):
    step = state["step"] + 1
    return {"step": step, "w": state["w"] * 0.9 + jnp.mean(batch["x"])}, {"loss": 1.0 / step}


@pytest.fixture(scope="module", params=MODES)
def lifted(request):
    """The fake step lifted over 2 devices, once per data-parallel mode: under pmap the metrics keep a device axis."""
    dp = DataParallel(request.param, jax.local_devices()[:2])
    return dp, dp.lift(_fake_step, ("replicated", "sharded"), ("replicated", "replicated"), donate_argnums=(0,))


def test_metrics_are_fetched_only_at_log_and_checkpoint_steps(lifted, tmp_path, monkeypatch):
    dp, step_fn = lifted
    events = []
    fetch = loop.fetch_metrics

    def counting_fetch(window):
        events.append(("fetch", len(window)))
        return fetch(window)

    def get_batch(step):
        events.append(("batch", step))
        return {"x": np.full((2, 1), step, np.float32)}

    def train_step(state, batch):
        events.append(("step",))
        return step_fn(state, batch)

    monkeypatch.setattr(loop, "fetch_metrics", counting_fetch)
    # Any implicit device-to-host copy (np.asarray of a device array) inside the loop raises under this guard.
    with jax.transfer_guard_device_to_host("disallow"):
        state = loop.train_loop(workdir=str(tmp_path), dp=dp, init_state=_init_state, train_step=train_step,
                                get_batch=get_batch, num_steps=12, log_every=4, checkpoint_every=6, progress=False)
    assert int(state["step"]) == 12
    # One fetch per log or checkpoint step (4, 6, 8, 12), each of the steps since the previous fetch.
    assert [e[1] for e in events if e[0] == "fetch"] == [4, 2, 2, 4]
    # Prefetch: batch s+1 is asked for right after step s is dispatched, before that step's metrics are fetched.
    order = [e for e in events if e[0] != "fetch"]
    assert order[:3] == [("batch", 0), ("step",), ("batch", 1)]
    assert [e for e in events if e[0] == "batch"] == [("batch", s) for s in range(12)]  # no batch built twice
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [4, 8, 12]
    # Each row is the mean over its window of the fake step's loss 1 / step.
    np.testing.assert_allclose([r["loss"] for r in rows], [np.mean(1 / np.arange(a, a + 4)) for a in (1, 5, 9)],
                               rtol=1e-6)
    with Checkpointer(os.path.join(tmp_path, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [6, 12]


def test_resumed_run_writes_each_step_of_metrics_once(lifted, tmp_path):
    """Rows logged after the last checkpoint, before a kill, are dropped when their steps run again."""
    dp, step_fn = lifted
    kwargs = dict(workdir=str(tmp_path), dp=dp, init_state=_init_state, train_step=step_fn, log_every=4,
                  checkpoint_every=6, progress=False, get_batch=lambda step: {"x": np.full((2, 1), step, np.float32)})
    loop.train_loop(num_steps=12, **kwargs)
    path = os.path.join(tmp_path, "metrics.jsonl")
    uninterrupted = open(path).read()
    shutil.rmtree(os.path.join(tmp_path, "checkpoints", "12"))  # as if killed after step 8's log, before 12
    with open(path, "w") as f:
        f.write("".join(uninterrupted.splitlines(keepends=True)[:2]))
    loop.train_loop(num_steps=12, **kwargs)  # resumes from step 6: step 8 is logged again
    rows, before = ([json.loads(line) for line in text.splitlines()] for text in (open(path).read(), uninterrupted))
    assert [r["step"] for r in rows] == [r["step"] for r in before] == [4, 8, 12]
    # Step 8's row now averages steps 7-8 (the window starts at the resume); the others are the same numbers.
    assert [rows[i]["loss"] for i in (0, 2)] == [before[i]["loss"] for i in (0, 2)]


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_loss_inside_a_log_window_names_its_step_and_is_never_saved(tmp_path, mode):
    dp = DataParallel(mode, jax.local_devices()[:1])

    def nan_at_9(state, batch):
        step = state["step"] + 1
        return {"step": step, "w": state["w"]}, {"loss": jnp.where(step == 9, jnp.nan, 1.0)}

    step_fn = dp.lift(nan_at_9, ("replicated", "sharded"), ("replicated", "replicated"))
    with pytest.raises(FloatingPointError, match=r"at training step 9 .* \(step 5\) is kept"):
        loop.train_loop(workdir=str(tmp_path), dp=dp, init_state=_init_state, train_step=step_fn,
                        get_batch=lambda s: {"x": np.zeros((1, 1), np.float32)}, num_steps=30, log_every=10,
                        checkpoint_every=5, progress=False)
    with Checkpointer(os.path.join(tmp_path, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [5]  # step 10's state followed the NaN: not written


def test_the_package_never_imports_torch_or_the_parity_libraries():
    """torch, diffusers and transformers are a test-only extra: importing every module of the package (in a fresh
    process, as a training run starts) loads none of them, not even indirectly; tensorboardX imported torch whenever
    it was installed, at about 2 s a process (trainers/loop.py:_import_summary_writer)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed here (the parity extra): nothing could import it")
    code = ("import importlib, pkgutil, sys, diffusion_jax\n"
            "for m in pkgutil.walk_packages(diffusion_jax.__path__, 'diffusion_jax.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'open_clip'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out  # before the fix: ['torch']
