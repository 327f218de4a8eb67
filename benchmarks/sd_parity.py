"""Full-size Stable Diffusion 1.5, random weights: diffusers and this project side by side on this machine (issue 25,
item 7). Needs the parity extra (torch, diffusers, transformers) and open-clip-torch's merge list (README's test
command installs both); downloads nothing.

  python benchmarks/sd_parity.py --folder=/tmp/sd15_random            # builds the folder once (about 4.3 GB)

1. build: SD 1.5's published sizes (U-Net, autoencoder and CLIP ViT-L/14 text encoder, configs as the Hub's
   `stable-diffusion-v1-5` folder has them) with diffusers' / transformers' random initialisation, parameter counts
   printed and checked against the published ones (859,520,964 / 83,653,863 / 123,060,480), saved as a diffusers
   folder (safetensors) with the real CLIP vocabulary and SD 1.5's PNDM scheduler config.
2. diffusers and 3. this project, each in its own process (peak memory is its own): the same prompt, empty negative
   prompt, the same initial latents, DPM-Solver++ 2M, --steps steps, guidance 7.5, --size x --size, float32.
   Each generates --repeats times: the first call includes this project's compilation (diffusers has none), the
   last is "seconds per image"; compile time = first - last.
4. the image difference (max abs, [0, 1] range) and the table. Speed is a ratio measured in one run, side by side;
   the absolute seconds drift with the machine (shared/ENVIRONMENT.md).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

PUBLISHED = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32, norm_eps=1e-5,
            flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu")
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
            bos_token_id=0, eos_token_id=2, pad_token_id=1)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)
PROMPT = "an astronaut riding a horse on the moon, photograph"


def build(folder: str) -> dict:
    import importlib.util

    import diffusers
    import torch
    import transformers

    from diffusion_jax.text.clip_bpe import ClipTokenizer

    torch.manual_seed(0)
    parts = {"unet": diffusers.UNet2DConditionModel(**UNET), "vae": diffusers.AutoencoderKL(**VAE),
             "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT))}
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    for k, n in counts.items():
        print(f"{k}: {n:,} parameters (published {PUBLISHED[k]:,})")
        assert n == PUBLISHED[k], f"{k} has {n:,} parameters, not SD 1.5's {PUBLISHED[k]:,}"
    bpe = os.path.join(importlib.util.find_spec("open_clip").submodule_search_locations[0],
                       "bpe_simple_vocab_16e6.txt.gz")
    ClipTokenizer.from_bpe_file(bpe).save(os.path.join(folder, "tokenizer"))
    pipe = diffusers.StableDiffusionPipeline(
        **parts, tokenizer=transformers.CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
        scheduler=diffusers.PNDMScheduler.from_config(SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return counts


def latents(size: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, size // 8, size // 8, 4)).astype(np.float32)


def run_diffusers(folder: str, steps: int, size: int, repeats: int, out: str) -> dict:
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, scheduler=diffusers.DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler"),
        safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    x = torch.tensor(latents(size).transpose(0, 3, 1, 2))
    seconds = []
    for _ in range(repeats):
        start = time.time()
        with torch.no_grad():
            image = pipe(PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=7.5, latents=x,
                         height=size, width=size, output_type="np").images
        seconds.append(time.time() - start)
    np.save(out, image)
    return {"seconds": seconds, "torch": torch.__version__, "threads": torch.get_num_threads()}


def run_ours(folder: str, steps: int, size: int, repeats: int, out: str) -> dict:
    import jax

    from diffusion_jax import api

    start = time.time()
    sd = api.StableDiffusion.load(folder)
    load = time.time() - start
    seconds = []
    for _ in range(repeats):
        start = time.time()
        image = sd(PROMPT, "", steps=steps, guidance=7.5, sampler="dpmpp_2m", latents=latents(size), height=size,
                   width=size, output="float")
        seconds.append(time.time() - start)
    np.save(out, image)
    return {"seconds": seconds, "load_seconds": load, "jax": jax.__version__, "backend": jax.default_backend()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stage", choices=("diffusers", "ours"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # a child process: one side, its own peak memory
        out = os.path.join(args.folder, f"bench_{args.stage}.npy")
        result = (run_diffusers if args.stage == "diffusers" else run_ours)(
            args.folder, args.steps, args.size, args.repeats, out)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print("RESULT " + json.dumps(result))
        return
    if not os.path.exists(os.path.join(args.folder, "model_index.json")):
        build(args.folder)
    results = {}
    for stage in ("diffusers", "ours"):
        proc = subprocess.run([sys.executable, __file__, f"--folder={args.folder}", f"--steps={args.steps}",
                               f"--size={args.size}", f"--repeats={args.repeats}", f"--stage={stage}"],
                              capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{stage} failed:\n{proc.stderr[-3000:]}")
        results[stage] = json.loads(line[0][len("RESULT "):])
    images = {k: np.load(os.path.join(args.folder, f"bench_{k}.npy")) for k in results}
    difference = float(np.abs(images["ours"] - images["diffusers"]).max())
    d, o = results["diffusers"], results["ours"]
    print(f"SD 1.5 sizes, random weights, {args.size}x{args.size}, DPM-Solver++ 2M, {args.steps} steps, guidance 7.5,"
          f" float32, {os.cpu_count()} CPU cores")
    print(f"image difference |ours - diffusers|: {difference:.2e} (max abs, [0, 1])")
    print(f"seconds per image (last of {args.repeats}): diffusers {d['seconds'][-1]:.1f}, ours {o['seconds'][-1]:.1f}"
          f"  -> ours / diffusers = {o['seconds'][-1] / d['seconds'][-1]:.2f}")
    print(f"this project's compile time: {o['seconds'][0] - o['seconds'][-1]:.1f} s (first call {o['seconds'][0]:.1f}"
          f" s); load {o['load_seconds']:.1f} s")
    print(f"peak memory (RSS of its own process): diffusers {d['peak_rss_gb']:.1f} GB, ours {o['peak_rss_gb']:.1f} GB")
    print(json.dumps({"difference": difference, **results}))


if __name__ == "__main__":
    main()
