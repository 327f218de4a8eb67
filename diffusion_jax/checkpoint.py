"""Checkpoints of the train state: a thin, careful wrapper around orbax's CheckpointManager.

Layout (orbax 0.12, one item per step)::

    workdir/checkpoints/
      1000/                         finished step (orbax renames it into place only when complete)
      2000/
      3000.orbax-checkpoint-tmp/    an interrupted save: never listed, never restored
      2000.damaged-20261126-101500/ a damaged step moved aside by `save` (kept, never rotated)

What orbax does not do and this module adds:

* Fallback: orbax restores exactly the step it is asked for and raises on a damaged one (often a
  misleading "pytree structure" or tensorstore error). `Checkpointer.restore` tries the steps newest
  to oldest, each with a fresh manager, logs a WARNING for every damaged step it skips, and raises
  `CheckpointDamagedError` if none is usable rather than silently starting from scratch. Damage is
  named, not guessed (`_is_damage`): what this module detects itself (`StepDamage`: no item tree, an
  unreadable tree, a CRC-32 mismatch) and the read errors measured on damaged files (tensorstore's
  DATA_LOSS, OUT_OF_RANGE, FAILED_PRECONDITION and NOT_FOUND). Any other error (a transient OSError, a
  ValueError of a bug or of an orbax change) propagates, so a flaky file system or a bug never
  silently resumes an older step whose next save would move the newer one aside.
* Several processes agree: each process tries the same step, their outcomes (read, damaged, mismatched,
  failed) are gathered to all of them, and a step is used only if every process read it; so all resume
  from the same step, even when damage is visible to one process only (a stale cache, a partly synced
  copy), and all raise together when one process cannot go on.
* Compatibility: orbax silently casts dtypes and reports a shape mismatch without naming the leaf.
  `restore` compares every leaf of the checkpoint's metadata with the abstract state first and raises
  `CheckpointMismatchError` naming the leaves and both shapes. A mismatch is a wrong config, not
  damage: there is no fallback to an older step (all steps of a run share shapes).
* Silent corruption: orbax stores arrays zstd-compressed without a checksum, so flipped bytes in a
  data file restore as wrong numbers without any error (measured). `save` records a CRC-32 of every
  leaf in the step's custom metadata and `restore` verifies it, treating a mismatch as damage.
* No silent data loss: orbax refuses to save a step that exists (`StepAlreadyExistsError`), deletes
  an old `N.orbax-checkpoint-tmp` when it saves step N again, and silently skips a save whose step is
  not above its latest step (`should_save`). `Checkpointer.save` always writes (`force=True`) and
  first moves any existing directory of that step aside under a new sibling name.
"""

from __future__ import annotations

import json
import operator
import os
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from diffusion_jax import distributed

__all__ = ["Checkpointer", "CheckpointDamagedError", "CheckpointMismatchError", "StepDamage", "restore_latest"]

