"""Test session setup: 8 fake CPU devices (as big_vision's tests do), so data-parallel code runs for real.

The suite compiles the same tiny programs many times (in-process and in the absl-main subprocesses it starts), and
on a 2-core CPU compiling is most of its time. So the session shares one persistent XLA compilation cache, in a
fresh temporary folder (nothing is reused across sessions, so a stale cache can never hide a change), inherited by
every subprocess through the environment. Set JAX_COMPILATION_CACHE_DIR yourself to choose the folder, or to ""
to switch the cache off.
"""
import atexit
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += " --xla_force_host_platform_device_count=8"
    # The suite's programs are tiny, so compiling them is most of its time: skip LLVM's optimisation of the generated
    # CPU code (convolutions and matmuls are precompiled library calls either way). Set the flag yourself to override.
    if "xla_backend_optimization_level" not in flags:
        flags += " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = flags.strip()
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffusion_jax_test_xla_cache_")
        atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


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
