"""Ablation sweeps: one main.py run per point of a grid of config overrides, then a table and a plot of the results.

  python -m diffusion_jax.sweep --sweep=experiments/sweeps/digits_schedule_target.py --root=runs/sweeps/schedule_target
  python -m diffusion_jax.sweep --sweep=... --root=... --print_commands   # one shell line per point; runs nothing
  python -m diffusion_jax.sweep --sweep=... --root=... --metric=fd         # (re)plot another metric of a finished sweep

A sweep file is Python::

    from diffusion_jax.sweep import product, with_overrides

    MODES = ("train",)            # main.py modes run per point, in order (default: ("train",))
    METRIC = "accuracy"           # plotted unless --metric says otherwise (default: the first of METRICS)
    METRICS = ("accuracy", "fd")  # eval.json keys in the table (default: every number in eval.json)

    def get_sweep():
        points = product({"diffusion.schedule": ["linear", "cosine"], "diffusion.prediction": ["eps", "v"]})
        return "experiments/digits.py", with_overrides(points, {"train.num_steps": 600})

`get_sweep()` returns the base config spec (what main.py's --config takes; relative paths resolve against the current
directory) and one dict {dotted.key: value} of overrides per point. Every point is checked against the base config
before anything runs. The points then run one after another, each as main.py subprocesses (a crash in one cannot
take the sweep down) in its own workdir:

  ROOT/<point>/                  main.py's --workdir (checkpoints, samples, eval.json, ...)
  ROOT/<point>/sweep.log         main.py's stdout and stderr, appended across reruns
  ROOT/<point>/sweep_done.json   written when the point ends: overrides, status ok|failed, seconds per mode, metrics
  ROOT/results.csv, results.md   one row per point
  ROOT/results_<metric>.png      the metric against the swept axes

A point's name lists the overrides that differ between points (`diffusion.schedule=cosine,diffusion.prediction=v`);
overrides that every point shares are left out of the names and listed above the table. Rerunning the same command
skips finished points, retries failed ones, and reruns an interrupted one in the same workdir, where main.py's
training resumes from its latest checkpoint.
"""
# One module a concern: `points` builds and checks the points, `runner` runs them, `results` writes the tables,
# `plots` the plot, and `__main__` is the command line. Their public names are all importable from here.
from typing import Any

from diffusion_jax.sweep.plots import plot_metric
from diffusion_jax.sweep.points import (MAIN_MODES, Point, Sweep, check_point, concat, format_value, load_sweep,
                                        make_sweep, point_names, product, require_trained, with_overrides, zip_axes)
from diffusion_jax.sweep.results import write_results
from diffusion_jax.sweep.runner import (DONE_FILE, EVAL_FILE, LOG_FILE, MAIN, finished_record, point_commands,
                                        run_point, run_sweep, shell_line)

__all__ = ["DONE_FILE", "EVAL_FILE", "LOG_FILE", "MAIN", "MAIN_MODES", "Point", "Sweep", "check_point", "concat",
           "finished_record", "format_value", "load_sweep", "make_sweep", "plot_metric", "point_commands",
           "point_names", "product", "require_trained", "run_point", "run_sweep", "shell_line", "with_overrides",
           "write_results", "zip_axes"]


def __getattr__(name: str) -> Any:
    """`diffusion_jax.sweep.main`, the CLI's entry point, imported on first use: importing __main__ with the package
    would make `python -m diffusion_jax.sweep` warn that it found the module it runs already imported."""
    if name == "main":
        from diffusion_jax.sweep.__main__ import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
