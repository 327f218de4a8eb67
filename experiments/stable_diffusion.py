"""A pretrained Stable Diffusion 1.x / 2.x folder (diffusers' layout) run by this project's modules (issue 25).

  python -m diffusion_jax.main --config=experiments/stable_diffusion.py --config.pretrained=FOLDER --workdir=W \
      --mode=sample --config.sample.prompts="an astronaut riding a horse;a red fox in the snow"

writes W/samples/samples.npz (uint8 images and the prompts), samples.json (how they were drawn), samples.png (a grid)
and W/samples/samples_png/000.png, ... (one an image); an earlier result is moved aside, never overwritten.
Nothing is downloaded: FOLDER is a local copy (e.g. `huggingface-cli download stable-diffusion-v1-5/...` done by
you). The same from Python: `api.StableDiffusion.load(FOLDER)(prompts, ...)`.
"""
import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    if preset:
        raise ValueError(f"experiments/stable_diffusion.py has no presets, got {preset!r}")
    c = ml_collections.ConfigDict()
    c.task = "stable_diffusion"
    c.pretrained = ""  # the diffusers folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/)
    c.dtype = "float32"  # float32 | bfloat16 (parameters and compute)
    c.sample = ml_collections.ConfigDict(dict(
        prompts="",  # ';'-separated
        prompts_file="",  # one prompt a line
        negative_prompts="",  # ';'-separated, one for all or one per prompt; "" = none (the empty prompt)
        steps=50,
        guidance=7.5,
        sampler="",  # "" = the folder's scheduler; ddim | euler | dpmpp_2m | pndm | unipc
        seed=0,
        height=0,  # 0 = the folder's size (unet sample_size x the autoencoder's factor)
        width=0,
        output="",  # the npz path; "" = WORKDIR/samples/samples.npz
    ))
    return c
