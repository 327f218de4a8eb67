"""A sweep's results tables: ROOT/results.csv and ROOT/results.md, one row per point (and the plot beside them)."""
import csv
import os
from typing import Any, Optional, Sequence

from diffusion_jax.sweep.plots import plot_metric
from diffusion_jax.sweep.points import _UNSAFE_CHARS, Sweep, format_value


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
