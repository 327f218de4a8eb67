"""Tests of diffusion_jax.checkpoint: round trip, rotation, damaged steps, config mismatch, no data loss."""

import functools
import logging
import os
import shutil
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from diffusion_jax.checkpoint import CheckpointDamagedError, Checkpointer, CheckpointMismatchError

# When one tensorstore read of a damaged step fails, orbax 0.12.8 closes its asyncio loop while sibling
# reads are still pending; they later raise "Event loop is closed" / GeneratorExit in a background thread
# or at garbage collection, which pytest reports against whichever test runs then. Harmless noise, ignored
# here and, for the test that happens to run at that collection, suite-wide (setup.cfg). (A gc.collect()
# after every test here cost 0.5 s a test in a worker whose heap earlier files had grown: 21.0 vs 5.5 s.)
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    ema_params: dict
    opt_state: optax.OptState


class Tiny(nn.Module):
    """A Dense layer plus an 8 KiB embedding table: orbax stores values under ~4 KiB inline in its OCDBT
    index and larger ones in separate data files, and the tests must corrupt both kinds."""

    features: int = 4

    @nn.compact
    def __call__(self, tokens, x):
        return nn.Dense(self.features)(x) + nn.Embed(64, 32)(tokens).mean()


@functools.partial(jax.jit, static_argnums=0)
def _build_state(features, key, step):
    params = Tiny(features).init(key, jnp.zeros((1,), jnp.int32), jnp.ones((1, 3)))["params"]
    ema = jax.tree.map(lambda p: 0.5 * p + 1.0, params)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=10, decay_steps=100)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
    opt_state = tx.init(params)
    # One update so that mu/nu/count are not all zeros (a wrong-leaf mixup would then go unnoticed).
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1) * (1.0 + step), params)
    _, opt_state = tx.update(grads, opt_state, params)
    return TrainState(step=step, params=params, ema_params=ema, opt_state=opt_state)


def make_state(features: int = 4, seed: int = 0, step: int = 0) -> TrainState:
    """A small state shaped like the real one: Flax params, EMA params, the project's optax chain.

    Jitted: built op by op, the first state took 5 s of compilation on the 2-core CPU.
    """
    return _build_state(features, jax.random.key(seed), jnp.asarray(step, jnp.int32))


