"""The one entry point: `python -m diffusion_jax.main --config=experiments/digits.py --workdir=DIR [--mode=...]`.

Flags pick the config file (with an optional preset, `experiments/digits.py:tiny`) and override any key with
`--config.group.key=value`; the work itself lives in importable functions (`diffusion_jax.trainers.*`), which Colab
notebooks call directly.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import distributed
from diffusion_jax.checkpoint import CheckpointDamagedError, CheckpointMismatchError
from diffusion_jax.config import ConfigError
from diffusion_jax.diffusion.sd_samplers import SamplerConfigError
from diffusion_jax.pretrained.folder import PretrainedError
from diffusion_jax.evaluation.classifier import ClassifierCacheError

# Errors that explain themselves: printed as one line (exit code 2) instead of a traceback.
_USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, FloatingPointError, CheckpointMismatchError,
                CheckpointDamagedError, ClassifierCacheError, PretrainedError, SamplerConfigError)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, optionally file.py:preset.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples; reruns resume.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "embed"],
                          "train (then sample and eval if train.final_sample), sample, eval, or embed (CLIP).")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process (multi-host) launches; see diffusion_jax/distributed.py. Unset: one process (or the JAX_* environment).
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process run found by JAX's auto-detection "
                                 "(Cloud TPU pod slice, Slurm, Open MPI) without the three flags above.")

_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", -1, "Split the CPU into this many JAX devices for the data-parallel step (-1: one per core, up to 8, "
    "a power of two dividing train.batch_size; 0: leave XLA_FLAGS alone). Ignored when XLA_FLAGS already sets "
    "--xla_force_host_platform_device_count. Has no effect on GPU/TPU runs.")

TASKS = ("digits", "clip", "txt2img", "autoencoder", "stable_diffusion")


def run(config, workdir: str, mode: str):
    """Dispatches on the config's task and the mode; returns what the task function returns."""
    task = config.get("task")
    if task not in TASKS:
        raise ConfigError(f"config.task={task!r} is not one of {TASKS}")
    if task == "clip":
        from diffusion_jax.trainers import clip
        if mode == "sample":
            raise ConfigError("--mode=sample needs an image generator; config.task='clip' supports train, eval, embed")
        return {"train": clip.train, "eval": clip.evaluate, "embed": clip.embed}[mode](config, workdir)
    if task == "txt2img":
        from diffusion_jax.trainers import txt2img
        if mode == "embed":
            raise ConfigError("--mode=embed is CLIP's; for text embeddings use the CLIP workdir (config.clip.workdir)")
        return {"train": txt2img.train, "sample": txt2img.sample, "eval": txt2img.evaluate}[mode](config, workdir)
    if task == "stable_diffusion":
        from diffusion_jax.pretrained import pipeline
        if mode != "sample":
            raise ConfigError(f"--mode={mode} is not available for config.task='stable_diffusion' (a pretrained "
                              "folder): it supports sample")
        return pipeline.sample(config, workdir)
    if task == "autoencoder":
        from diffusion_jax.trainers import autoencoder
        if mode not in ("train", "eval"):
            raise ConfigError(f"--mode={mode} is not available for config.task='autoencoder'; it supports train, eval")
        return {"train": autoencoder.train, "eval": autoencoder.evaluate}[mode](config, workdir)
    if mode == "embed":
        raise ConfigError(f"--mode=embed needs a CLIP config (config.task='clip'), got config.task={task!r}")
    from diffusion_jax.trainers import digits
    return {"train": digits.train, "sample": digits.sample, "eval": digits.evaluate}[mode](config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every file operation at INFO; -v 0 brings it back
        logging.set_verbosity(logging.WARNING)
    try:
        train = _CONFIG.value.get("train")  # a pretrained folder's config has no train group: one device
        distributed.split_cpu(_CPU_DEVICES.value, int(train.batch_size) if train else 1)
        distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    try:
        run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except _USER_ERRORS as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
