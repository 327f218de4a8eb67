"""Data parallelism: one per-device function, lifted over all devices (of every process) with shard_map or pmap.

A per-device function is written once, for the examples that one device holds, and talks to the other devices only
through collectives over the axis named `AXIS` (`lax.pmean`, `lax.all_gather`, `lax.axis_index`). `DataParallel`
lifts it in one of two equivalent ways:

- `'shard_map'`: `jax.jit(jax.shard_map(fn))` over a 1-D device mesh. Replicated values are ordinary global arrays;
  a batch is one global array split along its leading axis. JAX's recommended way since pmap's maintenance mode.
- `'pmap'`: `jax.pmap(fn, axis_name=AXIS)`. Replicated values carry a leading device axis, a batch is reshaped to
  [devices, per-device batch, ...]. Kept because the user's existing launches use it (one process only).

Both lifts give the function pmap's semantics: values are per-device unless a collective says otherwise. shard_map
runs with `check_vma=False` for that reason: with the check on, JAX treats replicated parameters as "invariant" and
transposes their implicit broadcast into a psum, so `jax.grad` would already return the SUM of the per-device
gradients and a `lax.pmean` on top would leave it 8x too large on 8 devices (Adam's scale invariance hides this;
tests/test_parallel.py catches it with SGD).

Several processes (multi-host, after `diffusion_jax.distributed.maybe_initialize`): the mesh holds the devices of
every process, ordered by process, so process p owns the p-th contiguous block of the batch axis and
`lax.axis_index(AXIS)` is the device's place in the global batch, as in a one-process run. Every process runs the
same program on the same host values: `replicate` and `shard_batch` take the same host data on every process, and
each process transfers only its own part to its own devices; `unreplicate` and `gather_batch` return the same host
arrays on every process. `shard_local_batch` takes process-local data instead (a reader that loads only its share).

The loops never see the difference: they go through `replicate`, `unreplicate`, `shard_batch` and `lift`.
"""
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion_jax.data import pipeline

AXIS = "batch"
MODES = ("shard_map", "pmap")


