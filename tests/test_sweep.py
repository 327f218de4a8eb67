"""Sweeps: grids and point names, validation before anything runs, skip/retry/failure bookkeeping, results table and
plot (against a stand-in for main.py, milliseconds a point), one real tiny sweep through the CLI and main.py, and
sampling another run's model with sample.checkpoint_workdir."""
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffusion_jax import config as config_lib
from diffusion_jax import sweep as sweep_lib
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.sweep import concat, make_sweep, point_names, product, with_overrides, zip_axes
from diffusion_jax.sweep.points import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/digits.py:tiny")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Stands in for `python -m diffusion_jax.main`: logs each call, fails like main.py on sample.sampler=nope, and writes an
# eval.json whose numbers depend on sample.steps.
FAKE_MAIN = textwrap.dedent("""\
    import json, os, sys
    args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
    workdir = args["workdir"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "calls.txt"), "a") as f:
        f.write(args["mode"] + "\\n")
    print("loading things...")
    if args.get("config.sample.sampler") == "nope":
        print("error: config.sample.sampler='nope' is not one of ('ddim', 'ddpm')", file=sys.stderr)
        sys.exit(2)
    if args["mode"] == "eval":
        steps = int(args.get("config.sample.steps", "5"))
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump({"accuracy": steps / 100, "fd": 10.0 / steps, "samples": "x.npz", "flag": True}, f)
""")


@pytest.fixture
def fake_main(tmp_path):
    path = tmp_path / "fake_main.py"
    path.write_text(FAKE_MAIN)
    return (sys.executable, str(path))


def _calls(root, name):
    return open(os.path.join(root, name, "calls.txt")).read().split()


def _quiet(_):
    pass


# ----------------------------------------------------------------------------------------------- grids and names

def test_product_zip_concat_and_shared_overrides():
    grid = product({"diffusion.schedule": ["linear", "cosine"], "diffusion.prediction": ["eps", "v"]})
    assert grid == [{"diffusion.schedule": "linear", "diffusion.prediction": "eps"},
                    {"diffusion.schedule": "linear", "diffusion.prediction": "v"},
                    {"diffusion.schedule": "cosine", "diffusion.prediction": "eps"},
                    {"diffusion.schedule": "cosine", "diffusion.prediction": "v"}]
    assert product(seed=[0, 1]) == [{"seed": 0}, {"seed": 1}]
    assert zip_axes({"train.batch_size": [32, 64], "train.learning_rate": [1e-3, 2e-3]}) == [
        {"train.batch_size": 32, "train.learning_rate": 1e-3}, {"train.batch_size": 64, "train.learning_rate": 2e-3}]
    assert concat(product(seed=[0]), [{"sample.steps": 3}]) == [{"seed": 0}, {"sample.steps": 3}]
    assert with_overrides(product(seed=[0, 1]), {"train.num_steps": 4}) == [
        {"seed": 0, "train.num_steps": 4}, {"seed": 1, "train.num_steps": 4}]
    with pytest.raises(ConfigError, match=r"equal lengths.*'train.batch_size': 2.*'train.learning_rate': 1"):
        zip_axes({"train.batch_size": [32, 64], "train.learning_rate": [1e-3]})
    with pytest.raises(ConfigError, match="'sample.steps' has no values"):
        product({"sample.steps": []})
    with pytest.raises(ConfigError, match="'diffusion.schedule' must be a list"):
        product({"diffusion.schedule": "cosine"})
    with pytest.raises(ConfigError, match=r"already sets \['seed'\]"):
        with_overrides(product(seed=[0, 1]), {"seed": 3})


