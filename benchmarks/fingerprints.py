"""Fingerprints of every task's tiny preset, trained, sampled and evaluated from nothing: sha256 prefixes of each
metrics.jsonl (timings left out), each samples .npz and each eval.json (timings and paths left out).

A refactor that promises "no behaviour change" runs this before and after and compares the two JSON files: equal
fingerprints mean bit-identical losses, samples and evaluations (issue 26's "make room" was checked this way).

  python benchmarks/fingerprints.py --root=/tmp/fp_before   # on the old code, e.g. a `git worktree`
  python benchmarks/fingerprints.py --root=/tmp/fp_after --compare=/tmp/fp_before.json
"""
import glob
import hashlib
import json
import os
import shutil

import numpy as np
from absl import app, flags

from diffusion_jax.config import load_config
from diffusion_jax.trainers import autoencoder, clip, digits, txt2img

_ROOT = flags.DEFINE_string("root", None, "where the runs go (emptied first); the fingerprints go to ROOT.json")
_COMPARE = flags.DEFINE_string("compare", "", "a ROOT.json of an earlier run to compare with")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = {"digits": "digits.py:tiny", "clip": "clip_digits.py:tiny", "autoencoder": "autoencoder_scenes.py:tiny",
         "txt2img_digits": "txt2img_digits.py:tiny", "scenes_latent": "txt2img_scenes.py:tiny",
         "scenes_pixel": "txt2img_scenes.py:tiny_pixel"}


TRAIN = {"digits": digits.train, "clip": clip.train, "autoencoder": autoencoder.train, "txt2img": txt2img.train}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _strip(value):
    """A JSON value without what differs between identical runs: timings and paths."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()
                if "second" not in k and "time" not in k and "per_s" not in k and "workdir" not in k
                and k != "samples"}
    return value


def fingerprint(workdir: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**", "metrics.jsonl"), recursive=True)):
        rows = [json.dumps(_strip(json.loads(line)), sort_keys=True) for line in open(path)]
        out[os.path.relpath(path, workdir)] = _digest("\n".join(rows).encode())
    for path in sorted(glob.glob(os.path.join(workdir, "**", "*.npz"), recursive=True)):
        with np.load(path) as f:
            arrays = [np.ascontiguousarray(f[k]).tobytes() for k in sorted(f.files) if f[k].dtype.kind not in "OUS"]
        out[os.path.relpath(path, workdir)] = _digest(b"".join(arrays))
    for path in sorted(glob.glob(os.path.join(workdir, "**", "eval.json"), recursive=True)):
        with open(path) as f:
            out[os.path.relpath(path, workdir)] = _digest(json.dumps(_strip(json.load(f)), sort_keys=True,
                                                                     default=str).encode())
    return out


def main(argv):
    del argv
    root = _ROOT.value
    shutil.rmtree(root, ignore_errors=True)
    result = {}
    for name, spec in SPECS.items():
        workdir = os.path.join(root, name)
        config = load_config(os.path.join(HERE, "experiments", spec))
        TRAIN[config.task](config, workdir)  # as --mode=train does
        result[name] = fingerprint(workdir)
    with open(root.rstrip("/") + ".json", "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(json.dumps(result, indent=1, sort_keys=True))
    if _COMPARE.value:
        with open(_COMPARE.value) as f:
            before = json.load(f)
        differ = [f"{task}/{path}" for task in sorted(set(before) | set(result))
                  for path in sorted(set(before.get(task, {})) | set(result.get(task, {})))
                  if before.get(task, {}).get(path) != result.get(task, {}).get(path)]
        total = sum(len(v) for v in result.values())
        print(f"{total} fingerprints; {len(differ)} differ from {_COMPARE.value}" + "".join(f"\n  {d}" for d in differ))


if __name__ == "__main__":
    flags.mark_flag_as_required("root")
    app.run(main)
