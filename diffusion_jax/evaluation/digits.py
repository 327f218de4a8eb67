"""Scores for generated digits: does a sample show the digit it was asked for, and do samples look real?

Both use the project's digit classifier (`classifier.py`), trained on real training digits only:
its predictions give the class accuracy of a class-conditioned model, its penultimate features a Fréchet
distance to held-out real digits. Because that distance depends on the number of samples, it is reported
next to a real-vs-real floor measured at the same sample count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion_jax.evaluation.classifier import NUM_CLASSES, accuracy, check_images, check_labels, classify
from diffusion_jax.evaluation.fid import feature_statistics, frechet_distance_from_statistics


def evaluate_digit_samples(
    classifier_params: Any,
    samples: Any,
    requested_labels: Any,
    heldout_images: Any,
    reference_images: Any,
) -> dict[str, Any]:
    """Scores `samples` [N, 32, 32, 1] generated for digits `requested_labels` [N].

    Samples are clipped to [-1, 1] first (as when shown or saved); the real digits must be in [-1, 1].

    Returns a dict with
      - `accuracy`: fraction of samples the classifier assigns to the requested digit;
      - `per_class_accuracy`: {digit: that fraction among samples requested as that digit}, for the
        digits present in `requested_labels`;
      - `fd`: Fréchet distance between the features of the samples and of `heldout_images` (real digits
        the classifier never trained on);
      - `fd_floor`: the same distance for `reference_images`, N real training digits chosen by the
        caller: what a perfect generator would score at this N (the estimate is biased by N);
      - `num_samples`: N.
    Raises ValueError for labels outside 0..9, a label count that differs from N, or a number of
    reference images that differs from N.
    """
    samples = np.clip(check_images(samples, "samples", check_range=False), -1.0, 1.0)
    num = samples.shape[0]
    requested = check_labels(requested_labels, num, "requested_labels")
    heldout_images = check_images(heldout_images, "heldout_images")
    reference_images = check_images(reference_images, "reference_images")
    if reference_images.shape[0] != num:
        raise ValueError(f"reference_images must hold as many digits as samples ({num}) for a comparable "
                         f"fd_floor, got {reference_images.shape[0]}")

    logits, sample_features = classify(classifier_params, samples)
    _, heldout_features = classify(classifier_params, heldout_images)
    _, reference_features = classify(classifier_params, reference_images)

    correct = np.argmax(logits, axis=-1) == requested
    per_class = {int(d): float(np.mean(correct[requested == d]))
                 for d in range(NUM_CLASSES) if np.any(requested == d)}
    heldout_stats = feature_statistics(heldout_features, "heldout_images features")
    return {
        "accuracy": float(np.mean(correct)),
        "per_class_accuracy": per_class,
        "fd": frechet_distance_from_statistics(*feature_statistics(sample_features, "samples features"),
                                               *heldout_stats),
        "fd_floor": frechet_distance_from_statistics(
            *feature_statistics(reference_features, "reference_images features"), *heldout_stats),
        "num_samples": int(num),
    }


def classifier_heldout_accuracy(params: Any, heldout_images: Any, heldout_labels: Any) -> float:
    """Fraction of real held-out digits the classifier gets right: how far its judgement can be trusted."""
    return accuracy(params, check_images(heldout_images, "heldout_images"),
                    check_labels(heldout_labels, np.shape(heldout_images)[0], "heldout_labels"))