# orbax's suffix for a step that is still being written (atomic rename on finalisation).
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_MAX_LISTED_DIFFS = 5
_MAX_REASON_CHARS = 400
# Key, in orbax's per-step custom metadata (<step>/_CHECKPOINT_METADATA), of the leaves' CRC-32 sums.
_CHECKSUMS_KEY = "diffusion_jax_leaf_crc32"


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree structure, shapes or dtypes differ from the state the config builds."""


class CheckpointDamagedError(RuntimeError):
    """Every finished checkpoint step in a directory is damaged: there is nothing good to resume."""


class StepDamage(Exception):
    """One step's files are damaged in a way this module detects itself: no item tree (`default/_METADATA`
    missing), an unreadable item tree, or array data whose CRC-32 differs from the one saved with it."""


# tensorstore's status codes in the errors orbax 0.12.8 raises for damaged files, measured
# (tests/test_checkpoint.py: truncated, deleted or garbled data files, OCDBT index and manifest):
# OUT_OF_RANGE (a truncated file), FAILED_PRECONDITION (a truncated compressed stream), NOT_FOUND (a missing
# file), DATA_LOSS (a garbled manifest). Other codes (PERMISSION_DENIED, UNAVAILABLE, INVALID_ARGUMENT ...) are not
# damage.
_DAMAGE_CODES = ("DATA_LOSS:", "OUT_OF_RANGE:", "FAILED_PRECONDITION:", "NOT_FOUND:")


class Checkpointer:
    """Saves and restores one train-state pytree per step under `directory` with orbax.

    Garbage collection (max_to_keep) and damaged steps: orbax keeps the `max_to_keep` newest
    *finished* step directories (those named by a bare integer) and deletes older ones after each
    save, whether they are good or damaged; it cannot tell. Consequences and what this class does:

    * `restore` never writes, renames or deletes anything. A damaged step it skips still counts as one
      of the kept steps and is still reported by `latest_step()`.
    * On the next `save`, every step that `restore` found damaged in this process (all newer than the
      step it restored), and any existing directory of the step being saved, is renamed to
      `<step>.damaged-<UTC time>` (`<step>.replaced-<UTC time>` when it was not known to be damaged).
      Such names are no step to orbax, so they are never rotated away, never restored and no longer
      take a max_to_keep slot; they are kept (using disk) until a person deletes them.
    * A leftover `<step>.orbax-checkpoint-tmp` from an interrupted save is ignored by `all_steps` and
      `restore`; orbax would delete it when saving that step again, so `save` renames it to
      `<step>.interrupted-<UTC time>` first. Tmp folders of other steps are left in place.
    * Damaged steps older than the one `restore` used are never opened, so they are not detected and
      orbax rotates them away like any other old step.

    Renaming happens on process 0 only, followed by a barrier when several processes run.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        """Opens (and creates) the checkpoint directory; keeps the `max_to_keep` newest steps."""
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        directory = os.fspath(directory)
        if "://" not in directory:
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        self.max_to_keep = max_to_keep
        self._damaged_steps: set[int] = set()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True,
                # The current spelling of max_to_keep (that option's docstring calls it deprecated).
                preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            ),
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    # ------------------------------------------------------------------ listing
    def all_steps(self) -> list[int]:
        """Finished checkpoint steps on disk, ascending (interrupted `*.orbax-checkpoint-tmp` excluded)."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished step on disk (possibly damaged: `restore` checks), or None if none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> epath.Path:
        """The directory orbax uses for `step`."""
        return self.directory / str(int(step))

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: Any) -> None:
        """Writes `state` as checkpoint `step` and blocks until it is finished on disk.

        Atomic: orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a crash
        never leaves a half-written step that looks finished. Never destroys data silently: an existing
        directory for `step` (and every step `restore` found damaged) is first moved aside with a WARNING
        (see the class docstring). Afterwards orbax deletes steps beyond the `max_to_keep` newest.
        A CRC-32 of every leaf is stored with the step, for `restore` to verify (one pass over host
        copies of the arrays, which orbax makes anyway). `step` may be an int or an integer scalar array.
        """
        try:
            index = operator.index(step)
        except TypeError:
            index = -1
        if isinstance(step, bool) or index < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        step = index
        checksums = _leaf_checksums(state)
        self._move_aside_before_save(step)
        self._manager.reload()
        saved = self._manager.save(
            step, args=ocp.args.StandardSave(state), force=True,
            custom_metadata=None if checksums is None else {_CHECKSUMS_KEY: checksums})
        self._manager.wait_until_finished()
        if not saved:
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")

    def _move_aside_before_save(self, step: int) -> None:
        """Renames what a save of `step` would destroy, and known-damaged steps, to kept sibling names.

        Several processes: process 0 renames, between two barriers, so no process is still reading a directory
        (e.g. restoring) when it moves, and none starts writing before it has moved.
        """
        _barrier(f"diffusion_jax.checkpoint.before_move_aside.{step}")
        if distributed.is_primary():
            for damaged in sorted(self._damaged_steps - {step}):
                if self.step_dir(damaged).exists():
                    self._rename_aside(self.step_dir(damaged), "damaged", "it was found damaged by restore")
            target = self.step_dir(step)
            if target.exists():
                tag = "damaged" if step in self._damaged_steps else "replaced"
                self._rename_aside(target, tag, f"step {step} is being saved again")
            tmp = self.directory / f"{step}{_TMP_SUFFIX}"
            if tmp.exists():
                self._rename_aside(
                    tmp, "interrupted", f"orbax would delete this interrupted save when saving step {step}",
                    base_name=str(step))
        self._damaged_steps.clear()
        _barrier(f"diffusion_jax.checkpoint.move_aside.{step}")

    def _rename_aside(self, path: epath.Path, tag: str, why: str, base_name: str | None = None) -> epath.Path:
        """Renames `path` to a unique `<name>.<tag>-<UTC time>[-k]` sibling and logs a WARNING."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        base = f"{base_name or path.name}.{tag}-{stamp}"
        new, k = path.parent / base, 1
        while new.exists():
            new, k = path.parent / f"{base}-{k}", k + 1
        path.rename(new)
        logging.warning("Checkpoint directory %s moved aside to %s (kept, not deleted) because %s.", path, new, why)
        return new

    # ------------------------------------------------------------------ restore
    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any] | None:
        """Restores the newest good checkpoint (or the one of `step`) into the structure of `abstract_state`.

        `abstract_state` is the state the current config builds, as `jax.ShapeDtypeStruct` leaves (e.g.
        `jax.eval_shape(init_fn)` or `jax.tree.map(ocp.utils.to_shape_dtype_struct, state)`) or as
        concrete arrays. Leaves with a sharding come back as `jax.Array`s on it; leaves without one
        (numpy arrays, `jax.eval_shape` output) come back as numpy arrays.

        Returns `(step, state)`, or None when the directory holds no finished checkpoint. Damaged steps
        (missing or truncated files, unreadable metadata, ...) are skipped newest to oldest with a
        WARNING; each attempt uses a fresh orbax manager because orbax has no fallback. Raises
        `CheckpointMismatchError` (without falling back) if the checkpoint's structure, shapes or dtypes
        differ from `abstract_state`, and `CheckpointDamagedError` if every step is damaged. Any other
        error (`_is_damage` says which are damage) propagates without trying an older step. With several
        processes, a step is used only if every process read it, so all return the same step; an error
        on one process makes every process raise. Nothing on disk is written, renamed or deleted here.
        A given `step` is the only one tried: FileNotFoundError listing the finished steps when it is not one,
        CheckpointDamagedError when it is damaged (no other step is read instead).
        """
        config_specs = _leaf_specs(abstract_state, "abstract_state")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        steps = _agreed_steps(self.all_steps())
        if not steps:
            return None
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(f"no finished checkpoint of step {step} in {self.directory} (finished steps: "
                                        f"{steps})")
            steps = [step]
        self._damaged_steps = set()  # what this scan finds; a step repaired since an earlier scan is kept
        failures = []
        for step in reversed(steps):
            state, error, reason = None, None, ""
            try:
                state = self._restore_step(step, abstract, config_specs)
                outcome = _OK
            except Exception as exc:  # noqa: BLE001 -- sorted right here: damage, mismatch, everything else
                if _is_damage(exc):
                    outcome, reason = _DAMAGED, _short_reason(exc)
                else:  # raised below, after every process has said how its read went (no process is left waiting)
                    outcome, error = (_MISMATCH if isinstance(exc, CheckpointMismatchError) else _ERROR), exc
            outcomes = _gather_outcomes(outcome)
            if error is not None:
                raise error
            for bad, what in ((_MISMATCH, "found that it does not fit the config's state"),
                              (_ERROR, "failed with an error that is not checkpoint damage")):
                if bad in outcomes:
                    kind = CheckpointMismatchError if bad == _MISMATCH else RuntimeError
                    raise kind(
                        f"process(es) {[p for p, o in enumerate(outcomes) if o == bad]} {what} restoring step {step} "
                        f"from {self.directory} (see their logs); nothing was skipped or changed on disk.")
            if _DAMAGED not in outcomes:
                if failures:
                    logging.warning("Restored step %d from %s after skipping damaged steps %s.",
                                    step, self.directory, [s for s, _ in failures])
                return step, state
            if not reason:
                reason = f"damaged as read by process(es) {[p for p, o in enumerate(outcomes) if o == _DAMAGED]}"
            failures.append((step, reason))
            self._damaged_steps.add(step)
            logging.warning("Checkpoint step directory %s is damaged and is skipped (left in place): %s",
                            self.step_dir(step), reason)
        tried = "; ".join(f"step {s} ({self.step_dir(s)}): {r}" for s, r in failures)
        raise CheckpointDamagedError(
            f"No usable checkpoint in {self.directory}: every finished step is damaged. Tried steps "
            f"{[s for s, _ in failures]} (newest first): {tried}. Nothing was deleted. Repair or move these "
            "directories, or use a new workdir; training was not started from scratch because it would "
            "later save over these steps.")

    def _restore_step(self, step: int, abstract: Any, config_specs: dict[str, tuple]) -> Any:
        """Checks one step's metadata against the config, then restores it with a fresh manager."""
        manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(create=False, lightweight_initialize=True),
            item_handlers=ocp.StandardCheckpointHandler(),
        )
        try:
            if not (self.step_dir(step) / "default" / "_METADATA").exists():
                raise StepDamage(f"no item tree (default/_METADATA) in {self.step_dir(step)}")
            try:
                metadata = manager.item_metadata(step)
            except json.JSONDecodeError as exc:
                raise StepDamage(f"unreadable item tree (default/_METADATA) in {self.step_dir(step)}: {exc}") from exc
            tree = getattr(metadata, "tree", None)
            if tree is None:
                raise StepDamage(f"no readable item tree (default/_METADATA) in {self.step_dir(step)}")
            self._check_compatible(step, _leaf_specs(tree, "checkpoint"), config_specs)
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
            expected = (manager.metadata(step).custom_metadata or {}).get(_CHECKSUMS_KEY)
        finally:
            manager.close()
        if jax.tree.structure(state) != jax.tree.structure(abstract):
            raise CheckpointMismatchError(
                f"Checkpoint {self.step_dir(step)} restored into a different tree structure than the config "
                f"state: {jax.tree.structure(state)} vs {jax.tree.structure(abstract)}.")
        self._check_compatible(step, _leaf_specs(state, "restored state"), config_specs)
        self._verify_checksums(step, state, expected)
        return state

    def _verify_checksums(self, step: int, state: Any, expected: dict[str, int] | None) -> None:
        """Raises StepDamage if a restored leaf's CRC-32 differs from the saved one."""
        if not expected:
            logging.warning("Checkpoint %s has no leaf checksums (written elsewhere, or its _CHECKPOINT_METADATA "
                            "is unreadable): restored without verifying the array data.", self.step_dir(step))
            return
        actual = _leaf_checksums(state)
        if actual is None:
            return
        bad = [path for path, crc in actual.items() if expected.get(path) != crc]
        if bad:
            raise StepDamage(f"CRC-32 of the restored data differs from the one saved for {len(bad)} leaves "
                             f"(silently corrupted data files): {', '.join(bad[:_MAX_LISTED_DIFFS])}")

    def _check_compatible(self, step: int, ckpt: dict[str, tuple], config: dict[str, tuple]) -> None:
        """Raises CheckpointMismatchError listing leaves whose presence, shape or dtype differ."""
        diffs = []
        # In the config's leaf order (step, params, ema_params, ...), then leaves only the checkpoint has.
        for path in list(config) + [p for p in ckpt if p not in config]:
            if path not in config:
                diffs.append(f"{path}: only in the checkpoint {_fmt_spec(ckpt[path])}")
            elif path not in ckpt:
                diffs.append(f"{path}: missing from the checkpoint, config {_fmt_spec(config[path])}")
            elif ckpt[path] != config[path]:
                diffs.append(f"{path}: " + _fmt_diff(ckpt[path], config[path]))
        if diffs:
            more = f" (and {len(diffs) - _MAX_LISTED_DIFFS} more)" if len(diffs) > _MAX_LISTED_DIFFS else ""
            raise CheckpointMismatchError(
                f"Checkpoint {self.step_dir(step)} does not fit the state built by the config; "
                f"{len(diffs)} leaves differ: " + "; ".join(diffs[:_MAX_LISTED_DIFFS]) + more +
                ". The config probably differs from the run that wrote this checkpoint: use a new workdir "
                "or the matching config. Nothing was changed on disk.")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Waits for outstanding work and releases orbax's threads."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_OK, _DAMAGED, _ERROR, _MISMATCH = 0, 1, 2, 3