def test_point_names_are_readable_deterministic_and_safe():
    grid = with_overrides(product({"diffusion.schedule": ["linear", "cosine"], "diffusion.prediction": ["eps", "v"]}),
                          {"train.num_steps": 600})
    names = point_names(grid)
    assert names == ["diffusion.schedule=linear,diffusion.prediction=eps",
                     "diffusion.schedule=linear,diffusion.prediction=v",
                     "diffusion.schedule=cosine,diffusion.prediction=eps",
                     "diffusion.schedule=cosine,diffusion.prediction=v"]  # the shared train.num_steps is left out
    assert point_names(grid) == names
    assert point_names([{"sample.steps": 10}]) == ["sample.steps=10"]
    assert point_names([{}, {"sample.guidance": 2.5}]) == ["base", "sample.guidance=2.5"]
    odd = point_names([{"model.channels": (16, 32)}, {"model.channels": (16, 64)},
                       {"sample.output": "a/b.npz"}, {"sample.output": "a_b.npz"}])
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=,+-")
               for name in odd)
    assert odd[0].startswith("model.channels=_16,_32_-") and len(set(odd)) == 4  # '/' and '_' stay apart (hash)
    long = point_names([{"sample.labels": "1," * 80}, {"sample.labels": "2," * 80}])
    assert all(len(name) <= 100 for name in long) and long[0] != long[1]
    with pytest.raises(ConfigError, match="points 0 and 2 are identical"):
        point_names([{"seed": 1}, {"seed": 2}, {"seed": 1}])


# ------------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("point,message", [
    ({"train.not_a_key": 1}, r"point 1 .*no key 'train.not_a_key'"),
    ({"nope.steps": 1}, r"point 1 .*no key 'nope.steps' \(no 'nope'\)"),
    ({"train.num_steps": "many"}, r"point 1 .*train.num_steps='many' is a str, but config.train.num_steps is a int"),
    ({"train.num_steps": 2.5}, r"train.num_steps=2.5 is a float"),
    ({"train.final_sample": 1}, r"train.final_sample=1 is a int, but config.train.final_sample is a bool"),
    ({"train.learning_rate": True}, r"train.learning_rate=True is a bool"),
    ({"model": {"channels": (8,)}}, r"'model' is a group"),
    ({"model.channels": (16, float("nan"))}, r"model.channels=\(16, nan\) does not survive the command line"),
])
def test_bad_points_are_refused_naming_key_and_point(point, message):
    with pytest.raises(ConfigError, match=message):
        make_sweep(TINY, [{"sample.steps": 2}, point])


def test_settable_points_and_sweep_level_checks():
    sweep = make_sweep(TINY, [{"train.learning_rate": 1, "model.channels": [8, 16], "train.final_sample": False},
                              {"train.learning_rate": 2e-3, "model.channels": (16, 32), "train.final_sample": False}])
    assert sweep.axes == ["train.learning_rate", "model.channels"] and sweep.fixed == {"train.final_sample": False}
    assert sweep.modes == ("train",) and sweep.metric == "accuracy" and sweep.metrics is None
    with pytest.raises(ConfigError, match="MODES"):
        make_sweep(TINY, [{"seed": 1}], modes=("train", "draw"))
    with pytest.raises(ConfigError, match="no points"):
        make_sweep(TINY, [])
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        make_sweep(os.path.join(ROOT, "experiments/digits.py:huge"), [{"seed": 1}])


def test_commands_carry_overrides_main_parses_back():
    sweep = make_sweep(TINY, [{"model.channels": (8, 16), "train.learning_rate": 1e-3, "train.final_sample": False,
                               "sample.labels": "3,9"}], modes=("train", "eval"))
    train, evaluate = sweep_lib.point_commands(sweep, "/r", sweep.points[0], main=("M",))
    assert train == ["M", f"--config={TINY}", f"--workdir=/r/{sweep.points[0].name}", "--mode=train",
                     "--config.model.channels=(8, 16)", "--config.train.learning_rate=0.001",
                     "--config.train.final_sample=False", "--config.sample.labels=3,9"]
    assert evaluate[3] == "--mode=eval" and evaluate[4:] == train[4:]
    line = sweep_lib.shell_line(sweep, "/r", sweep.points[0])
    parts = line.split(" && ")
    assert parts[0] == f"cd {shlex.quote(os.getcwd())}" and len(parts) == 3
    assert shlex.split(parts[1]) == ["python", "-m", "diffusion_jax.main", *train[1:]]


