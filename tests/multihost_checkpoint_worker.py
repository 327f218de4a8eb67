"""One process of tests/test_multihost.py's checkpoint-agreement test: two processes restore one directory.

    python tests/multihost_checkpoint_worker.py --dir CKPT --inject KIND --coordinator_address 127.0.0.1:PORT
        --num_processes 2 --process_id I

Both processes save steps 1 and 2 together. Then process 1 alone sees step 2 as KIND: 'damaged' (a StepDamage, what
a CRC-32 mismatch raises, after the reads), 'mismatch' (a CheckpointMismatchError, as from a stale copy of another
run's step) or 'oserror' (a transient OSError, which is not damage); process 0 reads every step fine. Each prints
`WORKER {"restored": step, "w": ...}` or `WORKER {"error": "Type: message"}`.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--dir", "--inject", "--coordinator_address"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    args = parser.parse_args()

    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from diffusion_jax import distributed
    distributed.maybe_initialize(args.coordinator_address, args.num_processes, args.process_id)
    import numpy as np

    from diffusion_jax import checkpoint

    state = lambda step: {"step": np.asarray(step, np.int32), "w": np.full(4, float(step), np.float32)}  # noqa: E731
    with checkpoint.Checkpointer(args.dir) as ckpt:
        ckpt.save(1, state(1))
        ckpt.save(2, state(2))
    if jax.process_index() == 1:
        original = checkpoint.Checkpointer._verify_checksums

        # After orbax's reads (which hold barriers every process must reach), as a CRC-32 mismatch would be.
        def verify(self, step, *a):
            if step == 2:
                raise {"damaged": checkpoint.StepDamage("injected damage"),
                       "mismatch": checkpoint.CheckpointMismatchError("injected mismatch"),
                       "oserror": OSError(5, "injected I/O error")}[args.inject]
            return original(self, step, *a)
        checkpoint.Checkpointer._verify_checksums = verify
    try:
        with checkpoint.Checkpointer(args.dir) as ckpt:
            step, restored = ckpt.restore(state(0))
        out = {"restored": step, "w": float(restored["w"][0])}
    except Exception as e:  # noqa: BLE001 -- reported to the test
        out = {"error": f"{type(e).__name__}: {e}"}
    print("WORKER " + json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
