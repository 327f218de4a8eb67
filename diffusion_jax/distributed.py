"""Multi-process (multi-host) start-up: join the processes of one run into one JAX system before any computation.

One process runs per host (a TPU VM of a pod slice, a GPU node); together they see every device of the slice or
cluster as `jax.devices()`, while each feeds and reads only its own `jax.local_devices()`. `maybe_initialize` calls
`jax.distributed.initialize` when the launch asks for it, and does nothing for an ordinary one-process run:

- explicitly: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (flags of `diffusion_jax.main`);
- through the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (the first is JAX's own
  variable; the other two are read here, since JAX has none);
- by auto-detection: `--distributed` alone, on a Cloud TPU pod slice, under Slurm or Open MPI (or Kubernetes with
  the `kubernetes` package), where JAX finds the coordinator, process count and process id itself.

Missing values are left to JAX's auto-detection, so `--coordinator_address` alone works under Slurm as well.

On a CPU, `split_cpu` (`--cpu_devices`) first makes each core a JAX device, so the data-parallel step runs there
exactly as on a pod, one share of the batch per core.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import jax
from absl import logging

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(environ: Mapping[str, str], name: str) -> Optional[int]:
    """An integer environment variable, None when unset or empty; a clear error naming it when not an integer."""
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_launch(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                   process_id: Optional[int] = None, distributed: bool = False,
                   environ: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """The keyword arguments for `jax.distributed.initialize`, or None when this is a one-process launch.

    Arguments win over the environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`. A launch is multi-process when `distributed` is set or any of the three values is given;
    `num_processes=1` with nothing else given is an ordinary single-process run. Values left as None are for JAX to
    auto-detect (TPU pod, Slurm, Open MPI). Raises ValueError naming the bad flag for impossible values.
    """
    environ = os.environ if environ is None else environ
    coordinator_address = coordinator_address or environ.get(ENV_COORDINATOR, "").strip() or None
    if num_processes is None:
        num_processes = _env_int(environ, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(environ, ENV_PROCESS_ID)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes (or {ENV_NUM_PROCESSES}) must be >= 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise ValueError(f"--process_id (or {ENV_PROCESS_ID}) must be >= 0, got {process_id}")
    if process_id is not None and num_processes is not None and process_id >= num_processes:
        raise ValueError(f"--process_id={process_id} must be below --num_processes={num_processes} "
                         f"(process ids run 0..{num_processes - 1})")
    if coordinator_address is not None and ":" not in coordinator_address:
        raise ValueError(f"--coordinator_address (or {ENV_COORDINATOR}) must be HOST:PORT, got {coordinator_address!r}")
    single = num_processes in (None, 1) and coordinator_address is None and process_id in (None, 0)
    if single and not distributed:
        return None
    return {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}


def maybe_initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                     process_id: Optional[int] = None, distributed: bool = False) -> bool:
    """Calls `jax.distributed.initialize` if the launch asks for a multi-process run; returns whether it is one.

    Must run before any JAX computation (also before `jax.devices()`): JAX refuses to join a system once its
    backend is up. Safe to call twice (a second call, e.g. from a notebook, sees the system already initialised).
    See `resolve_launch` for how the flags and the environment are read.
    """
    if jax.distributed.is_initialized():
        return True
    kwargs = resolve_launch(coordinator_address, num_processes, process_id, distributed)
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    logging.info("joined a %d-process JAX system as process %d (%d of %d devices local)", jax.process_count(),
                 jax.process_index(), jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """True on the one process (index 0) that writes logs, metrics, images and other shared files."""
    return jax.process_index() == 0


def primary_decides(value: int) -> int:
    """Process 0's `value` (an int or bool), on every process; `value` itself in a one-process run.

    For decisions with collective consequences made from what a process sees on disk (train a model or reuse it,
    refuse a run): listings of a shared file system may briefly differ between processes, and processes that decided
    differently would wait for each other in different collectives.
    """
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils
    decided = int(multihost_utils.broadcast_one_to_all(np.int64(value)))
    return bool(decided) if isinstance(value, bool) else decided


def split_cpu(num_devices: int, batch_size: int, environ: Optional[dict] = None) -> int:
    """Makes the CPU backend `num_devices` devices (-1: auto, see --cpu_devices) by setting XLA_FLAGS; returns the count
    set (0 when XLA_FLAGS is left alone). Must run before JAX starts its backend.

    On a CPU, one device per core, each running its share of the batch on one thread, is faster than one device whose
    operations are split over the cores: this model's operations are small, so threads mostly wait for each other
    (benchmarks/txt2img_speed.py --cpu_devices=1 compares).
    """
    environ = os.environ if environ is None else environ
    flags_now = environ.get("XLA_FLAGS", "")
    if num_devices == 0 or "xla_force_host_platform_device_count" in flags_now:
        return 0
    if num_devices < 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_devices = 1
        while num_devices * 2 <= min(cores, 8) and batch_size % (num_devices * 2) == 0:
            num_devices *= 2
    if batch_size % num_devices:
        raise ValueError(f"--cpu_devices={num_devices} does not divide config.train.batch_size={batch_size}")
    extra = f" --xla_force_host_platform_device_count={num_devices}"
    if num_devices > 1 and "xla_cpu_multi_thread_eigen" not in flags_now:
        extra += " --xla_cpu_multi_thread_eigen=false"  # one thread per device: the devices are the parallelism
    environ["XLA_FLAGS"] = (flags_now + extra).strip()
    return num_devices