def abstract_of(state):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def assert_states_equal(got, want):
    assert type(got) is type(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def listing(root: Path) -> dict:
    """Every file and folder under root with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def data_files(step_dir: Path) -> list[Path]:
    """The OCDBT files of a finished step, largest first: array chunks and the b-tree index."""
    files = sorted((p for p in (step_dir / "default").rglob("*") if p.is_file() and p.parent.name == "d"),
                   key=lambda p: -p.stat().st_size)
    assert files and files[0].stat().st_size > 4096, f"no large OCDBT data file in {step_dir} (layout changed?)"
    return files


def truncate_data_file(step_dir: Path):
    """A partly written or partly copied file: the largest (array data) file loses its second half."""
    biggest = data_files(step_dir)[0]
    os.truncate(biggest, biggest.stat().st_size // 2)


def delete_data_file(step_dir: Path):
    data_files(step_dir)[0].unlink()


def flip_bytes_in_data_file(step_dir: Path):
    """Bit rot: orbax itself restores such data without error; only the wrapper's checksums notice."""
    biggest = data_files(step_dir)[0]
    data = bytearray(biggest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    biggest.write_bytes(bytes(data))


def truncate_ocdbt_index(step_dir: Path):
    """The merged b-tree root (default/d/*) that maps every array to its bytes, cut to half."""
    (root,) = (step_dir / "default" / "d").glob("*")
    os.truncate(root, root.stat().st_size // 2)


def delete_item_metadata(step_dir: Path):
    (step_dir / "default" / "_METADATA").unlink()


def garble_item_metadata(step_dir: Path):
    (step_dir / "default" / "_METADATA").write_text('{"tree_metadata": {"params.')


def delete_ocdbt_manifest(step_dir: Path):
    (step_dir / "default" / "manifest.ocdbt").unlink()


def garble_ocdbt_manifest(step_dir: Path):
    manifest = step_dir / "default" / "manifest.ocdbt"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    manifest.write_bytes(bytes(data))


def empty_item_metadata(step_dir: Path):
    (step_dir / "default" / "_METADATA").write_text("")


def delete_item_directory(step_dir: Path):
    shutil.rmtree(step_dir / "default")


CORRUPTIONS = [truncate_data_file, delete_data_file, flip_bytes_in_data_file, truncate_ocdbt_index,
               delete_item_metadata, garble_item_metadata, empty_item_metadata, delete_item_directory,
               delete_ocdbt_manifest, garble_ocdbt_manifest]


@pytest.fixture
def ckpt_dir(tmp_path):
    return tmp_path / "checkpoints"


def save_steps(directory, states: dict, max_to_keep=3):
    with Checkpointer(directory, max_to_keep=max_to_keep) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state)


def test_round_trip_preserves_every_leaf_and_the_dataclass(ckpt_dir):
    state = make_state(seed=1, step=7)
    with Checkpointer(ckpt_dir) as ckpt:
        ckpt.save(7, state)
        assert ckpt.all_steps() == [7]
        assert ckpt.latest_step() == 7
        step, restored = ckpt.restore(abstract_of(state))
    assert step == 7
    assert_states_equal(restored, state)
    # A fresh object (a new process) restores it too, also from jax.eval_shape's abstract state and from
    # a host (numpy) state.
    with Checkpointer(ckpt_dir) as ckpt:
        step, restored = ckpt.restore(jax.eval_shape(lambda: make_state(step=7)))
        assert step == 7
        assert_states_equal(jax.tree.map(jnp.asarray, restored), state)
        host = jax.tree.map(np.asarray, make_state(seed=2, step=8))
        ckpt.save(8, host)
        step, restored = ckpt.restore(host)
    assert step == 8
    assert_states_equal(restored, host)


def test_max_to_keep_rotates_old_steps(ckpt_dir):
    state = make_state()
    with Checkpointer(ckpt_dir, max_to_keep=2) as ckpt:
        for step in (10, 20, 30, 40):
            ckpt.save(step, state.replace(step=jnp.asarray(step, jnp.int32)))
        assert ckpt.all_steps() == [30, 40]
        step, restored = ckpt.restore(abstract_of(state))
    assert step == 40 and int(restored.step) == 40
    assert sorted(os.listdir(ckpt_dir)) == ["30", "40"]


def test_restore_on_empty_or_new_directory_returns_none(ckpt_dir):
    with Checkpointer(ckpt_dir) as ckpt:
        assert ckpt_dir.is_dir()
        assert ckpt.all_steps() == []
        assert ckpt.latest_step() is None
        assert ckpt.restore(abstract_of(make_state())) is None


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_damaged_latest_step_falls_back_to_previous(ckpt_dir, caplog, corrupt):
    old, new = make_state(seed=1, step=1), make_state(seed=2, step=2)
    save_steps(ckpt_dir, {1: old, 2: new})
    corrupt(ckpt_dir / "2")
    damaged = listing(ckpt_dir / "2")
    with caplog.at_level(logging.WARNING), Checkpointer(ckpt_dir) as ckpt:
        step, restored = ckpt.restore(abstract_of(old))
        assert ckpt.all_steps() == [1, 2]
    assert step == 1
    assert_states_equal(restored, old)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(ckpt_dir / "2") in w and "damaged" in w for w in warnings), warnings
    assert listing(ckpt_dir / "2") == damaged  # the damaged step is neither deleted nor touched


def test_unreadable_step_metadata_alone_keeps_the_intact_step(ckpt_dir, caplog):
    # <step>/_CHECKPOINT_METADATA holds timestamps and the checksums, not the arrays: orbax restores
    # without it, so the step is used (unverified, with a warning) rather than thrown away.
    old, new = make_state(seed=1, step=1), make_state(seed=2, step=2)
    save_steps(ckpt_dir, {1: old, 2: new})
    (ckpt_dir / "2" / "_CHECKPOINT_METADATA").write_text("{garbled")
    with caplog.at_level(logging.WARNING), Checkpointer(ckpt_dir) as ckpt:
        step, restored = ckpt.restore(abstract_of(old))
    assert step == 2
    assert_states_equal(restored, new)
    assert any("without verifying" in r.getMessage() and str(ckpt_dir / "2") in r.getMessage()
               for r in caplog.records)


def test_interrupted_save_is_ignored_and_kept(ckpt_dir):
    good, half = make_state(seed=1, step=1), make_state(seed=2, step=2)
    save_steps(ckpt_dir, {1: good})
    # What a crash between writing and orbax's final rename leaves: a complete-looking tmp folder.
    save_steps(ckpt_dir.parent / "other", {2: half})
    tmp = ckpt_dir / "2.orbax-checkpoint-tmp"
    shutil.copytree(ckpt_dir.parent / "other" / "2", tmp)
    with Checkpointer(ckpt_dir) as ckpt:
        assert ckpt.all_steps() == [1]
        step, restored = ckpt.restore(abstract_of(good))
        assert step == 1
        assert_states_equal(restored, good)
        assert tmp.is_dir()
        # Saving step 2 for real would make orbax delete the tmp folder: it is moved aside instead.
        newer = make_state(seed=3, step=2)
        ckpt.save(2, newer)
        assert ckpt.all_steps() == [1, 2]
        assert_states_equal(ckpt.restore(abstract_of(good))[1], newer)
    kept = list(ckpt_dir.glob("2.interrupted-*"))
    assert len(kept) == 1 and (kept[0] / "default" / "_METADATA").is_file()


def test_every_step_damaged_raises_naming_directory_and_steps(ckpt_dir, caplog):
    state = make_state()
    save_steps(ckpt_dir, {1: state, 2: state})
    delete_data_file(ckpt_dir / "2")
    garble_item_metadata(ckpt_dir / "1")
    before = listing(ckpt_dir)
    with caplog.at_level(logging.WARNING), Checkpointer(ckpt_dir) as ckpt:
        with pytest.raises(CheckpointDamagedError) as err:
            ckpt.restore(abstract_of(state))
    message = str(err.value)
    assert str(ckpt_dir) in message and "[2, 1]" in message
    assert "JSONDecodeError" in message  # the reason for step 1
    assert listing(ckpt_dir) == before


def test_shape_mismatch_names_leaf_and_shapes_and_changes_nothing(ckpt_dir):
    save_steps(ckpt_dir, {1: make_state(features=4), 2: make_state(features=4)})
    before = listing(ckpt_dir)
    with Checkpointer(ckpt_dir) as ckpt:
        with pytest.raises(CheckpointMismatchError) as err:
            ckpt.restore(abstract_of(make_state(features=8)))
    message = str(err.value)
    assert str(ckpt_dir / "2") in message  # the newest step, no fallback to step 1
    assert "params/Dense_0/kernel: checkpoint (3,4) vs config (3,8)" in message
    assert "params/Dense_0/bias: checkpoint (4,) vs config (8,)" in message
    assert "config probably differs" in message
    assert listing(ckpt_dir) == before


def test_dtype_and_structure_mismatch_are_reported(ckpt_dir):
    state = make_state()
    save_steps(ckpt_dir, {1: state})
    bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if x.dtype == jnp.float32 else x.dtype),
                        state)
    with Checkpointer(ckpt_dir) as ckpt:
        with pytest.raises(CheckpointMismatchError, match="ema_params/Dense_0/bias: checkpoint dtype float32 vs "
                                                          "config dtype bfloat16"):
            ckpt.restore(bf16)
        extra = state.replace(params={**state.params, "Dense_1": {"kernel": jnp.zeros((4, 2))}})
        with pytest.raises(CheckpointMismatchError, match="params/Dense_1/kernel: missing from the checkpoint"):
            ckpt.restore(abstract_of(extra))


