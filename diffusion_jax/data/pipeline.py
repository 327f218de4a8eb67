"""Seeded shuffling, batching and sharding of in-memory arrays, with random access by step for exact resume.

The training stream is the concatenation of per-epoch permutations of the N examples; epoch ``e`` uses
``epoch_permutation(N, seed, e)``, i.e. ``np.random.default_rng([seed, e]).permutation(N)``. Batch ``s`` covers
stream positions ``[s * B, (s + 1) * B)``, so a batch may span an epoch boundary and every example appears exactly
once per epoch. The batch for a step is therefore a pure function of ``(seed, step)``: after a kill, training resumes
with ``batches(..., start_step=restored_step)`` and sees the very batches it would have seen without the kill.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray]


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Returns the order of the examples in one epoch: ``np.random.default_rng([seed, epoch]).permutation(N)``.

    Seeding with the pair ``[seed, epoch]`` gives independent epochs without carrying RNG state from one to the next,
    which is what makes any batch computable directly from its step.
    """
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def get_batch(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, step: int) -> Batch:
    """Returns batch number ``step`` of the seeded stream: stream positions ``[step * B, (step + 1) * B)``.

    A pure function of ``(arrays, batch_size, seed, step)``; equal to the ``step``-th batch of `batches`. Costs one
    permutation per epoch the batch touches, so prefer `batches` for sequential reading.
    """
    num_examples = _num_examples(arrays)
    _check_sizes(batch_size, seed, step=step)
    indices = _batch_indices(num_examples, batch_size, step, lambda epoch: epoch_permutation(num_examples, seed, epoch))
    return _gather(arrays, indices)


def batches(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, start_step: int = 0) -> Iterator[Batch]:
    """Yields batches ``start_step, start_step + 1, ...`` of the seeded stream, forever.

    Resuming with ``start_step=k`` yields exactly what continuing an iterator started earlier would have yielded
    from step ``k`` on. Each epoch's permutation is computed once and dropped when the stream has moved past it.
    Arguments are checked at the call, not at the first ``next()``.
    """
    num_examples = _num_examples(arrays)
    _check_sizes(batch_size, seed, step=start_step)
    host_arrays = {key: np.asarray(value) for key, value in arrays.items()}  # Converted once, not per batch.
    return _batch_stream(host_arrays, num_examples, batch_size, seed, start_step)


def _batch_stream(arrays: Mapping[str, np.ndarray], num_examples: int, batch_size: int, seed: int,
                  step: int) -> Iterator[Batch]:
    """The generator behind `batches`, with a small cache of the epoch permutations in use."""
    permutations: dict[int, np.ndarray] = {}

    def permutation(epoch: int) -> np.ndarray:
        if epoch not in permutations:
            permutations[epoch] = epoch_permutation(num_examples, seed, epoch)
        return permutations[epoch]

    while True:
        yield _gather(arrays, _batch_indices(num_examples, batch_size, step, permutation))
        step += 1
        first_epoch_needed = step * batch_size // num_examples
        for epoch in [e for e in permutations if e < first_epoch_needed]:
            del permutations[epoch]


def _batch_indices(num_examples: int, batch_size: int, step: int,
                   permutation: Callable[[int], np.ndarray]) -> np.ndarray:
    """Example indices of batch ``step``: stream position p maps to ``permutation(p // N)[p % N]``."""
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):  # One epoch, or two (or more when B > N) at an epoch boundary.
        in_epoch = epochs == epoch
        indices[in_epoch] = permutation(int(epoch))[offsets[in_epoch]]
    return indices


def _gather(arrays: Mapping[str, np.ndarray], indices: np.ndarray) -> Batch:
    return {key: np.asarray(value)[indices] for key, value in arrays.items()}


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
    """Checks that all arrays share one leading length N > 0 and returns N."""
    if not arrays:
        raise ValueError('Expected a non-empty dict of arrays, got no arrays.')
    lengths = {}
    for key, value in arrays.items():
        shape = np.shape(value)
        if not shape:
            raise ValueError(f'Array {key!r} is a scalar; every array needs a leading example axis.')
        lengths[key] = shape[0]
    if len(set(lengths.values())) != 1:
        raise ValueError(f'Arrays must share their leading length (number of examples), got {lengths}.')
    num_examples = next(iter(lengths.values()))
    if num_examples == 0:
        raise ValueError(f'Arrays {sorted(lengths)} hold no examples (leading length 0).')
    return num_examples


