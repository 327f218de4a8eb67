"""Multi-process training: 2 processes x 2 CPU devices on 127.0.0.1 train like 1 process x 4 devices.

The processes run tests/multihost_worker.py (the real `train_loop`, shard_map step, checkpoints and sampler) with
gloo CPU collectives. A 1-process run with 4 devices on the same global batch is the reference; it then resumes the
2-process checkpoint, which shows that checkpoints restore on another process count.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from diffusion_jax import distributed
from tests.conftest import _fast_compile_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")
TIMEOUT = int(os.environ.get("MULTIHOST_TIMEOUT", "300"))


def _gloo_missing() -> str:
    """Why gloo CPU collectives cannot run here ('' when they can)."""
    try:
        from jax._src.lib import _jax  # where jax's xla_bridge finds make_gloo_tcp_collectives
    except ImportError:
        return ""
    return "" if hasattr(_jax, "make_gloo_tcp_collectives") else "this jaxlib is built without gloo CPU collectives"


def _env(devices: int) -> dict:
    """The environment of a worker: its own fake CPU device count, CPU only, no proxies for the 127.0.0.1 links.

    The suite's fast-compile XLA flags (conftest.py; LLVM optimisation level 0 alone took compiling the tiny U-Net's
    init from 13 s of CPU to 3.4 s): the test runs 3 steps, so compile time is all that matters. Every worker uses
    the same flags.
    """
    env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower() and not k.startswith("JAX_")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {_fast_compile_flags()}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: str, runs: list, devices: int, *flags: str) -> tuple:
    """Starts a worker writing its output to a temporary file (no pipe that could fill up and block it)."""
    cmd = [sys.executable, WORKER, "--out", out, *[f"--run={r}" for r in runs], *flags]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(devices), stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc, log


def _finish(workers: list) -> list:
    """Waits for all workers; as soon as one fails (or time runs out) kills the rest and fails with every log.

    Without the early kill, a surviving process would wait for its dead peer until JAX's heartbeat timeout.
    """
    deadline = time.time() + TIMEOUT
    try:
        while any(p.poll() is None for p, _ in workers) and time.time() < deadline:
            if any(p.poll() for p, _ in workers):  # a nonzero exit status
                break
            time.sleep(0.2)
    finally:
        for p, _ in workers:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = []
    for _, log in workers:
        log.seek(0)
        outs.append(log.read())
        log.close()
    if any(p.returncode for p, _ in workers):
        logs = [f"rc={p.returncode}\n{o[-6000:]}" for (p, _), o in zip(workers, outs)]
        pytest.fail("worker failed or timed out:\n" + "\n=====\n".join(logs))
    return [json.loads(line[len("WORKER "):]) for o in outs for line in o.splitlines() if line.startswith("WORKER ")]


def _load(path: str) -> dict:
    with np.load(path) as f:
        return dict(f)


def _metric_steps(workdir: str) -> list:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    reason = _gloo_missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("multihost")
    two, one = tmp / "two_processes", tmp / "one_process"
    multi_dir, single_dir = str(tmp / "work_2x2"), str(tmp / "work_1x4")
    two.mkdir(), one.mkdir()
    address = f"127.0.0.1:{_free_port()}"
    multi_dit, single_dit = str(tmp / "dit_2x2"), str(tmp / "dit_1x4")  # the new backbone and objective too
    info2 = _finish([_start(str(two), [f"{multi_dir}:3", f"{multi_dit}:3:tiny+dit+flow"], 2,
                            f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}")
                     for i in range(2)])
    after_two = {"metric_steps": _metric_steps(multi_dir),
                 "event_files": len(os.listdir(os.path.join(multi_dir, "tensorboard")))}
    # The reference: 3 steps in its own workdir; then resume the 2-process checkpoint for a 4th step; then a 4th
    # step of the reference itself.
    info1 = _finish([_start(str(one), [f"{single_dir}:3", f"{multi_dir}:4", f"{single_dir}:4",
                                       f"{single_dit}:3:tiny+dit+flow"], 4)])
    return {"two": str(two), "one": str(one), "info2": info2, "info1": info1, "after_two": after_two,
            "multi_dir": multi_dir}


def _assert_params_close(a: dict, b: dict, **tol) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], err_msg=key, **tol)


def test_two_processes_form_one_system(runs):
    assert sorted(i["process_index"] for i in runs["info2"]) == [0, 1]
    for info in runs["info2"]:
        assert (info["process_count"], info["devices"], info["local_devices"], info["dp_devices"]) == (2, 4, 2, 4)
        assert "shard_map" in info["pmap_error"], info["pmap_error"]  # pmap is refused with a pointer to shard_map
    (info1,) = runs["info1"]
    assert (info1["process_count"], info1["devices"], info1["pmap_error"]) == (1, 4, None)


def test_a_dit_by_rectified_flow_trains_on_two_processes_like_on_one(runs):
    p0 = _load(os.path.join(runs["two"], "run1_process0.npz"))
    p1 = _load(os.path.join(runs["two"], "run1_process1.npz"))
    ref = _load(os.path.join(runs["one"], "run3_process0.npz"))
    assert int(p0["step"]) == int(ref["step"]) == 3 and any("patch_embed" in key for key in p0)
    for key in p0:
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
    _assert_params_close(p0, ref, rtol=1e-4, atol=1e-5)


def test_two_processes_train_like_one_process_on_the_same_global_batch(runs):
    p0 = _load(os.path.join(runs["two"], "run0_process0.npz"))
    p1 = _load(os.path.join(runs["two"], "run0_process1.npz"))
    ref = _load(os.path.join(runs["one"], "run0_process0.npz"))
    assert int(p0["step"]) == int(ref["step"]) == 3
    for key in p0:  # both processes return the same replicated state
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
    _assert_params_close(p0, ref, rtol=1e-4, atol=1e-5)
    # One more step moves the parameters by far more than the tolerance: the equality above is not trivial.
    later = _load(os.path.join(runs["one"], "run2_process0.npz"))
    assert max(float(np.max(np.abs(later[k] - ref[k]))) for k in ref if k.startswith("params")) > 1e-3


def test_only_process_zero_writes_metrics_and_events(runs):
    assert runs["after_two"] == {"metric_steps": [1, 2, 3], "event_files": 1}
    # The 1-process resume appended its one step to the same file.
    assert _metric_steps(runs["multi_dir"]) == [1, 2, 3, 4]


def test_two_process_checkpoint_resumes_in_one_process(runs):
    resumed = _load(os.path.join(runs["one"], "run1_process0.npz"))
    reference = _load(os.path.join(runs["one"], "run2_process0.npz"))
    assert int(resumed["step"]) == int(reference["step"]) == 4
    _assert_params_close(resumed, reference, rtol=1e-4, atol=1e-5)
    assert sorted(os.listdir(os.path.join(runs["multi_dir"], "checkpoints"))) == ["3", "4"]
    # The step the 2 processes wrote carries a checksum per leaf (step, params, EMA, ...) for the restore to verify.
    with open(os.path.join(runs["multi_dir"], "checkpoints", "3", "_CHECKPOINT_METADATA")) as f:
        assert len(json.load(f)["custom_metadata"]["diffusion_jax_leaf_crc32"]) >= len(resumed)


def test_sampling_over_two_processes_equals_one_process(runs):
    a = _load(os.path.join(runs["two"], "samples_process0.npz"))["images"]
    b = _load(os.path.join(runs["two"], "samples_process1.npz"))["images"]
    ref = _load(os.path.join(runs["one"], "samples_process0.npz"))["images"]
    assert a.shape == ref.shape == (6, 32, 32, 1)
    np.testing.assert_array_equal(a, b)  # every process gets the whole gathered batch
    np.testing.assert_allclose(a, ref, atol=1e-3)


def test_resolve_launch_reads_flags_then_environment():
    assert distributed.resolve_launch(environ={}) is None
    assert distributed.resolve_launch(num_processes=1, environ={}) is None
    assert distributed.resolve_launch(distributed=True, environ={}) == {
        "coordinator_address": None, "num_processes": None, "process_id": None}
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve_launch(environ=env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert distributed.resolve_launch("h:1", 2, 1, environ=env) == {
        "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    with pytest.raises(ValueError, match="--process_id=2 must be below --num_processes=2"):
        distributed.resolve_launch("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.resolve_launch("hostonly", 2, 0, environ={})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
        distributed.resolve_launch(environ={"JAX_NUM_PROCESSES": "two"})


def test_main_refuses_an_impossible_process_id(tmp_path):
    cmd = [sys.executable, "-m", "diffusion_jax.main", f"--config={ROOT}/experiments/digits.py:tiny",
           f"--workdir={tmp_path}", "--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--process_id=2 must be below --num_processes=2" in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == []


CHECKPOINT_WORKER = os.path.join(ROOT, "tests", "multihost_checkpoint_worker.py")


@pytest.mark.parametrize("inject", ["damaged", "oserror", "mismatch"])
def test_two_processes_agree_on_the_restored_step(tmp_path, inject):
    """Damage visible to process 1 only: both skip the step; an OSError or a mismatch on process 1 only: both raise
    (before issue 27 a mismatch on one process was raised before the gather, leaving the other waiting in it)."""
    reason = _gloo_missing()
    if reason:
        pytest.skip(reason)
    address = f"127.0.0.1:{_free_port()}"
    workers = []
    for i in range(2):
        cmd = [sys.executable, CHECKPOINT_WORKER, f"--dir={tmp_path / 'ckpt'}", f"--inject={inject}",
               f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"]
        log = tempfile.TemporaryFile("w+")
        workers.append((subprocess.Popen(cmd, cwd=ROOT, env=_env(1), stdout=log, stderr=subprocess.STDOUT,
                                         text=True), log))
    results = _finish(workers)
    assert len(results) == 2, results
    if inject == "damaged":
        assert results == [{"restored": 1, "w": 1.0}] * 2  # process 0 could read step 2, but both use step 1
    elif inject == "oserror":
        assert "OSError" in results[1]["error"] and "injected I/O error" in results[1]["error"], results
        assert "RuntimeError" in results[0]["error"] and "process(es) [1]" in results[0]["error"], results
        assert "not checkpoint damage" in results[0]["error"]
    else:
        assert results[1]["error"] == "CheckpointMismatchError: injected mismatch", results
        assert results[0]["error"].startswith("CheckpointMismatchError: process(es) [1]"), results
        assert "does not fit the config's state" in results[0]["error"]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]  # nothing moved aside or deleted
