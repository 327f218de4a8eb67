"""Fréchet distance between two sets of features (the "FD" of FID, Heusel et al. 2017).

Each feature set is summarised by a Gaussian N(mu, Sigma) fitted to it, and the distance is

    d^2 = |mu_a - mu_b|^2 + Tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^{1/2}).

Here the features come from our own digit classifier (`classifier.py`), not Inception, so the numbers
are comparable only with each other, and only at equal sample counts (the estimate is biased upwards for
small N; compare against a real-vs-real floor at the same N).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def feature_statistics(features: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Returns the mean [D] and unbiased covariance [D, D] of `features` [N, D], in float64.

    Raises ValueError naming `name` for fewer than 2 rows, a shape other than [N, D] or non-finite values.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to fit a covariance, got {features.shape[0]}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_statistics(mu_a: Any, sigma_a: Any, mu_b: Any, sigma_b: Any) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (the FID formula of Heusel et al. 2017).

    Tr((S_a S_b)^{1/2}) is computed as Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}): the two matrices are similar,
    and the second is symmetric PSD, so two eigendecompositions give it exactly, with no complex
    parts to discard (the usual `sqrtm(S_a @ S_b)` route). Tiny negative results from rounding become 0.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    dim = mu_a.shape[0]
    if mu_a.shape != (dim,) or mu_b.shape != (dim,) or sigma_a.shape != (dim, dim) or sigma_b.shape != (dim, dim):
        raise ValueError(f"statistics must be means [D] and covariances [D, D] of one D; got mu_a {mu_a.shape}, "
                         f"sigma_a {sigma_a.shape}, mu_b {mu_b.shape}, sigma_b {sigma_b.shape}")
    root_a = _sqrt_psd(sigma_a)
    middle = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    trace_sqrt = np.sum(np.sqrt(np.clip(middle, 0.0, None)))
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to `features_a` [N_a, D] and `features_b` [N_b, D].

    Means and unbiased covariances in float64; see `frechet_distance_from_statistics`. Needs at least
    2 samples in each set and the same feature dimension D, else ValueError.
    """
    mu_a, sigma_a = feature_statistics(features_a, "features_a")
    mu_b, sigma_b = feature_statistics(features_b, "features_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"features_a and features_b must have the same dimension, got "
                         f"{mu_a.shape[0]} and {mu_b.shape[0]}")
    return frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b)
