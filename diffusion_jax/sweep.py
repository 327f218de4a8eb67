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
import ast
import copy
import csv
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import ml_collections
from absl import app, flags

from diffusion_jax.config import ConfigError, load_config

# main.py's --mode values (not imported from main.py: importing it would define its required flags here).
MAIN_MODES = ("train", "sample", "eval", "embed")
DONE_FILE = "sweep_done.json"
LOG_FILE = "sweep.log"
EVAL_FILE = "eval.json"
# The interpreter and module a point runs; printed launch lines say plain `python` (the cluster's environment).
MAIN = (sys.executable, "-m", "diffusion_jax.main")
_PRINTED_MAIN = ("python", "-m", "diffusion_jax.main")
_MAX_NAME_CHARS = 100
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]")
_SETTABLE_TYPES = (bool, int, float, str, tuple)
_MAX_ERROR_CHARS = 500


# ----------------------------------------------------------------------------------------------- building points

def _axes(axes: Optional[Mapping[str, Iterable]], more: Mapping[str, Iterable], caller: str) -> dict[str, list]:
    merged = dict(axes or {})
    for key in more:
        if key in merged:
            raise ConfigError(f"{caller}(): axis {key!r} is given twice")
    merged.update(more)
    if not merged:
        raise ConfigError(f"{caller}() needs at least one axis: {{'dotted.key': [values, ...]}}")
    result = {}
    for key, values in merged.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{caller}(): axis names are dotted config keys, got {key!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"{caller}(): axis {key!r} must be a list of values, got {values!r}")
        result[key] = list(values)
        if not result[key]:
            raise ConfigError(f"{caller}(): axis {key!r} has no values")
    return result


def product(axes: Optional[Mapping[str, Iterable]] = None, /, **more: Iterable) -> list[dict]:
    """Every combination of the axes' values (a full grid), the last axis varying fastest.

    `product({"diffusion.schedule": ["linear", "cosine"], "diffusion.prediction": ["eps", "v"]})` gives 4 points.
    Dotted keys go in the dict; plain ones may also be keyword arguments (`product(seed=[0, 1])`).
    """
    axes = _axes(axes, more, "product")
    return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