class DataParallel:
    """Places arrays on the devices of all processes and lifts per-device functions, for one `mode` of `MODES`."""

    def __init__(self, mode: str = "shard_map", devices: Sequence[jax.Device] | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown data-parallel mode {mode!r} (config key train.parallel); choose one of {MODES}")
        self.mode = mode
        devices = list(devices if devices is not None else jax.devices())
        if not devices:
            raise ValueError("DataParallel needs at least one device, got an empty devices list")
        # Stable sort: each process's devices form one contiguous block of the batch axis, in the given order.
        self.devices = sorted(devices, key=lambda d: d.process_index)
        self.processes = sorted({d.process_index for d in self.devices})
        if jax.process_index() not in self.processes:
            raise ValueError(f"none of the devices given to DataParallel belong to this process "
                             f"(process {jax.process_index()}; devices of processes {self.processes})")
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        per_process = {p: sum(d.process_index == p for d in self.devices) for p in self.processes}
        if len(set(per_process.values())) > 1:
            raise ValueError(f"every process must bring the same number of devices, got {per_process} "
                             "(process: devices)")
        if mode == "pmap" and self.process_count > 1:
            raise ValueError(f"train.parallel='pmap' runs in one process only, but this run has {self.process_count} "
                             "processes; use train.parallel='shard_map' for multi-process (multi-host) training")
        self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
        self._replicated = NamedSharding(self.mesh, P())
        self._split = NamedSharding(self.mesh, P(AXIS))

    @property
    def num_devices(self) -> int:
        """Devices of all processes: the global batch is split into this many equal parts."""
        return len(self.devices)

    @property
    def process_count(self) -> int:
        """Processes whose devices are in the mesh (1 for an ordinary single-host run)."""
        return len(self.processes)

    @property
    def process_position(self) -> int:
        """This process's block of the batch axis: 0 .. process_count - 1 (its `jax.process_index()` normally)."""
        return self.processes.index(jax.process_index())

    def replicate(self, tree: Any) -> Any:
        """Copies a host pytree to every device, in the layout `lift`ed functions expect.

        Multi-process: every process must pass the same values; each one transfers them to its own devices only.
        """
        if self.mode == "pmap":
            stack = lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x))  # noqa: E731
            return jax.device_put(jax.tree.map(stack, tree), self._split)
        if self.process_count == 1:
            return jax.device_put(tree, self._replicated)

        def put(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return jax.device_put(x, self._replicated)  # already global: a reshard, no host round trip
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self._replicated, lambda index: np.asarray(x[index]))
        return jax.tree.map(put, tree)

    def unreplicate(self, tree: Any) -> Any:
        """Brings a replicated pytree back to the host as NumPy arrays (one copy, read from a local device)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), tree)
        return jax.tree.map(_to_host, tree)

    def shard_batch(self, batch: Any) -> Any:
        """Splits a host batch (leading axis = GLOBAL batch) across the devices of all processes.

        Every process passes the same global batch (`pipeline.get_batch` is a pure function of the step); each keeps
        its contiguous share (`pipeline.process_slice`) and transfers only that to its devices.
        """
        leaves = jax.tree.leaves(batch)
        for x in leaves:
            if np.shape(x)[0] % self.num_devices:
                raise ValueError(
                    f"global batch of {np.shape(x)[0]} examples cannot be split evenly over {self.num_devices} "
                    "devices; choose a batch size divisible by the device count")
        if self.process_count > 1:
            flat = pipeline.process_slice({str(i): x for i, x in enumerate(leaves)}, self.process_position,
                                          self.process_count)
            batch = jax.tree.unflatten(jax.tree.structure(batch), [flat[str(i)] for i in range(len(leaves))])
        return self.shard_local_batch(batch)

    def shard_local_batch(self, batch: Any) -> Any:
        """Places this process's share of the batch (leading axis = examples for its own devices) on its devices.

        The global batch is the concatenation of the processes' shares in process order (one process: the batch
        itself). For readers that load only their share; `shard_batch` takes the global batch instead.
        """
        local = len(self.local_devices)

        def put(x):
            x = np.asarray(x)
            if x.shape[0] % local:
                raise ValueError(
                    f"batch of {x.shape[0]} examples on process {jax.process_index()} cannot be split evenly over its "
                    f"{local} devices; choose a batch size divisible by the device count")
            if self.mode == "pmap":
                x = x.reshape((self.num_devices, x.shape[0] // self.num_devices) + x.shape[1:])
            if self.process_count == 1:
                return jax.device_put(x, self._split)
            global_shape = (x.shape[0] * self.process_count,) + x.shape[1:]
            return jax.make_array_from_process_local_data(self._split, x, global_shape)
        return jax.tree.map(put, batch)

    def gather_batch(self, tree: Any) -> Any:
        """Inverse of `shard_batch` for outputs: host NumPy arrays with the global batch axis first (every process)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(jax.device_get(x)).reshape((-1,) + x.shape[2:]), tree)
        return jax.tree.map(_to_host, tree)

    def lift(self, fn: Callable, in_kinds: Sequence[str], out_kinds: Sequence[str] | str,
             donate_argnums: Sequence[int] = ()) -> Callable:
        """Lifts per-device `fn` over all devices.

        `in_kinds`/`out_kinds` say, per argument/output, whether it is `'replicated'` (same on every device: params,
        state, scalars such as a guidance scale) or `'sharded'` (split along its leading batch axis). Outputs marked
        replicated must really be equal across devices (e.g. produced by `lax.pmean`).
        """
        single = isinstance(out_kinds, str)
        out_kinds = (out_kinds,) if single else tuple(out_kinds)
        for kind in (*in_kinds, *out_kinds):
            if kind not in ("replicated", "sharded"):
                raise ValueError(f"unknown kind {kind!r}: use 'replicated' or 'sharded'")
        if self.mode == "pmap":
            body = fn if not single else (lambda *a: (fn(*a),))
            lifted = jax.pmap(body, axis_name=AXIS, devices=self.devices, donate_argnums=tuple(donate_argnums))
        else:
            spec = lambda kind: P() if kind == "replicated" else P(AXIS)  # noqa: E731
            body = fn if not single else (lambda *a: (fn(*a),))
            lifted = jax.jit(
                jax.shard_map(body, mesh=self.mesh, in_specs=tuple(spec(k) for k in in_kinds),
                              out_specs=tuple(spec(k) for k in out_kinds), check_vma=False),
                donate_argnums=tuple(donate_argnums))
        if single:
            return lambda *args: lifted(*args)[0]
        return lifted


def _to_host(x: Any) -> np.ndarray:
    """A NumPy copy of a (possibly multi-process) array: a local replica if replicated, else all-gathered.

    Transfers are explicit (`jax.device_get`), so loops may run under `jax.transfer_guard_device_to_host('disallow')`.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(jax.device_get(x.addressable_data(0)))
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
