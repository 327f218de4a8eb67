"""The one conditioning contract every denoising backbone (U-Net, DiT, MMDiT) follows, written down and checked once.

A backbone is called as `model.apply(params, x, t, cond, train=False)`:
  x     [B, H, W, C] float: the noisy image (pixels or latents)
  t     [B]: the noise level in the model's timestep units, int (VP: 0..T-1) or float (flow: 1000 * t, t in [0, 1])
  cond  one of
        - labels [B] int: a class-conditional model (`num_classes` set); label `num_classes` is the null class of
          classifier-free guidance;
        - text {'tokens': [B, L, W], 'mask': [B, L] bool (True = real token), 'pooled': [B, D]}: a frozen text
          encoder's outputs (`text=True`); the empty caption's outputs are the null condition.
and returns the prediction [B, H, W, C] in float32. The diffusion task passes one example's null condition
(`null_cond`) with the same structure; guidance batches condition and null condition in one call.
"""
from typing import Any, Optional

TEXT_KEYS = frozenset({"tokens", "mask", "pooled"})


def check(cond: Any, *, num_classes: Optional[int], text: bool, model: str) -> None:
    """ValueError naming the backbone `model` when `cond` does not fit a model with these `num_classes` / `text`."""
    if text and num_classes is not None:
        raise ValueError(f"a {model} conditions on labels (num_classes) or on text (text=True), not both")
    if num_classes is not None:
        if cond is None or isinstance(cond, dict):
            raise ValueError(f"this {model} is class-conditional (num_classes set): pass int labels [B] "
                             "(num_classes = null)")
    elif text:
        if not isinstance(cond, dict) or set(cond) != TEXT_KEYS:
            raise ValueError(f"this {model} is text-conditional: pass cond={{'tokens': [B, L, W], 'mask': [B, L], "
                             f"'pooled': [B, D]}}, got {type(cond).__name__}"
                             + (f" with keys {sorted(cond)}" if isinstance(cond, dict) else ""))