def test_a_point_may_pick_the_base_files_preset():
    """What one key cannot switch (the backbone: its model group has other keys) a point's 'preset' picks; its other
    overrides are checked against that preset's config and the command loads it."""
    points = [{"preset": "tiny", "train.num_steps": 4}, {"preset": "tiny+dit+flow", "model.width": 32}]
    sweep = make_sweep(TINY, points)
    assert [p.name for p in sweep.points] == ["preset=tiny,train.num_steps=4", "preset=tiny+dit+flow,model.width=32"]
    unet, dit = (sweep_lib.point_commands(sweep, "/r", p, main=("M",))[0] for p in sweep.points)
    digits_file = TINY.partition(":")[0]
    assert unet[1] == f"--config={digits_file}:tiny" and unet[4:] == ["--config.train.num_steps=4"]
    assert dit[1] == f"--config={digits_file}:tiny+dit+flow" and dit[4:] == ["--config.model.width=32"]
    with pytest.raises(ConfigError, match=r"point 1 .*no key 'model.width'"):  # the U-Net's group has no width
        make_sweep(TINY, [{"preset": "tiny+dit"}, {"preset": "tiny", "model.width": 32}])
    with pytest.raises(ConfigError, match=r"point 0 .*unknown preset 'tiny\+vit'"):
        make_sweep(TINY, [{"preset": "tiny+vit"}])


# ------------------------------------------------------------------------------- running (stand-in for main.py)