def test_save_over_damaged_step_keeps_the_old_one_aside(ckpt_dir, caplog):
    old = make_state(seed=1, step=1)
    save_steps(ckpt_dir, {1: old, 2: make_state(seed=2, step=2)})
    truncate_data_file(ckpt_dir / "2")
    damaged = listing(ckpt_dir / "2")
    newer = make_state(seed=3, step=2)
    with caplog.at_level(logging.WARNING), Checkpointer(ckpt_dir) as ckpt:
        assert ckpt.restore(abstract_of(old))[0] == 1
        ckpt.save(2, newer)  # training reached step 2 again
        step, restored = ckpt.restore(abstract_of(old))
    assert step == 2
    assert_states_equal(restored, newer)
    aside = list(ckpt_dir.glob("2.damaged-*"))
    assert len(aside) == 1 and listing(aside[0]) == damaged
    assert any("moved aside" in r.getMessage() and str(aside[0]) in r.getMessage() for r in caplog.records)


def test_save_over_existing_good_step_keeps_it_aside(ckpt_dir):
    first, second = make_state(seed=1, step=5), make_state(seed=2, step=5)
    with Checkpointer(ckpt_dir) as ckpt:
        ckpt.save(5, first)
        ckpt.save(5, second)
        assert ckpt.all_steps() == [5]
        assert_states_equal(ckpt.restore(abstract_of(first))[1], second)
    (aside,) = ckpt_dir.glob("5.replaced-*")
    with Checkpointer(ckpt_dir.parent / "probe") as probe:  # the kept copy is still a valid checkpoint
        shutil.copytree(aside, ckpt_dir.parent / "probe" / "5")
        assert_states_equal(probe.restore(abstract_of(first))[1], first)


def test_save_below_the_latest_step_is_written_not_skipped(ckpt_dir):
    # orbax's own save() returns False and writes nothing for a step <= its latest step.
    state = make_state()
    with Checkpointer(ckpt_dir) as ckpt:
        ckpt.save(10, state)
        ckpt.save(5, state.replace(step=jnp.asarray(5, jnp.int32)))
        assert ckpt.all_steps() == [5, 10]
    assert (ckpt_dir / "5" / "default" / "_METADATA").is_file()