def zip_axes(axes: Optional[Mapping[str, Iterable]] = None, /, **more: Iterable) -> list[dict]:
    """Points that take the i-th value of every axis together (axes of equal length), e.g. a learning rate that
    changes with the batch size: `zip_axes({"train.batch_size": [32, 64], "train.learning_rate": [1e-3, 2e-3]})`."""
    axes = _axes(axes, more, "zip_axes")
    lengths = {key: len(values) for key, values in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zip_axes(): the axes must have equal lengths, got {lengths}")
    return [dict(zip(axes, values)) for values in zip(*axes.values())]


def concat(*point_lists: Iterable[Mapping]) -> list[dict]:
    """The points of several lists one after another (e.g. a grid plus a few extra points)."""
    return [dict(point) for points in point_lists for point in points]


def with_overrides(points: Iterable[Mapping], overrides: Optional[Mapping] = None, /, **more: Any) -> list[dict]:
    """The same overrides added to every point (e.g. a shorter training for the whole sweep).

    A key that a point already sets is a ConfigError: the point's own value would silently lose or win otherwise.
    """
    shared = {**(overrides or {}), **more}
    result = []
    for point in points:
        clash = sorted(set(point) & set(shared))
        if clash:
            raise ConfigError(f"with_overrides(): point {dict(point)!r} already sets {clash}")
        result.append({**point, **shared})
    return result


def format_value(value: Any) -> str:
    """The command-line text of an override value, as main.py's `--config.KEY=TEXT` parses it back for that field."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float, str)):
        return value if isinstance(value, str) else repr(value)
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    raise ConfigError(f"override value {value!r} ({type(value).__name__}) cannot be written on a command line: use "
                      "a number, string, bool or tuple")


def _varying_keys(points: Sequence[Mapping]) -> list[str]:
    """The override keys whose command-line text differs between points (set in some, unset in others counts)."""
    keys = list(dict.fromkeys(key for point in points for key in point))
    return [key for key in keys
            if len({format_value(point[key]) if key in point else None for point in points}) > 1]


def point_names(points: Sequence[Mapping]) -> list[str]:
    """Workdir names: `key=value` of the overrides that differ between points (all of them if none differs), joined
    by ',' in the order they were given; 'base' for a point without such overrides. Characters other than letters,
    digits and `._=,+-` become '_'; a name that had any, or is longer than 100 characters, is shortened and gets a
    short hash of the full text, so distinct points keep distinct names. Identical points are a ConfigError."""
    keys = list(dict.fromkeys(key for point in points for key in point))
    varying = _varying_keys(points) or keys
    names = []
    for point in points:
        raw = ",".join(f"{key}={format_value(point[key])}" for key in varying if key in point) or "base"
        name = _UNSAFE_CHARS.sub("_", raw)
        if name != raw or len(name) > _MAX_NAME_CHARS:
            name = f"{name[:_MAX_NAME_CHARS - 9]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
        names.append(name)
    seen = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"sweep points {seen[name]} and {i} are identical: {dict(points[i])!r}")
        seen[name] = i
    return names


# ------------------------------------------------------------------------------------------------ validating points

def _holds(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # a bool is an int to Python, not to a config
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    if kind is str:
        return isinstance(value, str)
    return isinstance(value, (tuple, list))


def check_point(config: ml_collections.ConfigDict, overrides: Mapping, where: str) -> ml_collections.ConfigDict:
    """Applies `overrides` to a copy of `config` and returns it. A key the config lacks, a group instead of a value,
    or a value its field cannot hold (or that would not survive the command line) is a ConfigError naming the key and
    `where` (the point)."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where} must be a dict {{'dotted.key': value}}, got {overrides!r}")
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: override keys are dotted config keys, got {key!r}")
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                missing = ".".join(parts[:depth + 1])
                raise ConfigError(f"{where}: the base config has no key {key!r} (no {missing!r})")
            if depth < len(parts) - 1:
                node = node[part]
        current = node[parts[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"{where}: {key!r} is a group of keys; override the keys inside it one by one")
        kind = type(current)
        if kind not in _SETTABLE_TYPES:
            raise ConfigError(f"{where}: config.{key} holds a {kind.__name__} ({current!r}), which "
                              f"--config.{key}=... cannot set")
        if not _holds(kind, value):
            raise ConfigError(f"{where}: {key}={value!r} is a {type(value).__name__}, but config.{key} is a "
                              f"{kind.__name__} (base value {current!r})")
        if kind is tuple:
            try:
                round_trip = ast.literal_eval(format_value(value))
            except (ValueError, SyntaxError):
                round_trip = None
            if round_trip != tuple(value):
                raise ConfigError(f"{where}: {key}={value!r} does not survive the command line; use a tuple of "
                                  "numbers, strings or bools")
        try:
            node[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: cannot set config.{key}={value!r}: {e}") from None
    return config


# ------------------------------------------------------------------------------------------------ the sweep itself

@dataclass(frozen=True)
class Point:
    """One run of the sweep: its workdir name under the root and its config overrides."""
    name: str
    overrides: dict


@dataclass
class Sweep:
    """A validated sweep: base config spec, points, main.py modes per point, and what to tabulate and plot."""
    spec: str
    points: list[Point]
    modes: tuple[str, ...] = ("train",)
    metric: str = "accuracy"
    metrics: Optional[tuple[str, ...]] = None  # table columns; None: every number in eval.json
    path: str = ""
    axes: list[str] = field(default_factory=list)  # keys that differ between points: the names, columns, plot axes
    fixed: dict = field(default_factory=dict)  # overrides every point shares


def make_sweep(spec: str, points: Sequence[Mapping], *, modes: Sequence[str] = ("train",),
               metric: Optional[str] = None, metrics: Optional[Sequence[str]] = None, path: str = "") -> Sweep:
    """Builds a sweep and checks every point against the base config `spec` before anything runs (notebooks and
    tests use this directly; `load_sweep` reads the same from a file)."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"the base config spec must be a path like 'experiments/digits.py[:preset]', got {spec!r}")
    try:
        base = load_config(spec)
    except ConfigError:
        raise
    except ValueError as e:  # e.g. an unknown preset
        raise ConfigError(f"base config {spec!r}: {e}") from None
    points = list(points)
    if not points:
        raise ConfigError(f"sweep {path or spec!r} has no points")
    for i, overrides in enumerate(points):
        shown = dict(overrides) if isinstance(overrides, Mapping) else overrides
        check_point(base, overrides, where=f"sweep point {i} {shown!r}")
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes or any(mode not in MAIN_MODES for mode in modes):
        raise ConfigError(f"sweep MODES={modes!r}: each must be one of {MAIN_MODES}")
    if metrics is not None:
        if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"sweep METRICS={metrics!r} must be a tuple of eval.json keys")
        metrics = tuple(metrics)
    metric = metric or (metrics[0] if metrics else "accuracy")
    names = point_names(points)
    keys = list(dict.fromkeys(key for point in points for key in point))
    axes = _varying_keys(points)
    fixed = {key: points[0][key] for key in keys if key not in axes and len(points) > 1}
    return Sweep(spec=spec, points=[Point(name, dict(p)) for name, p in zip(names, points)], modes=modes,
                 metric=metric, metrics=metrics, path=path, axes=axes, fixed=fixed)


def load_sweep(path: str) -> Sweep:
    """Reads a sweep file (`get_sweep()`, optional MODES, METRIC, METRICS) and validates it with `make_sweep`."""
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_{hashlib.sha1(path.encode()).hexdigest()[:8]}",
                                                         path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"sweep file {path} defines no get_sweep() -> (config_spec, [overrides, ...])")
    result = module.get_sweep()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str)):
        raise ConfigError(f"{path}: get_sweep() must return (config_spec: str, [overrides dict, ...]), "
                          f"got {type(result).__name__}")
    return make_sweep(result[0], result[1], modes=getattr(module, "MODES", ("train",)),
                      metric=getattr(module, "METRIC", None), metrics=getattr(module, "METRICS", None), path=path)


def point_commands(sweep: Sweep, root: str, point: Point, main: Sequence[str] = MAIN) -> list[list[str]]:
    """The main.py command lines of one point, one per mode, in order."""
    workdir = os.path.join(root, point.name)
    overrides = [f"--config.{key}={format_value(value)}" for key, value in point.overrides.items()]
    return [[*main, f"--config={sweep.spec}", f"--workdir={workdir}", f"--mode={mode}", *overrides]
            for mode in sweep.modes]


def shell_line(sweep: Sweep, root: str, point: Point) -> str:
    """One shell line that runs a point anywhere (for a cluster scheduler): `cd` here, then its modes `&&`-chained."""
    commands = [shlex.join(command) for command in point_commands(sweep, root, point, _PRINTED_MAIN)]
    return " && ".join([f"cd {shlex.quote(os.getcwd())}", *commands])


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _write_json(path: str, data: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def _error_line(path: str, start: int) -> str:
    """The error a failed run wrote to `path` after byte `start`: main.py's last `error: ...` line (its one-line
    report of a bad config or missing file), else the last non-empty line (a traceback's last line names the error)."""
    with open(path, "rb") as f:
        f.seek(max(start, os.path.getsize(path) - 65536))
        text = f.read().decode("utf-8", errors="replace")
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or [""])[-1][:_MAX_ERROR_CHARS]


def _read_metrics(workdir: str, since: float) -> dict:
    """Every number in the point's eval.json, if this run wrote it (an older one would describe another run); the
    table shows METRICS of them, and any can be plotted later with --metric."""
    path = os.path.join(workdir, EVAL_FILE)
    if not os.path.exists(path) or os.path.getmtime(path) < since - 1:
        return {}
    with open(path) as f:
        result = json.load(f)
    return {key: value for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def finished_record(sweep: Sweep, root: str, point: Point) -> Optional[dict]:
    """The point's sweep_done.json if it finished successfully with these same settings, else None (run it)."""
    path = os.path.join(root, point.name, DONE_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    same = (record.get("spec") == sweep.spec and record.get("overrides") == _jsonable(point.overrides)
            and record.get("modes") == list(sweep.modes))
    return record if record.get("status") == "ok" and same else None


def _previous(root: str, point: Point) -> str:
    """Why a point with a sweep_done.json runs again, for the progress line ('' when it has none)."""
    try:
        with open(os.path.join(root, point.name, DONE_FILE)) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return ""
    if record.get("status") == "ok":
        return ", again: its settings changed since it finished"
    return f", retrying: it failed before ({record.get('error')})"


def run_point(sweep: Sweep, root: str, point: Point, main: Sequence[str] = MAIN) -> dict:
    """Runs the point's modes in order as subprocesses in ROOT/<point> (output to its sweep.log), stopping at the
    first failure; writes and returns its record (status, error, seconds per mode, metrics from eval.json)."""
    workdir = os.path.join(root, point.name)
    os.makedirs(workdir, exist_ok=True)
    done_path = os.path.join(workdir, DONE_FILE)
    if os.path.exists(done_path):  # a stale record must not outlive an interrupted rerun
        os.remove(done_path)
    log_path = os.path.join(workdir, LOG_FILE)
    started = time.time()
    seconds, status, error, failed_mode = {}, "ok", None, None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log in the order things happened, and live
    with open(log_path, "ab") as log:
        for mode, command in zip(sweep.modes, point_commands(sweep, root, point, main)):
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} sweep runs: {shlex.join(command)}\n".encode())
            log.flush()
            start_byte = log.tell()
            start = time.time()
            code = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=env).returncode
            seconds[mode] = round(time.time() - start, 3)
            if code != 0:
                log.flush()
                status, failed_mode = "failed", mode
                reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                error = f"--mode={mode} {reason}: {_error_line(log_path, start_byte) or 'no output'}"
                break
    record = {
        "name": point.name, "spec": sweep.spec, "overrides": _jsonable(point.overrides), "modes": list(sweep.modes),
        "status": status, "error": error, "failed_mode": failed_mode, "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 3),
        "metrics": _read_metrics(workdir, started) if status == "ok" else {},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workdir": os.path.abspath(workdir),
    }
    _write_json(done_path, record)
    return record


def run_sweep(sweep: Sweep, root: str, *, main: Sequence[str] = MAIN,
              echo: Callable[[str], None] = print) -> list[dict]:
    """Runs the points one after another (skipping finished ones) and returns their records in sweep order."""
    os.makedirs(root, exist_ok=True)
    records = []
    for i, point in enumerate(sweep.points):
        prefix = f"[{i + 1}/{len(sweep.points)}] {point.name}"
        record = finished_record(sweep, root, point)
        if record is not None:
            echo(f"{prefix}: finished earlier, skipped")
        else:
            echo(f"{prefix}: running --mode={','.join(sweep.modes)}{_previous(root, point)} "
                 f"(log: {os.path.join(root, point.name, LOG_FILE)})")
            record = run_point(sweep, root, point, main)
            shown = _metric_keys(sweep, [record])
            summary = ", ".join(f"{k} {_format_number(record['metrics'][k])}" for k in shown if k in record["metrics"])
            echo(f"    {record['status']} in {record['total_seconds']:.0f} s"
                 + (f": {summary}" if summary else "") + (f": {record['error']}" if record["error"] else ""))
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------------------- results

def _format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    return f"{value:.4g}"


def _metric_keys(sweep: Sweep, records: Sequence[dict]) -> list[str]:
    if sweep.metrics is not None:
        return list(sweep.metrics)
    return list(dict.fromkeys(key for record in records for key in record.get("metrics", {})))


def write_results(sweep: Sweep, root: str, records: Sequence[dict], metric: Optional[str] = None) -> list[str]:
    """Writes ROOT/results.csv (every override), ROOT/results.md (the swept ones; shared ones above the table) and
    ROOT/results_<metric>.png; returns the paths written (no plot when no finished point has the metric)."""
    metric = metric or sweep.metric
    keys = list(dict.fromkeys(key for point in sweep.points for key in point.overrides))
    metric_keys = _metric_keys(sweep, records)
    mode_columns = [f"seconds_{mode}" for mode in sweep.modes] if len(sweep.modes) > 1 else []

    def row(point, record, columns):
        values = {"point": point.name, "status": record["status"], "seconds": record["total_seconds"],
                  "error": record.get("error") or ""}
        values.update({key: format_value(point.overrides[key]) for key in point.overrides})
        values.update({f"seconds_{mode}": s for mode, s in record.get("seconds", {}).items()})
        values.update(record.get("metrics", {}))
        return [values.get(column, "") for column in columns]

    pairs = list(zip(sweep.points, records))
    csv_path = os.path.join(root, "results.csv")
    columns = ["point", *keys, "status", "seconds", *mode_columns, *metric_keys, "error"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(row(point, record, columns) for point, record in pairs)

    axes = sweep.axes or keys
    md_columns = [*axes, "status", "seconds", *mode_columns, *metric_keys]
    if any(record["status"] != "ok" for record in records):
        md_columns.append("error")
    lines = [f"# Sweep results: {sweep.path or sweep.spec}", "",
             f"Base config `{sweep.spec}`, modes {', '.join(sweep.modes)} per point; seconds are wall-clock per point."]
    if sweep.fixed:
        lines.append("Every point also sets " + ", ".join(f"`{k}={format_value(v)}`" for k, v in sweep.fixed.items())
                     + ".")
    lines += ["", "| " + " | ".join(md_columns) + " |", "|" + "---|" * len(md_columns)]
    for point, record in pairs:
        cells = [(f"{v:.1f}" if column.startswith("seconds") else _format_number(v)) if isinstance(v, float)
                 else str(v) for column, v in zip(md_columns, row(point, record, md_columns))]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    md_path = os.path.join(root, "results.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")

    written = [csv_path, md_path]
    plot_path = plot_metric(sweep, records, metric, os.path.join(root, f"results_{_UNSAFE_CHARS.sub('_', metric)}.png"))
    if plot_path:
        written.append(plot_path)
    return written


def _axis_label(point: Point, key: str) -> Any:
    return point.overrides[key] if key in point.overrides else "(base)"


def plot_metric(sweep: Sweep, records: Sequence[dict], metric: str, path: str) -> Optional[str]:
    """Plots `metric` of the finished points against the swept axes: one axis, a line; two, one line per value of
    the second; otherwise a bar per point. Returns `path`, or None if no finished point has the metric."""
    data = [(point, float(record["metrics"][metric])) for point, record in zip(sweep.points, records)
            if record["status"] == "ok" and isinstance(record.get("metrics", {}).get(metric), (int, float))
            and math.isfinite(record["metrics"][metric])]
    if not data:
        return None
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    axes = sweep.axes
    if len(axes) in (1, 2):
        x_key = axes[0]
        x_values = list(dict.fromkeys(_axis_label(point, x_key) for point in sweep.points))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
        if numeric:
            x_values = sorted(x_values)
        position = {repr(v): (v if numeric else i) for i, v in enumerate(x_values)}
        groups: dict[str, list] = {}
        for point, y in data:
            label = f"{axes[1]}={format_value(_axis_label(point, axes[1]))}" if len(axes) == 2 else metric
            groups.setdefault(label, []).append((position[repr(_axis_label(point, x_key))], y))
        for label, xy in groups.items():
            xy.sort()
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
        if numeric and min(x_values) > 0 and max(x_values) / min(x_values) >= 20:
            ax.set_xscale("log")
        ax.set_xticks([position[repr(v)] for v in x_values], [format_value(v) for v in x_values])
        ax.set_xlabel(x_key)
        if len(axes) == 2:
            ax.legend()
    else:
        names = [point.name for point, _ in data]
        ax.bar(range(len(data)), [y for _, y in data])
        ax.set_xticks(range(len(data)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: {os.path.basename(sweep.path) or sweep.spec}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- main

def _define_flags() -> None:
    """The CLI's flags, defined only when run as a program: sweep files import this module for `product` and co., and
    `python -m` runs it as __main__, so flags defined at import would be defined twice."""
    flags.DEFINE_string("sweep", None, "Sweep file (experiments/sweeps/NAME.py) defining get_sweep().")
    flags.DEFINE_string("root", None, "Directory of the sweep: one workdir per point, results.* beside them.")
    flags.DEFINE_bool("print_commands", False,
                      "Print one shell launch line per point (for a cluster scheduler); run nothing.")
    flags.DEFINE_string("metric", None, "eval.json key to plot (default: the sweep file's METRIC).")
    flags.mark_flags_as_required(["sweep", "root"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    try:
        sweep = load_sweep(args.sweep)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.print_commands:
        for point in sweep.points:
            print(shell_line(sweep, args.root, point))
        return
    records = run_sweep(sweep, args.root)
    written = write_results(sweep, args.root, records, args.metric)
    for path in written:
        print(f"wrote {path}")
    if len(written) < 3:
        print(f"no plot: no finished point has the metric {args.metric or sweep.metric!r} in its eval.json")
    failed = [record["name"] for record in records if record["status"] != "ok"]
    if failed:
        print(f"{len(failed)} of {len(records)} points failed ({', '.join(failed)}); their sweep.log says why. "
              "Rerun the same command to retry them.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