def _is_damage(exc: BaseException) -> bool:
    """Whether `exc` is what a damaged step raises: a `StepDamage` (detected here), or a ValueError whose message
    starts with one of tensorstore's damage codes (`_DAMAGE_CODES`), possibly wrapped by orbax in a bare Exception.

    Measured on orbax 0.12.8 for truncated, deleted and bit-flipped data files, a truncated OCDBT index, a deleted
    or garbled manifest and deleted or garbled metadata (tests/test_checkpoint.py). Anything else (PermissionError,
    EIO, a time-out, a TypeError or a plain ValueError from a bug or an orbax change) is not damage: it propagates
    instead of skipping the step.
    """
    while exc is not None:
        if isinstance(exc, StepDamage):
            return True
        if isinstance(exc, ValueError):
            return str(exc).startswith(_DAMAGE_CODES)
        if type(exc) is not Exception:  # orbax re-raises tensorstore's errors as a bare Exception with a cause
            return False
        exc = exc.__cause__
    return False


def _agreed_steps(steps: list[int]) -> list[int]:
    """The step list of process 0, on every process (listings of a shared file system may briefly differ)."""
    if jax.process_count() == 1:
        return steps
    from jax.experimental import multihost_utils
    count = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
    padded = np.full(max(count, 1), -1, np.int64)
    padded[:min(count, len(steps))] = steps[:count]
    return [int(s) for s in multihost_utils.broadcast_one_to_all(padded)[:count]]