def test_damaged_newer_step_is_moved_out_of_rotation_on_next_save(ckpt_dir):
    # Step 30 is damaged; training resumes from 20 and next saves 25 (a changed save cadence). Without
    # care, orbax would skip the save (25 < latest 30) and later rotate the damaged step 30 away.
    state = make_state()
    save_steps(ckpt_dir, {10: state, 20: state, 30: state}, max_to_keep=2)
    assert sorted(os.listdir(ckpt_dir)) == ["20", "30"]
    delete_data_file(ckpt_dir / "30")
    with Checkpointer(ckpt_dir, max_to_keep=2) as ckpt:
        assert ckpt.restore(abstract_of(state))[0] == 20
        assert ckpt.latest_step() == 30  # restore itself moves nothing
        ckpt.save(25, state)
        ckpt.save(26, state)
        assert ckpt.all_steps() == [25, 26]
        assert ckpt.latest_step() == 26
    assert len(list(ckpt_dir.glob("30.damaged-*"))) == 1


def test_bad_arguments_are_named(ckpt_dir):
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(ckpt_dir, max_to_keep=0)
    with Checkpointer(ckpt_dir) as ckpt:
        with pytest.raises(ValueError, match="step"):
            ckpt.save(-1, make_state())
        ckpt.save(1, make_state())
        with pytest.raises(TypeError, match="abstract_state leaf 'params/Dense_0/kernel'"):
            ckpt.restore(make_state().replace(params={"Dense_0": {"kernel": object(), "bias": jnp.zeros(4)}}))


def _wrapped(cause: Exception) -> Exception:
    """As orbax re-raises tensorstore's errors: a bare Exception whose cause is the error."""
    error = Exception("Encountered error while reading array index")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("error", [
    OSError(5, "Input/output error"), PermissionError(13, "Permission denied"), TimeoutError("read timed out"),
    TypeError("a bug in the caller"), ValueError("a bug, or a new check in orbax"),
    FileNotFoundError(2, "No such file or directory", "/elsewhere/config.json"),
    _wrapped(ValueError("PERMISSION_DENIED: Error reading local file")),
    _wrapped(ValueError("UNAVAILABLE: the file system is not mounted"))],
    ids=["OSError", "PermissionError", "TimeoutError", "TypeError", "ValueError", "FileNotFoundError",
         "tensorstore-PERMISSION_DENIED", "tensorstore-UNAVAILABLE"])
def test_an_error_that_is_not_damage_raises_instead_of_falling_back(ckpt_dir, monkeypatch, error):
    # A transient file-system error (or a bug) on the newest step must not resume an older step: the next save
    # would then move the newer, possibly good, step aside.
    old, new = make_state(seed=1, step=1), make_state(seed=2, step=2)
    save_steps(ckpt_dir, {1: old, 2: new})
    before = listing(ckpt_dir)

    def failing_restore(self, step, *args, **kwargs):
        raise error

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
    with Checkpointer(ckpt_dir) as ckpt:
        with pytest.raises(type(error)) as raised:
            ckpt.restore(abstract_of(old))
        assert raised.value is error
        assert ckpt._damaged_steps == set()  # nothing is marked to be moved aside by the next save
    assert listing(ckpt_dir) == before


def test_restore_latest_names_the_missing_directory_and_creates_nothing(tmp_path):
    from diffusion_jax.checkpoint import restore_latest
    missing = tmp_path / "run" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in {missing} train first"):
        restore_latest(missing, abstract_of(make_state()), hint="train first")
    assert not (tmp_path / "run").exists()
    save_steps(tmp_path / "ck", {3: make_state(step=3)})
    step, state = restore_latest(tmp_path / "ck", abstract_of(make_state()), hint="")
    assert step == 3 and int(state.step) == 3


def test_restore_of_a_given_step_reads_that_step_only(ckpt_dir):
    """`step` (sample.checkpoint_step: scoring a run's kept checkpoints) restores that step, not the newest; a step
    that is not there is named with the steps that are; a damaged one raises instead of falling back."""
    from diffusion_jax.checkpoint import restore_latest
    states = {1: make_state(seed=1, step=1), 2: make_state(seed=2, step=2), 3: make_state(seed=3, step=3)}
    save_steps(ckpt_dir, states)
    step, restored = restore_latest(ckpt_dir, abstract_of(states[1]), hint="", step=2)
    assert step == 2
    assert_states_equal(restored, states[2])
    with pytest.raises(FileNotFoundError, match=r"no finished checkpoint of step 5 in .* \[1, 2, 3\]\) run it"):
        restore_latest(ckpt_dir, abstract_of(states[1]), hint="run it", step=5)
    truncate_data_file(ckpt_dir / "1")
    with pytest.raises(CheckpointDamagedError, match=r"Tried steps \[1\]"), Checkpointer(ckpt_dir) as ckpt:
        ckpt.restore(abstract_of(states[1]), step=1)
