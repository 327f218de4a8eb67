"""Test session setup: 8 fake CPU devices (as big_vision's tests do), so data-parallel code runs for real.

The suite compiles the same tiny programs many times (in-process and in the absl-main subprocesses it starts), and
on a 2-core CPU compiling is most of its time. So the session shares one persistent XLA compilation cache, in a
fresh temporary folder (nothing is reused across sessions, so a stale cache can never hide a change), inherited by
every subprocess through the environment. Set JAX_COMPILATION_CACHE_DIR yourself to choose the folder, or to ""
to switch the cache off.
"""
import atexit
import gc
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fast_compile_flags(flags: str = "") -> str:
    """XLA flags that cut compile time, which is most of this suite's time (its programs are tiny), minus any that
    `flags` already sets: skip LLVM's optimisation of the generated CPU code (convolutions and matmuls are library
    calls either way), and on jaxlib 0.10 XLA's older elemental emitters, which compiled the tiny text-to-image run's
    programs 10-20 % faster than its fusion emitters (its train step: 9.0-10.6 vs 10.6-12.8 s). XLA aborts on a flag it
    does not know, so that one is limited to the jaxlib line it was measured on."""
    extra = {"xla_backend_optimization_level": "0"}
    if importlib.metadata.version("jaxlib").startswith("0.10."):
        extra["xla_cpu_use_fusion_emitters"] = "false"
    return " ".join(f"--{k}={v}" for k, v in extra.items() if k not in flags)


if "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += " --xla_force_host_platform_device_count=8"
    os.environ["XLA_FLAGS"] = f"{flags} {_fast_compile_flags(flags)}".strip()  # set a flag yourself to override
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffusion_jax_test_xla_cache_")
        atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


# Python's full garbage collections scan every object of a worker, and earlier files grow its heap (jit caches,
# traced modules): 35-42 of them took 21-28 s of each worker's time in a suite (measured with gc.callbacks,
# 2026-12-08). Young garbage is still collected at once (generations 0 and 1); full collections become rare.
gc.set_threshold(100_000, 50, 100)


# The slowest files first, so that neither xdist worker is left running a long file while the other idles at the end
# (longest processing time first; setup.cfg: whole files a worker, --no-loadscope-reorder). xdist's default order,
# most tests first, put few-test heavy files (pmap, multi-host, notebooks) last. Order from the suite's per-file
# durations (2026-12-07); unlisted files follow in name order.
SLOWEST_FIRST = ("test_txt2img.py", "test_stable_diffusion.py", "test_train.py", "test_txt2img_scenes.py",
                 "test_multihost.py", "test_notebooks.py", "test_autoencoder.py", "test_pmap.py", "test_flow.py",
                 "test_sweep.py", "test_clip_train.py", "test_parallel.py", "test_backbones.py", "test_checkpoint.py",
                 "test_pretrained_unet.py", "test_evaluation.py", "test_profiling.py", "test_samplers.py",
                 "test_clip_scenes.py")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering (by fixture scope), which the stable sort keeps
def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # OpenAI's CLIP merge list, never committed here
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # open-clip-torch 3.3.0's copy
BPE_INSTALL = "pip install --no-deps open-clip-torch==3.3.0  (the README's test command does this)"


@pytest.fixture(scope="session")
def bpe_file():
    """The CLIP merge list from the pinned open-clip-torch wheel, located without importing it (it imports torch)
    and checked by sha256."""
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None, f"the CLIP merge list comes from open-clip-torch: {BPE_INSTALL}"
    path = os.path.join(spec.submodule_search_locations[0], BPE_FILE)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == BPE_SHA256, f"{path}: not the pinned merge list; {BPE_INSTALL}"
    return path
