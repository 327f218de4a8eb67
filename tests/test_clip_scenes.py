"""CLIP on two-digit scenes: the data path (several captions per scene, NegCLIP negatives), the binding test (a
bag-of-words encoder fails it), a tiny NegCLIP run end to end, and the config checks."""
import os

import numpy as np
import pytest

from diffusion_jax import datasets
from diffusion_jax.config import ConfigError, load_config
from diffusion_jax.data import captioned_digits as cd
from diffusion_jax.data import scenes
from diffusion_jax.trainers import clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments/clip_scenes.py:tiny")


@pytest.fixture(scope="module")
def task():
    config = load_config(TINY)
    config.train.hard_negatives = True
    return clip.ClipTask(config, clip.build_tokenizer(config))


def test_scene_negatives_keep_the_batch_shape_and_the_captions_form():
    neg = clip.scene_negatives(["a red 3 left of a green 7", "a blue four above a yellow 4"])
    assert neg.shape == (2, 3)
    assert list(neg[0]) == ["a green 3 left of a red 7", "a red 7 left of a green 3", "a red 3 right of a green 7"]
    # Written as the caption is (a word, then a numeral); equal digits: swapping them is the same scene, so that
    # slot repeats the colour swap.
    assert list(neg[1]) == ["a yellow four above a blue 4"] * 2 + ["a blue four below a yellow 4"]


def test_digit_negatives_replace_one_digit_each_and_never_name_a_heldout_pair():
    data = scenes.make_dataset("train", seed=0, num_examples=300, captions_per_image=4)
    captions = data["captions"][np.arange(300), np.arange(300) % 4]  # every form: direct, reversed, words
    neg = clip.scene_negatives(captions, replace_digits=True, rng=np.random.default_rng(0))
    assert neg.shape == (300, 5)
    np.testing.assert_array_equal(neg[:, :3], clip.scene_negatives(captions))
    np.testing.assert_array_equal(neg, clip.scene_negatives(captions, True, np.random.default_rng(0)))
    assert not np.array_equal(neg[:, 3:], clip.scene_negatives(captions, True, np.random.default_rng(1))[:, 3:])
    new_digits = set()
    for caption, negatives in zip(captions, neg):
        digits, colors, relation = scenes.parse_prompt(caption)
        for text in negatives:
            assert text != caption and scenes.caption_numerals(text) == scenes.caption_numerals(caption), text
        for j in range(2):
            d, c, r = scenes.parse_prompt(negatives[3 + j])
            assert (c, r) == (colors, relation), negatives[3 + j]
            assert d[1 - j] == digits[1 - j] and d[j] != digits[j], negatives[3 + j]
            assert not cd.is_heldout(d[j], c[j]), negatives[3 + j]
            new_digits.add(d[j])
    assert new_digits == set(range(10))


def test_digit_negatives_reach_the_batch_and_need_hard_negatives():
    config = load_config(TINY)
    config.train.digit_negatives = True
    with pytest.raises(ConfigError, match="digit_negatives"):
        clip.validate_config(config)
    config.train.hard_negatives = True
    clip.validate_config(config)
    task = clip.ClipTask(config, clip.build_tokenizer(config))
    batch = task.train_batch(task.data("train", model_images=False), 0)
    assert batch["neg_ids"].shape == (config.train.batch_size, 5, config.model.max_length)


def test_train_batch_draws_one_caption_per_example_from_seed_and_step(task):
    data = task.data("train", model_images=False)
    assert data["ids"].shape[1] == task.config.data.captions_per_image == 2 == data["captions"].shape[1]
    b0, again, b1 = task.train_batch(data, 0), task.train_batch(data, 0), task.train_batch(data, 1)
    for key in ("image", "ids", "mask", "neg_ids"):
        np.testing.assert_array_equal(b0[key], again[key])
    assert b0["neg_ids"].shape == (task.config.train.batch_size, 3, task.config.model.max_length)
    # Each example's negatives are its drawn caption's, in that caption's form: as many digit words, same order.
    words = [i for i, w in enumerate(task.tokenizer.vocab) if w in cd.DIGIT_WORDS]
    for ids, neg in zip(b0["ids"], b0["neg_ids"]):
        assert all(np.isin(n, words).sum() == np.isin(ids, words).sum() for n in neg)
        assert not any(np.array_equal(n, ids) for n in neg)
    assert b0["ids"].shape == (task.config.train.batch_size, task.config.model.max_length)
    assert b0["image"].shape[1:] == (64, 64, 3) and b0["image"].dtype == np.float32
    assert not np.array_equal(b0["ids"], b1["ids"])
    # Over many steps both caption forms (direct and reversed) are drawn.
    first = [task.train_batch(data, s)["ids"][0] for s in range(8)]
    assert len({tuple(f) for f in first}) > 1


