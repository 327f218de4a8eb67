"""Where issue 25's full-size speed gap is: one SD 1.5 U-Net call (batch 2, as under guidance) in diffusers and in
this project, side by side in one process, on the folder `benchmarks/sd_parity.py` builds; optional XLA flags for
this project's side (each variant in its own process, since XLA reads its flags once).

  python benchmarks/sd_unet_speed.py --folder=/tmp/sd15_random --size=512 --calls=3   # + ours by Winograd (32)
  python benchmarks/sd_unet_speed.py --folder=/tmp/sd15_random --xla_flags="--xla_cpu_use_thunk_runtime=false"

Prints seconds per call (median of --calls after one warm-up) for each side and the ratio.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _median_seconds(fn, calls: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(calls):
        start = time.time()
        fn()
        times.append(time.time() - start)
    return float(np.median(times))


def torch_side(folder: str, size: int, calls: int) -> float:
    import diffusers
    import torch

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    x = torch.randn(2, 4, size // 8, size // 8)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500, 500])

    def call():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=context)
    return _median_seconds(call, calls)


def jax_side(folder: str, size: int, calls: int, winograd: int = 0) -> float:
    import jax
    import jax.numpy as jnp

    from diffusion_jax.models import layers
    from diffusion_jax.pretrained import unet as unet_loader

    unet, params, channels = unet_loader.load(folder)
    unet = unet.clone(winograd=winograd)
    params = jax.device_put(params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size // 8, size // 8, channels)), jnp.float32)
    width = params["params"]["SpatialTransformer_0"]["attn2"]["to_k"]["kernel"].shape[0]
    cond = {"tokens": jnp.zeros((2, 77, width)), "mask": jnp.ones((2, 77), bool), "pooled": jnp.zeros((2, width))}
    apply = jax.jit(unet.apply)
    t = jnp.array([500.0, 500.0])
    if winograd:  # the kernels transformed once, as the pipeline does once a chain
        params = {**params, **jax.jit(lambda p: layers.winograd_variables(unet, p, x, t, cond))(params)}
    return _median_seconds(lambda: apply(params, x, t, cond).block_until_ready(), calls)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for this project's side")
    parser.add_argument("--winograd", type=int, default=None,
                        help="also time ours with 3x3 convolutions on maps up to this size by Winograd F(2x2, 3x3), "
                             "kernels transformed once (default: the pipeline's CPU path, CPU_WINOGRAD; 0: not)")
    parser.add_argument("--side", choices=("torch", "jax", "winograd"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.winograd is None:
        from diffusion_jax.pretrained.pipeline import CPU_WINOGRAD
        args.winograd = CPU_WINOGRAD
    if args.side:
        seconds = (torch_side(args.folder, args.size, args.calls) if args.side == "torch" else
                   jax_side(args.folder, args.size, args.calls, args.winograd if args.side == "winograd" else 0))
        print("RESULT " + json.dumps(seconds))
        return
    seconds = {}
    for side in ("torch", "jax") + (("winograd",) if args.winograd else ()):
        env = dict(os.environ)
        if side != "torch" and args.xla_flags:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
        out = subprocess.run([sys.executable, __file__, f"--folder={args.folder}", f"--size={args.size}",
                              f"--calls={args.calls}", f"--side={side}", f"--winograd={args.winograd}"],
                             capture_output=True, text=True, env=env)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        seconds[side] = json.loads(line[0][7:])
    print(f"SD 1.5 U-Net, batch 2, {args.size // 8}x{args.size // 8} latents, {os.cpu_count()} cores; XLA flags "
          f"{args.xla_flags or '(default)'}: torch {seconds['torch']:.2f} s/call, ours {seconds['jax']:.2f} s/call "
          f"(ours / torch {seconds['jax'] / seconds['torch']:.2f})")
    if args.winograd:
        print(f"ours with Winograd F(2x2, 3x3) on maps up to {args.winograd}: {seconds['winograd']:.2f} s/call "
              f"(ours / torch {seconds['winograd'] / seconds['torch']:.2f})")


if __name__ == "__main__":
    main()
