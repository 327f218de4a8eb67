"""Helpers of the parity tests against torch implementations (issue 25): random weights and float64 noise floors."""
import os

import numpy as np
import torch


def randomize(model, seed: int = 0) -> None:
    """Every parameter drawn at random (norm scales around 1, weights scaled by their fan-in), so no mapping error
    hides behind an init value (a zero-initialised output layer or a unit norm scale would make a wrong mapping look
    right) and activations stay O(1), where an absolute tolerance means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2 and "embedding" not in name:  # fan-in scaled: activations stay O(1) through depth
                p.copy_(noise / np.sqrt(p[0].numel()))
            else:  # biases, norm shifts, embeddings
                p.copy_(0.3 * noise)


def floors(run, ours: np.ndarray) -> tuple:
    """(|ours - reference float64|, |reference float32 - reference float64|), max abs: `run(dtype)` gives the
    reference's output as NumPy; the second number is the reference's own float32 noise floor."""
    ref32, ref64 = (np.asarray(run(d), np.float64) for d in (torch.float32, torch.float64))
    return float(np.abs(np.asarray(ours, np.float64) - ref64).max()), float(np.abs(ref32 - ref64).max())


def save_random(model, folder: str, component: str):
    """`model` randomised (seed 0) and saved as `folder/component` (safetensors); returns it in eval mode."""
    model.eval()
    randomize(model)
    model.save_pretrained(os.path.join(folder, component))
    return model