def _check_sizes(batch_size: int, seed: int, *, step: int) -> None:
    """Validates the integer arguments with messages that name them."""
    for name, value, low in (('batch_size', batch_size, 1), ('seed', seed, 0), ('step', step, 0)):
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f'{name} must be an integer, got {value!r}.') from None
        if value < low:
            raise ValueError(f'{name} must be >= {low}, got {value}.')


def shard(batch: Mapping[str, np.ndarray], num_devices: int) -> Batch:
    """Reshapes every array's leading axis B to ``[num_devices, B // num_devices, ...]`` for per-device steps.

    Works on NumPy and JAX arrays (``jax.pmap`` maps over the new leading axis; for ``shard_map``/``jit`` keep the
    flat batch). Raises ValueError naming the batch size and device count when B is not divisible.
    """
    _check_count('num_devices', num_devices)
    sharded = {}
    for key, value in batch.items():
        size = _leading_size(key, value)
        if size % num_devices:
            raise ValueError(f'Batch size {size} (array {key!r}) is not divisible by the number of devices '
                             f'{num_devices}; choose a batch size that is a multiple of {num_devices}.')
        sharded[key] = value.reshape(num_devices, size // num_devices, *value.shape[1:])
    return sharded


def process_slice(batch: Mapping[str, np.ndarray], process_index: int, process_count: int) -> Batch:
    """Returns process ``process_index``'s contiguous share ``[i * B/P, (i + 1) * B/P)`` of a global batch.

    For multi-host training: every process computes the same global batch from ``(seed, step)`` and keeps its own
    slice, so the processes together see each example of the global batch exactly once.
    """
    _check_count('process_count', process_count)
    if not 0 <= operator.index(process_index) < process_count:
        raise ValueError(f'process_index must be in [0, {process_count}), got {process_index}.')
    sliced = {}
    for key, value in batch.items():
        size = _leading_size(key, value)
        if size % process_count:
            raise ValueError(f'Global batch size {size} (array {key!r}) is not divisible by the process count '
                             f'{process_count}.')
        per_process = size // process_count
        sliced[key] = value[process_index * per_process:(process_index + 1) * per_process]
    return sliced


def _check_count(name: str, value: int) -> None:
    if operator.index(value) < 1:
        raise ValueError(f'{name} must be >= 1, got {value}.')


def _leading_size(key: str, value: np.ndarray) -> int:
    if not np.shape(value):
        raise ValueError(f'Array {key!r} is a scalar; it has no batch axis to split.')
    return np.shape(value)[0]


def bucket_size(n: int, maximum: int) -> int:
    """The chunk size for `n` items: the next power of two >= n, at most `maximum`.

    Callers pad every chunk to this size, so a jitted function compiles once per bucket (at most log2(maximum) + 1
    shapes) instead of once per remainder size.
    """
    if n < 1 or maximum < 1:
        raise ValueError(f"bucket_size needs n >= 1 and maximum >= 1, got n={n}, maximum={maximum}")
    return min(1 << (n - 1).bit_length(), maximum)


def padded_chunks(arrays, chunk: int) -> Iterator:
    """Splits a pytree of [N, ...] arrays into chunks of exactly `chunk` examples, the last one zero-padded.

    Yields `(chunk_tree, count)`: `count` of the chunk's examples are real; the rest are padding to drop.
    """
    import jax  # only the tree utilities: this module is otherwise NumPy-only
    leaves = jax.tree.leaves(arrays)
    n = len(leaves[0])
    for start in range(0, n, chunk):
        count = min(chunk, n - start)

        def take(a, start=start, count=count):
            a = np.asarray(a)[start:start + count]
            return np.concatenate([a, np.zeros((chunk - count,) + a.shape[1:], a.dtype)]) if count < chunk else a
        yield jax.tree.map(take, arrays), count