def test_sweep_runs_records_failures_skips_finished_and_tabulates(tmp_path, fake_main):
    root = str(tmp_path / "sweep")
    sweep = make_sweep(TINY, product({"sample.sampler": ["nope", "ddim"], "sample.steps": [2, 4]}),
                       modes=("sample", "eval"), metrics=("accuracy", "fd"))
    records = sweep_lib.run_sweep(sweep, root, main=fake_main, echo=_quiet)
    names = [point.name for point in sweep.points]
    assert names[0] == "sample.sampler=nope,sample.steps=2"
    assert [r["status"] for r in records] == ["failed", "failed", "ok", "ok"]
    failed = json.load(open(os.path.join(root, names[0], "sweep_done.json")))
    assert failed["status"] == "failed" and failed["failed_mode"] == "sample" and failed["metrics"] == {}
    assert failed["error"] == ("--mode=sample exit code 2: error: config.sample.sampler='nope' is not one of "
                               "('ddim', 'ddpm')")
    assert _calls(root, names[0]) == ["sample"]  # stopped at the failing mode
    done = json.load(open(os.path.join(root, names[3], "sweep_done.json")))
    assert done["status"] == "ok" and done["overrides"] == {"sample.sampler": "ddim", "sample.steps": 4}
    assert done["metrics"] == {"accuracy": 0.04, "fd": 2.5} and set(done["seconds"]) == {"sample", "eval"}
    assert _calls(root, names[3]) == ["sample", "eval"]
    assert "error: config.sample.sampler" in open(os.path.join(root, names[0], "sweep.log")).read()

    # Rerun: finished points are skipped, failed ones retried; an interrupted one (no sweep_done.json) runs again.
    os.remove(os.path.join(root, names[2], "sweep_done.json"))
    echoed = []
    records = sweep_lib.run_sweep(sweep, root, main=fake_main, echo=echoed.append)
    assert _calls(root, names[3]) == ["sample", "eval"]
    assert _calls(root, names[2]) == ["sample", "eval", "sample", "eval"]
    assert _calls(root, names[0]) == ["sample", "sample"]
    assert sum("finished earlier, skipped" in line for line in echoed) == 1
    assert records[2]["metrics"] == {"accuracy": 0.02, "fd": 5.0}

    paths = sweep_lib.write_results(sweep, root, records)
    assert [os.path.basename(p) for p in paths] == ["results.csv", "results.md", "results_accuracy.png"]
    rows = list(csv.DictReader(open(os.path.join(root, "results.csv"))))
    assert [row["point"] for row in rows] == names
    assert [(row["sample.sampler"], row["sample.steps"], row["status"]) for row in rows] == [
        ("nope", "2", "failed"), ("nope", "4", "failed"), ("ddim", "2", "ok"), ("ddim", "4", "ok")]
    assert float(rows[3]["accuracy"]) == 0.04 and float(rows[3]["fd"]) == 2.5 and rows[0]["accuracy"] == ""
    assert float(rows[3]["seconds"]) > 0 and float(rows[3]["seconds_eval"]) > 0
    assert "sample.sampler='nope'" in rows[0]["error"]
    md = open(os.path.join(root, "results.md")).read().splitlines()
    assert "| sample.sampler | sample.steps | status | seconds | seconds_sample | seconds_eval | accuracy | fd | " \
           "error |" in md
    assert any(line.startswith("| ddim | 4 | ok |") and line.endswith("| 0.04 | 2.5 |  |") for line in md), md
    with open(os.path.join(root, "results_accuracy.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert sweep_lib.plot_metric(sweep, records, "not_in_eval_json", str(tmp_path / "x.png")) is None
    assert not os.path.exists(tmp_path / "x.png")


def test_changed_settings_rerun_a_finished_point_and_default_metrics(tmp_path, fake_main):
    root = str(tmp_path / "sweep")
    sweep = make_sweep(TINY, [{"sample.steps": 2}, {"sample.steps": 4}], modes=("eval",))
    sweep_lib.run_sweep(sweep, root, main=fake_main, echo=_quiet)
    changed = make_sweep(TINY, [{"sample.steps": 2, "seed": 3}, {"sample.steps": 4, "seed": 3}], modes=("eval",))
    assert [p.name for p in changed.points] == [p.name for p in sweep.points]  # same workdirs, other settings
    records = sweep_lib.run_sweep(changed, root, main=fake_main, echo=_quiet)
    assert _calls(root, "sample.steps=2") == ["eval", "eval"]
    assert records[0]["metrics"] == {"accuracy": 0.02, "fd": 5.0}  # every number of eval.json (not bools, strings)
    sweep_lib.write_results(changed, root, records)
    assert next(csv.reader(open(os.path.join(root, "results.csv"))))[-3:] == ["accuracy", "fd", "error"]


def test_plots_one_axis_and_many_axes(tmp_path):
    def records_for(sweep):
        return [{"status": "ok", "total_seconds": 1.0, "seconds": {"train": 1.0}, "error": None,
                 "metrics": {"fd": float(i + 1)}} for i in range(len(sweep.points))]

    one = make_sweep(TINY, product({"sample.steps": [2, 50, 10]}), metric="fd")
    assert sweep_lib.plot_metric(one, records_for(one), "fd", str(tmp_path / "one.png"))
    many = make_sweep(TINY, product({"sample.steps": [2, 3], "seed": [0, 1], "sample.guidance": [1.0, 2.0]}))
    assert sweep_lib.write_results(many, str(tmp_path), records_for(many), "fd")[-1] == str(tmp_path / "results_fd.png")
    for name in ("one.png", "results_fd.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG_MAGIC


# ---------------------------------------------------------------------------------- the CLI, through main.py

def _sweep_cli(*flags):
    cmd = [sys.executable, "-m", "diffusion_jax.sweep", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _write_sweep_file(path, points, modes=("train",), metrics=None, base=TINY):
    path.write_text(textwrap.dedent(f"""\
        from diffusion_jax.sweep import product, with_overrides
        MODES = {modes!r}
        METRICS = {metrics!r}
        def get_sweep():
            return {base!r}, {points!r}
    """))
    return str(path)


def test_cli_print_commands_prints_one_line_per_point_and_validates_first(tmp_path):
    sweep_file = _write_sweep_file(tmp_path / "s.py", [{"sample.steps": s, "train.num_steps": 4} for s in (2, 3, 4)],
                                   modes=("train", "eval"))
    bad_file = _write_sweep_file(tmp_path / "bad.py", [{"sample.steps": 2}, {"train.not_a_key": 4}])
    root = str(tmp_path / "root")
    out = _sweep_cli(f"--sweep={sweep_file}", f"--root={root}", "--print_commands")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"cd {shlex.quote(ROOT)} && python -m diffusion_jax.main ")
                                   for line in lines)
    assert lines[1].count(" && ") == 2 and "--mode=train" in lines[1] and "--mode=eval" in lines[1]
    assert f"--workdir={root}/sample.steps=3 " in lines[1] and "--config.train.num_steps=4" in lines[1]
    bad = _sweep_cli(f"--sweep={bad_file}", f"--root={root}")
    assert bad.returncode == 2 and "no key 'train.not_a_key'" in bad.stderr and "point 1" in bad.stderr, bad.stderr
    assert not os.path.exists(root)  # nothing ran, nothing was created


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A workdir holding a checkpoint (step 3) of a random tiny-model state: a model to sample from. Built from the
    state's shapes (jax.eval_shape, under a second) instead of model.init, which takes half a minute on this CPU."""
    import jax

    from diffusion_jax.checkpoint import Checkpointer
    from diffusion_jax.trainers import digits

    rng = np.random.default_rng(0)

    def random_leaf(leaf):
        if np.issubdtype(leaf.dtype, np.floating):
            return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    workdir = str(tmp_path_factory.mktemp("untrained"))
    abstract = jax.eval_shape(digits.make_task(load_config(TINY)).init_state)
    state = jax.tree.map(random_leaf, abstract).replace(step=np.int32(3))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
        checkpointer.save(3, state)
    return workdir


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, untrained_run):
    """A two-point sweep through the CLI and main.py shaped like digits_ddim_steps.py (sampling another run's
    checkpoint; its eval mode is left out, as the classifier it trains would double this test's time): an invalid
    sampler (main.py exits 2), then a point that samples."""
    tmp = tmp_path_factory.mktemp("real")
    points = with_overrides(zip_axes({"sample.sampler": ["nope", "ddim"]}),
                            {"sample.checkpoint_workdir": untrained_run, "sample.steps": 2})
    sweep_file = _write_sweep_file(tmp / "real.py", points, modes=("sample",))
    root = str(tmp / "root")
    first = _sweep_cli(f"--sweep={sweep_file}", f"--root={root}")
    return sweep_file, root, first


def test_real_sweep_through_main_records_failure_and_results(real_sweep, untrained_run):
    _, root, first = real_sweep
    assert first.returncode == 1, first.stdout + first.stderr  # one point failed, the other still ran
    failed = json.load(open(os.path.join(root, "sample.sampler=nope", "sweep_done.json")))
    assert failed["status"] == "failed" and failed["failed_mode"] == "sample", failed
    assert "config.sample.sampler='nope'" in failed["error"], failed
    point = os.path.join(root, "sample.sampler=ddim")
    done = json.load(open(os.path.join(point, "sweep_done.json")))
    assert done["status"] == "ok", open(os.path.join(point, "sweep.log")).read()[-3000:]
    assert set(done["seconds"]) == {"sample"} and done["seconds"]["sample"] > 0
    assert done["metrics"] == {}  # no eval.json: nothing to report
    # sample.checkpoint_workdir: drawn from the other run's checkpoint; nothing trained or checkpointed here.
    info = json.load(open(os.path.join(point, "samples", "samples.json")))
    assert info["train_step"] == 3 and info["checkpoint_workdir"] == os.path.abspath(untrained_run)
    assert info["steps"] == 2 and info["num_images"] == 20
    assert info["images_per_second"] == pytest.approx(20 / info["sampling_seconds"])
    with np.load(os.path.join(point, "samples", "samples.npz")) as f:
        assert f["images"].shape == (20, 32, 32, 1)
    assert not os.path.exists(os.path.join(point, "checkpoints"))
    rows = list(csv.DictReader(open(os.path.join(root, "results.csv"))))
    assert [(r["sample.sampler"], r["status"]) for r in rows] == [("nope", "failed"), ("ddim", "ok")]
    assert float(rows[1]["seconds"]) > 0 and list(rows[1])[-1] == "error"
    assert "Every point also sets `sample.checkpoint_workdir=" in open(os.path.join(root, "results.md")).read()
    assert "no plot: no finished point has the metric 'accuracy'" in first.stdout
    assert not os.path.exists(os.path.join(root, "results_accuracy.png"))
    assert "1 of 2 points failed" in first.stderr


def test_real_sweep_rerun_skips_finished_and_retries_failed(real_sweep):
    sweep_file, root, _ = real_sweep
    logs = {name: os.path.getsize(os.path.join(root, name, "sweep.log"))
            for name in ("sample.sampler=nope", "sample.sampler=ddim")}
    second = _sweep_cli(f"--sweep={sweep_file}", f"--root={root}")
    assert second.returncode == 1
    assert "sample.sampler=ddim: finished earlier, skipped" in second.stdout, second.stdout
    assert "sample.sampler=nope: running --mode=sample, retrying: it failed before" in second.stdout
    assert os.path.getsize(os.path.join(root, "sample.sampler=ddim", "sweep.log")) == logs["sample.sampler=ddim"]
    assert os.path.getsize(os.path.join(root, "sample.sampler=nope", "sweep.log")) > logs["sample.sampler=nope"]
    assert os.path.getmtime(os.path.join(root, "results.csv")) > os.path.getmtime(
        os.path.join(root, "sample.sampler=ddim", "sweep_done.json"))  # the table is rewritten from the records


# ------------------------------------------------------------------------------------ sample.checkpoint_workdir

def test_missing_checkpoint_workdir_is_a_clear_error(tmp_path):
    from diffusion_jax.trainers import digits

    config = load_config(TINY)
    assert config.sample.checkpoint_workdir == ""
    config.sample.checkpoint_workdir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere/checkpoints .*config.sample.checkpoint_workdir="):
        digits.sample(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "nowhere") and not os.path.exists(tmp_path / "run")
    config.sample.checkpoint_workdir = ""
    with pytest.raises(FileNotFoundError, match=r"run/checkpoints .*own --workdir"):
        digits.sample(config, str(tmp_path / "run"))


def test_ddim_sweep_file_without_trained_model_says_to_run_the_readme_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/digits here
    with pytest.raises(FileNotFoundError, match=r"runs/digits/checkpoints.*python -m diffusion_jax.main "
                                                r"--config=experiments/digits.py --workdir=runs/digits"):
        sweep_lib.load_sweep(os.path.join(ROOT, "experiments/sweeps/digits_ddim_steps.py"))


def test_real_sweep_files_are_valid(monkeypatch):
    monkeypatch.chdir(ROOT)  # its base config path is relative, as the README's commands are
    sweep = sweep_lib.load_sweep(os.path.join(ROOT, "experiments/sweeps/digits_schedule_target.py"))
    assert [p.name for p in sweep.points] == ["diffusion.schedule=linear,diffusion.prediction=eps",
                                              "diffusion.schedule=linear,diffusion.prediction=v",
                                              "diffusion.schedule=cosine,diffusion.prediction=eps",
                                              "diffusion.schedule=cosine,diffusion.prediction=v"]
    assert sweep.fixed == {"train.num_steps": 600, "sample.num_per_class": 50} and sweep.modes == ("train",)
    backbones = sweep_lib.load_sweep(os.path.join(ROOT, "experiments/sweeps/backbones_digits.py"))
    scenes = sweep_lib.load_sweep(os.path.join(ROOT, "experiments/sweeps/backbones_scenes.py"))
    for s in (backbones, scenes):  # every backbone x objective (scenes: the most informative first)
        assert sorted(p.overrides["preset"] for p in s.points) == ["dit+flow", "dit+vp", "mmdit+flow", "mmdit+vp",
                                                                   "unet+flow", "unet+vp"]
    assert scenes.points[0].overrides["preset"] == "unet+vp"  # the baseline first
    # One CLIP and autoencoder for all; every checkpoint kept for the wall-time curve.
    assert set(scenes.fixed) == {"clip.workdir", "autoencoder.workdir", "train.max_to_keep"}


def test_curve_sweep_scores_every_kept_checkpoint_of_the_finished_training_points(tmp_path, monkeypatch):
    """Issue 26's wall-time curve: one eval point a kept checkpoint (every 1,000 steps and the last) of each
    comparison point that has finished, reading that run's U-Net at that step; none finished is a named error."""
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
    path = os.path.join(ROOT, "experiments/sweeps/backbones_scenes_curve.py")
    with pytest.raises(FileNotFoundError, match="runs/sweeps/backbones_scenes.*backbones_scenes.py first"):
        sweep_lib.load_sweep(path)
    for name, status in (("preset=unet+vp,train.num_steps=9000", "ok"),
                         ("preset=dit+vp,train.num_steps=8255", "failed"),
                         ("preset=mmdit+flow,train.num_steps=7365", "ok")):
        os.makedirs(tmp_path / "runs/sweeps/backbones_scenes" / name)
        with open(tmp_path / "runs/sweeps/backbones_scenes" / name / "sweep_done.json", "w") as f:
            json.dump({"status": status}, f)
    sweep = sweep_lib.load_sweep(path)
    got = [(p.overrides["preset"], p.overrides["sample.checkpoint_step"]) for p in sweep.points]
    assert got == ([("unet+vp", s) for s in range(1000, 10000, 1000)]
                   + [("mmdit+flow", s) for s in range(1000, 8000, 1000)] + [("mmdit+flow", 7365)])
    assert sweep.points[0].overrides["sample.checkpoint_workdir"] == \
        "runs/sweeps/backbones_scenes/preset=unet+vp,train.num_steps=9000"
    assert sweep.modes == ("eval",) and sweep.fixed["eval.guidance_scales"] == ()


def _load_after_the_comparison_is_trained(path: str, first_preset: str, tmp_path, monkeypatch):
    """Loads a sweep file that samples the scenes comparison's trained points: first without them (a FileNotFoundError
    naming `first_preset`'s workdir and the comparison's command), then beside stand-ins of every trained workdir."""
    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
    path = os.path.join(ROOT, path)
    with pytest.raises(FileNotFoundError, match=rf"preset={re.escape(first_preset)}.*checkpoints.*backbones_scenes.py"):
        sweep_lib.load_sweep(path)
    for preset, steps in load_module(os.path.join(ROOT, "experiments/sweeps/backbones_scenes.py")).STEPS.items():
        os.makedirs(tmp_path / f"runs/sweeps/backbones_scenes/preset={preset},train.num_steps={steps}/checkpoints")
    return sweep_lib.load_sweep(path)


def test_scenes_steps_sweep_samples_every_model_at_50_steps_and_flow_by_heun_2m_and_shift_at_10(tmp_path,
                                                                                                monkeypatch):
    sweep = _load_after_the_comparison_is_trained("experiments/sweeps/steps_scenes.py", "unet+vp", tmp_path,
                                                  monkeypatch)
    got = sorted((p.overrides["preset"], p.overrides["sample.sampler"], p.overrides["sample.steps"])
                 for p in sweep.points)
    models = ("unet", "dit", "mmdit")
    assert got == sorted([(f"{m}+vp", "unipc", 50) for m in models]
                         + [(f"{m}+flow", s, n) for m in models
                            for s, n in (("euler", 50), ("heun", 10), ("dpmpp_2m", 10), ("euler", 10))])
    assert sorted(p.overrides["preset"] for p in sweep.points if p.overrides.get("diffusion.shift") == 3.0) == [
        "dit+flow", "mmdit+flow", "unet+flow"]
    assert sweep.modes == ("eval",) and sweep.fixed["eval.guidance_scales"] == ()


def test_flow_10_step_sweeps_choose_each_models_sampler_on_another_seed_and_measure_it_against_50(tmp_path,
                                                                                                  monkeypatch):
    select = _load_after_the_comparison_is_trained("experiments/sweeps/flow10_scenes_select.py", "mmdit+flow",
                                                   tmp_path, monkeypatch)
    candidates = [("euler", 1.0), ("euler", 2.0), ("euler", 3.0), ("euler", 4.0), ("euler", 6.0), ("heun", 1.0),
                  ("heun", 3.0)]
    assert [(p.overrides["preset"], p.overrides["sample.sampler"], p.overrides["diffusion.shift"])
            for p in select.points] == [(m, s, k) for m in ("mmdit+flow", "dit+flow") for s, k in candidates]
    assert select.modes == ("eval",)
    assert {key: select.fixed[key] for key in ("sample.steps", "sample.seed", "eval.guidance_scales")} == {
        "sample.steps": 10, "sample.seed": 2, "eval.guidance_scales": ()}
    path = os.path.join(ROOT, "experiments/sweeps/flow10_scenes.py")
    with pytest.raises(FileNotFoundError, match=r"selection result .*eval.json.*flow10_scenes_select.py"):
        sweep_lib.load_sweep(path)
    # mmdit: heun at shift 3 best over both splits (not on the seen split alone); dit: euler 2 and 4 tie, the first wins
    both = {("mmdit+flow", "heun", 3.0): (0.60, 0.50), ("mmdit+flow", "euler", 6.0): (0.70, 0.38),
            ("dit+flow", "euler", 2.0): (0.90, 0.88), ("dit+flow", "euler", 4.0): (0.88, 0.90)}
    for point in select.points:
        seen, heldout = both.get((point.overrides["preset"], point.overrides["sample.sampler"],
                                  point.overrides["diffusion.shift"]), (0.5, 0.4))
        os.makedirs(tmp_path / "runs/sweeps/flow10_scenes_select" / point.name)
        with open(tmp_path / "runs/sweeps/flow10_scenes_select" / point.name / "eval.json", "w") as f:
            json.dump({"default_seen_all_accuracy": seen, "default_heldout_all_accuracy": heldout}, f)
    sweep = sweep_lib.load_sweep(path)
    assert [(p.overrides["preset"], p.overrides["sample.sampler"], p.overrides["sample.steps"],
             p.overrides["diffusion.shift"], p.overrides["sample.seed"]) for p in sweep.points] == [
        ("mmdit+flow", "euler", 50, 1.0, 1), ("mmdit+flow", "heun", 10, 3.0, 1),
        ("dit+flow", "euler", 50, 1.0, 1), ("dit+flow", "euler", 10, 2.0, 1)]
    assert sweep.points[0].overrides["sample.checkpoint_workdir"].endswith("preset=mmdit+flow,train.num_steps=7365")


def test_digits_preset_is_the_quality_recipe_sweeps_chosen_point(monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = sweep_lib.load_sweep(os.path.join(ROOT, "experiments/sweeps/digits_quality_recipe.py"))
    assert len(sweep.points) == 6 and sweep.modes == ("train",)
    preset = load_config(os.path.join(ROOT, "experiments/digits.py"))
    chosen = {**sweep.fixed, **sweep.points[1].overrides}  # 1,300 steps at 3e-3: docs/digits.md's choice (issue 27)
    training = {key: v for key, v in chosen.items() if not key.startswith("sample.")}  # sampled with guidance 3 then
    assert set(training) == set(chosen) - {"sample.guidance", "sample.guidance_interval"}
    assert {key: config_lib.get(preset, key) for key in training} == training
    for point in sweep.points[:1] + sweep.points[2:]:  # every other point differs from the preset in some key
        assert any(config_lib.get(preset, key) != v for key, v in point.overrides.items()), point.name


def test_evaluate_copies_sampling_speed_into_eval_json(tmp_path, monkeypatch):
    from diffusion_jax.trainers import digits

    # The classifier is stubbed out (training it takes most of a minute here); what is tested is the bookkeeping.
    monkeypatch.setattr(digits.classifier_lib, "load_or_train_classifier", lambda *args, **kwargs: None)
    scores = {"accuracy": 0.5, "per_class_accuracy": {"0": 0.5}, "num_samples": 20, "fd": 1.0, "fd_floor": 0.5}
    monkeypatch.setattr(digits, "evaluate_digit_samples", lambda *args: dict(scores))
    monkeypatch.setattr(digits, "classifier_heldout_accuracy", lambda *args: 0.9)
    path = str(tmp_path / "samples" / "samples.npz")
    labels = np.repeat(np.arange(10), 2)
    speed = {"sampling_seconds": 2.5, "images_per_second": 8.0, "steps": 5}
    from diffusion_jax.images import write_samples
    write_samples(path, np.zeros((20, 32, 32, 1), np.uint8), {"labels": labels}, speed,
                  [np.flatnonzero(labels == d) for d in range(10)])
    result = digits.evaluate(load_config(TINY), str(tmp_path))
    assert result["sampling_seconds"] == 2.5 and result["images_per_second"] == 8.0 and "steps" not in result
    assert json.load(open(tmp_path / "eval.json"))["sampling_seconds"] == 2.5
    os.remove(tmp_path / "samples" / "samples.json")  # samples from elsewhere: no speed to report
    assert "sampling_seconds" not in digits.evaluate(load_config(TINY), str(tmp_path))
