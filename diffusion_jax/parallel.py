"""Data parallelism: one per-device function, lifted over all local devices with shard_map or pmap.

A per-device function is written once, for the examples that one device holds, and talks to the other devices only
through collectives over the axis named `AXIS` (`lax.pmean`, `lax.all_gather`, `lax.axis_index`). `DataParallel`
lifts it in one of two equivalent ways:

- `'shard_map'`: `jax.jit(jax.shard_map(fn))` over a 1-D device mesh. Replicated values are ordinary global arrays;
  a batch is one global array split along its leading axis. JAX's recommended way since pmap's maintenance mode.
- `'pmap'`: `jax.pmap(fn, axis_name=AXIS)`. Replicated values carry a leading device axis, a batch is reshaped to
  [devices, per-device batch, ...]. Kept because the user's existing launches use it.

Both lifts give the function pmap's semantics: values are per-device unless a collective says otherwise. shard_map
runs with `check_vma=False` for that reason: with the check on, JAX treats replicated parameters as "invariant" and
transposes their implicit broadcast into a psum, so `jax.grad` would already return the SUM of the per-device
gradients and a `lax.pmean` on top would leave it 8x too large on 8 devices (Adam's scale invariance hides this;
tests/test_parallel.py catches it with SGD).

The loops never see the difference: they go through `replicate`, `unreplicate`, `shard_batch` and `lift`.
"""
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "batch"
MODES = ("shard_map", "pmap")


class DataParallel:
    """Places arrays on the local devices and lifts per-device functions, for one `mode` of `MODES`."""

    def __init__(self, mode: str = "shard_map", devices: Sequence[jax.Device] | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown data-parallel mode {mode!r} (config key train.parallel); choose one of {MODES}")
        self.mode = mode
        self.devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
        self._replicated = NamedSharding(self.mesh, P())
        self._split = NamedSharding(self.mesh, P(AXIS))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def replicate(self, tree: Any) -> Any:
        """Copies a host pytree to every device, in the layout `lift`ed functions expect."""
        if self.mode == "pmap":
            stack = lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x))  # noqa: E731
            return jax.device_put(jax.tree.map(stack, tree), self._split)
        return jax.device_put(tree, self._replicated)

    def unreplicate(self, tree: Any) -> Any:
        """Brings a replicated pytree back to the host as NumPy arrays (one copy)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x[0]), tree)
        return jax.tree.map(np.asarray, tree)

    def shard_batch(self, batch: Any) -> Any:
        """Splits a host batch (leading axis = global batch) across the devices."""
        def put(x):
            x = np.asarray(x)
            if x.shape[0] % self.num_devices:
                raise ValueError(
                    f"global batch of {x.shape[0]} examples cannot be split evenly over {self.num_devices} devices; "
                    "choose a batch size divisible by the device count")
            if self.mode == "pmap":
                x = x.reshape((self.num_devices, x.shape[0] // self.num_devices) + x.shape[1:])
            return jax.device_put(x, self._split)
        return jax.tree.map(put, batch)

    def gather_batch(self, tree: Any) -> Any:
        """Inverse of `shard_batch` for outputs: host NumPy arrays with the global batch axis first."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)
        return jax.tree.map(np.asarray, tree)

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
