"""Running a sweep's points: their main.py command lines, one subprocess run per mode in the point's workdir, and the
sweep_done.json record that lets a rerun skip finished points and retry failed ones."""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from diffusion_jax.sweep.points import Point, Sweep, config_overrides, format_value, point_spec
from diffusion_jax.sweep.results import _format_number, _metric_keys

DONE_FILE = "sweep_done.json"
LOG_FILE = "sweep.log"
EVAL_FILE = "eval.json"
# The interpreter and module a point runs; printed launch lines say plain `python` (the cluster's environment).
MAIN = (sys.executable, "-m", "diffusion_jax.main")
_PRINTED_MAIN = ("python", "-m", "diffusion_jax.main")
_MAX_ERROR_CHARS = 500


def point_commands(sweep: Sweep, root: str, point: Point, main: Sequence[str] = MAIN) -> list[list[str]]:
    """The main.py command lines of one point, one per mode, in order."""
    workdir = os.path.join(root, point.name)
    overrides = [f"--config.{key}={format_value(value)}" for key, value in config_overrides(point.overrides).items()]
    spec = point_spec(sweep.spec, point.overrides)
    return [[*main, f"--config={spec}", f"--workdir={workdir}", f"--mode={mode}", *overrides]
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
