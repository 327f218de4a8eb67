"""Generated images on disk: PNG grids (one row per label or prompt, written with Pillow) and sample files."""
import json
import os
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def save_grid(path: str, images: np.ndarray, rows: Sequence[np.ndarray], *, row_titles: Optional[Sequence[str]] = None,
              scale: int = 2, pad: int = 2, title_width: int = 0) -> None:
    """Writes uint8 images [N,H,W,C] (C = 1 or 3) as a grid: row r shows images[rows[r]] left to right.

    `row_titles` (e.g. digits or prompts) are drawn in a left margin of `title_width` pixels (auto when 0).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"save_grid needs uint8 images [N,H,W,1|3], got {images.dtype} {images.shape}")
    h, w = images.shape[1] * scale, images.shape[2] * scale
    cols = max((len(r) for r in rows), default=1)
    if row_titles is not None and not title_width:
        title_width = 8 + 6 * max(len(t) for t in row_titles)
    canvas = Image.new("RGB", (title_width + cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for r, idx in enumerate(rows):
        y = pad + r * (h + pad)
        if row_titles is not None:
            draw.text((4, y + h // 2 - 5), row_titles[r], fill=(230, 230, 230))
        for c, i in enumerate(idx):
            img = images[i]
            img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
            tile = Image.fromarray(img).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (title_width + pad + c * (w + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def write_samples(path: str, images_u8: np.ndarray, arrays: dict, info: dict, rows: Sequence[np.ndarray],
                  row_titles: Optional[Sequence[str]] = None) -> None:
    """Writes generated images as `path` (npz: `images` plus `arrays`), `info` as JSON beside it (`x.npz` ->
    `x.json`: how they were drawn) and a PNG grid beside it (`x.png`, `rows` as in `save_grid`).

    Never destroys an earlier result: an existing npz and its JSON are moved aside under one time stamp
    (`x-YYYYmmdd-HHMMSS.npz|json`) before the new ones are renamed into place; both are written to temporary files
    first, so a crash leaves the old result or the new one, never half of one.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, images=images_u8, **arrays)
    info_path = info_path_of(path)
    if os.path.exists(path):
        stamp = time.strftime("-%Y%m%d-%H%M%S")
        os.replace(path, path[:-4] + stamp + ".npz")
        if os.path.exists(info_path):
            os.replace(info_path, path[:-4] + stamp + ".json")
    elif os.path.exists(info_path):  # a JSON without its npz describes nothing that exists any more
        os.remove(info_path)
    os.replace(tmp, path)
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    save_grid(path[:-4] + ".png", images_u8, rows, row_titles=row_titles)


def info_path_of(sample_path: str) -> str:
    """The JSON beside a samples npz that says how it was drawn (`samples.npz` -> `samples.json`)."""
    return sample_path[:-4] + ".json"
