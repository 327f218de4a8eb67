"""The command line: `python -m diffusion_jax.sweep --sweep=FILE --root=DIR [--print_commands] [--metric=KEY]`."""
import sys

from absl import app, flags

import diffusion_jax.sweep
from diffusion_jax.config import ConfigError
from diffusion_jax.sweep.points import load_sweep
from diffusion_jax.sweep.results import write_results
from diffusion_jax.sweep.runner import run_sweep, shell_line

# absl's --help prints __main__'s docstring: the package's, which documents the command and sweep files.
__doc__ = diffusion_jax.sweep.__doc__


def _define_flags() -> None:
    """The CLI's flags, defined only when run as a program: `diffusion_jax.sweep.main` imports this module beside the
    copy `python -m` runs as __main__, so flags defined at import would be defined twice."""
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
