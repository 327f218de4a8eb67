"""A sweep's plot: one metric of the finished points against the swept axes (matplotlib, imported only to draw)."""
import math
import os
from typing import Any, Optional, Sequence

from diffusion_jax.sweep.points import Point, Sweep, format_value


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
