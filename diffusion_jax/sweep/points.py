"""Building a sweep's points (grids, shared overrides, workdir names), checking each against the base config, and
reading a sweep file into a validated `Sweep`."""
import ast
import copy
import hashlib
import importlib.util
import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import ml_collections

from diffusion_jax.config import ConfigError, load_config

# main.py's --mode values (not imported from main.py: importing it would define its required flags here).
MAIN_MODES = ("train", "sample", "eval", "embed")
_MAX_NAME_CHARS = 100
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]")
_SETTABLE_TYPES = (bool, int, float, str, tuple)
# A point's "preset" picks the base file's preset for that point (e.g. 'dit+flow' with experiments/digits.py): the
# way to sweep what one key cannot switch, such as the backbone, whose `model` group has other keys.
PRESET_KEY = "preset"


def point_spec(spec: str, overrides: Mapping) -> str:
    """The config spec of a point: the sweep's `spec`, or its file with the point's `preset` instead."""
    if PRESET_KEY not in overrides:
        return spec
    path, preset = spec.partition(":")[0], overrides[PRESET_KEY]
    return f"{path}:{preset}" if preset else path


def config_overrides(overrides: Mapping) -> dict:
    """A point's overrides of config keys (all but its `preset`)."""
    return {k: v for k, v in overrides.items() if k != PRESET_KEY}


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


def require_trained(workdir: str, command: str, what: str) -> None:
    """FileNotFoundError unless `workdir/checkpoints` exists: for sweeps that sample one trained model, so a missing
    model fails when the sweep loads, naming the folder and the command that trains it, not once per point."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(
            f"{what} samples the trained model in {workdir}/checkpoints, which does not exist (looked in "
            f"{os.path.abspath(workdir)}); train it first with the README command:  {command}")


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
    bases = {spec: base}
    for i, overrides in enumerate(points):
        shown = dict(overrides) if isinstance(overrides, Mapping) else overrides
        where = f"sweep point {i} {shown!r}"
        if isinstance(overrides, Mapping) and PRESET_KEY in overrides:
            own = point_spec(spec, overrides)
            if not isinstance(overrides[PRESET_KEY], str):
                raise ConfigError(f"{where}: {PRESET_KEY!r} must be a preset name (a string)")
            if own not in bases:
                try:
                    bases[own] = load_config(own)
                except ValueError as e:  # an unknown preset
                    raise ConfigError(f"{where}: {e}") from None
            check_point(bases[own], config_overrides(overrides), where=where)
        else:
            check_point(base, overrides, where=where)
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


def load_module(path: str):
    """A Python file (a sweep file, or one a sweep file reads: its constants) as a module, by path."""
    spec = importlib.util.spec_from_file_location(f"_sweep_{hashlib.sha1(path.encode()).hexdigest()[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str) -> Sweep:
    """Reads a sweep file (`get_sweep()`, optional MODES, METRIC, METRICS) and validates it with `make_sweep`."""
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file {path!r} does not exist")
    module = load_module(path)
    if not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"sweep file {path} defines no get_sweep() -> (config_spec, [overrides, ...])")
    result = module.get_sweep()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str)):
        raise ConfigError(f"{path}: get_sweep() must return (config_spec: str, [overrides dict, ...]), "
                          f"got {type(result).__name__}")
    return make_sweep(result[0], result[1], modes=getattr(module, "MODES", ("train",)),
                      metric=getattr(module, "METRIC", None), metrics=getattr(module, "METRICS", None), path=path)