class _BagOfWords:
    """An 'encoder' whose image embedding is the bag of words of the scene's true caption, and whose text
    embedding is the bag of words of the text: what ARO says CLIP behaves like."""

    def __init__(self, task, data):
        self.task, self.data = _FakeTask(data), data
        self.vocab = {w: i for i, w in enumerate(task.tokenizer.vocab)}

    def _bag(self, texts):
        out = np.zeros((len(texts), len(self.vocab)))
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, self.vocab[w]] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def images(self, index):
        d = self.data
        return self._bag([scenes.canonical_caption(*s) for s in zip(d["digits"][index], d["colors"][index],
                                                                    d["relation"][index])])

    def embed_texts(self, texts):
        return self._bag(texts), None, None

    def text(self, ids, mask):
        return self.images(np.arange(len(ids))), None


class _FakeTask:
    def __init__(self, data):
        self._data = data

    def data(self, split):
        return dict(self._data, image=np.arange(len(self._data["relation"])))


def test_binding_test_fails_a_bag_of_words_encoder(task):
    data = task.data("test")
    result = datasets.Scenes().clip_eval(_BagOfWords(task, data))
    for split in ("seen", "heldout"):
        # Swapped colours or digits use the same words: a bag of words ties, which is not a win.
        assert result[f"{split}_binding_swap_colors_accuracy"] == 0.0
        assert result[f"{split}_binding_swap_digits_accuracy"] == 0.0
        assert result[f"{split}_binding_flip_relation_accuracy"] == 1.0  # 'left' vs 'right' are different words
        assert result[f"{split}_binding_all_accuracy"] == 0.0
    assert {"image_to_text_recall@1", "seen_zero_shot_all_accuracy"} <= set(result)


def test_tiny_negclip_run_writes_the_binding_figures(tmp_path):
    config = load_config(TINY)
    config.train.hard_negatives = True
    config.train.num_steps = 40
    clip.train(config, str(tmp_path))
    result = clip.evaluate(config, str(tmp_path))
    for split in ("seen", "heldout"):
        for kind in (*scenes.HARD_NEGATIVE_KINDS, "all"):
            assert 0.0 <= result[f"{split}_binding_{kind}_accuracy"] <= 1.0
    # 40 tiny steps already read the relation's axis (chance 0.5 between 'left of' and 'above' forms).
    assert result["seen_zero_shot_relation_accuracy"] > 0.6, result
    encoder = clip.load(config, str(tmp_path))
    assert encoder.embed_images(np.zeros((3, 64, 64, 3), np.uint8)).shape == (3, config.model.embed_dim)
    with pytest.raises(ValueError, match=r"uint8 \[N, 64, 64, 3\]"):
        encoder.embed_images(np.zeros((3, 32, 32, 3), np.uint8))


@pytest.mark.parametrize("key, value, message", [
    ("data.dataset", "cifar", "data.dataset"),
    ("model.pool", "max", "model.pool"),
    ("data.captions_per_image", 9, "data.captions_per_image"),
])
def test_bad_scene_config_names_the_key(key, value, message):
    config = load_config(TINY)
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=message):
        clip.validate_config(config)


def test_hard_negatives_need_scenes_and_infonce():
    config = load_config(os.path.join(ROOT, "experiments/clip_digits.py:tiny"))
    config.train.hard_negatives = True
    with pytest.raises(ConfigError, match="hard_negatives"):
        clip.validate_config(config)