def _gather_outcomes(outcome: int) -> list[int]:
    """Every process's outcome (_OK, _DAMAGED, _ERROR) for the step just tried, in process order, on every process."""
    if jax.process_count() == 1:
        return [outcome]
    from jax.experimental import multihost_utils
    return [int(o) for o in np.asarray(multihost_utils.process_allgather(np.int32(outcome))).reshape(-1)]


def _barrier(name: str) -> None:
    """Waits until every process of a multi-process run reaches the barrier `name`; nothing with one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _path_str(path) -> str:
    """'params/Dense_0/kernel' for a jax key path (dict keys, attribute names and indices alike)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _leaf_specs(tree: Any, what: str) -> dict[str, tuple]:
    """Maps each leaf path to (shape, dtype); the same paths for a state and its orbax metadata.

    Orbax metadata stores dataclasses and named tuples as dicts and tuples as lists, and empty nodes
    (optax's EmptyState) as None, which jax flattens to nothing; normalised paths therefore match.
    """
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _path_str(path)
        try:
            shape = tuple(int(d) for d in (leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)))
            dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)
        except Exception as exc:
            raise TypeError(f"{what} leaf {name!r} has no shape/dtype: {type(leaf).__name__} ({exc})") from exc
        specs[name] = (shape, dtype)
    return specs


def _leaf_checksums(tree: Any) -> dict[str, int] | None:
    """CRC-32 of each leaf's bytes by leaf path; None when some leaf is not fully on this host."""
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        array = np.ascontiguousarray(np.asarray(leaf))
        sums[_path_str(path)] = zlib.crc32(array.reshape(-1).view(np.uint8))
    return sums


def _fmt_shape(shape: tuple) -> str:
    """'(3,3,1,32)', '(4,)', '()': Python's tuple notation without spaces."""
    return "(" + ",".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _fmt_spec(spec: tuple) -> str:
    """'(3,3,1,32) float32'."""
    return f"{_fmt_shape(spec[0])} {spec[1]}"


def _fmt_diff(ckpt: tuple, config: tuple) -> str:
    """'checkpoint (3,3,1,32) vs config (3,3,1,64)', naming dtypes only where they matter."""
    if ckpt[1] == config[1]:
        return f"checkpoint {_fmt_shape(ckpt[0])} vs config {_fmt_shape(config[0])}"
    if ckpt[0] == config[0]:
        return f"checkpoint dtype {ckpt[1]} vs config dtype {config[1]} (shape {_fmt_shape(ckpt[0])})"
    return f"checkpoint {_fmt_spec(ckpt)} vs config {_fmt_spec(config)}"


def _short_reason(exc: BaseException) -> str:
    """'Type: message' for one-line logs, following the cause chain (orbax wraps tensorstore's errors
    in a bare Exception) and dropping tensorstore's long JSON specs."""
    parts = []
    while exc is not None and len(parts) < 3:
        text = str(exc)
        for marker in (" [tensorstore_spec=", " See full TensorStore details"):
            text = text.split(marker)[0]
        parts.append(f"{type(exc).__name__}: {' '.join(text.split())}")
        exc = exc.__cause__
    reason = " <- caused by ".join(parts)
    return reason if len(reason) <= _MAX_REASON_CHARS else reason[:_MAX_REASON_CHARS] + "..."


def restore_latest(directory: str | os.PathLike, abstract_state: Any, *, hint: str,
                   step: int | None = None) -> tuple[int, Any]:
    """`(step, state)` of the newest good checkpoint in `directory` (or of `step`: `Checkpointer.restore`), for
    sampling, evaluation and frozen models.

    Raises FileNotFoundError naming the directory, followed by `hint` (what to run first, e.g. '(...): train
    first'), when it holds no
    finished checkpoint; a missing directory is not created. Damage and mismatches behave as in `restore`.
    """
    if not epath.Path(os.fspath(directory)).exists():  # checked first: a Checkpointer would create the folder
        raise FileNotFoundError(f"no checkpoint in {os.fspath(directory)} {hint}")
    with Checkpointer(directory) as checkpointer:
        try:
            restored = checkpointer.restore(abstract_state, step)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} {hint}") from None
    if restored is None:
        raise FileNotFoundError(f"no finished checkpoint in {os.fspath(directory)} {hint}")
    return restored
