"""Tests of the word-level caption tokenizer (diffusion_jax/text/tokenizer.py)."""
import json
import re
import warnings

import numpy as np
import pytest

from diffusion_jax.text.tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, Tokenizer,
                                          TokenizerWarning, normalize)

CAPTIONS = ["a red 3 in the top left", "a small cyan seven in the top-left corner", "A big blue 0, bottom right."]


@pytest.fixture
def tok():
    return Tokenizer.build(CAPTIONS, max_length=12)


def test_vocab_specials_then_sorted_words_and_order_independent(tok):
    assert tok.vocab[:4] == SPECIAL_TOKENS == ("<pad>", "<unk>", "<bos>", "<eos>")
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    words = ["0", "3", "a", "big", "blue", "bottom", "corner", "cyan", "in", "left", "red", "right", "seven", "small",
             "the", "top"]
    assert list(tok.vocab[4:]) == words
    assert tok.vocab_size == 4 + len(words)
    assert Tokenizer.build(CAPTIONS[::-1], max_length=12) == tok


def test_min_count_drops_rare_words():
    t = Tokenizer.build(["a red 3", "a blue 3", "a red 5"], min_count=2)
    assert list(t.vocab[4:]) == ["3", "a", "red"]
    with pytest.raises(ValueError, match="min_count"):
        Tokenizer.build(["a"], min_count=0)


def test_hyphen_and_punctuation_normalisation(tok):
    assert normalize("Top-Left, corner!") == ["top", "left", "corner"]
    a, ma = tok.encode_one("a red 3 in the top-left")
    b, mb = tok.encode_one("a red 3 in the top left")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)


def test_encode_bos_eos_padding_mask(tok):
    ids, mask = tok.encode(["a red 3", "the top left corner"])
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == np.int32 and mask.dtype == np.bool_
    v = tok.token_id
    np.testing.assert_array_equal(ids[0, :5], [BOS_ID, v("a"), v("red"), v("3"), EOS_ID])
    assert (ids[0, 5:] == PAD_ID).all()
    np.testing.assert_array_equal(mask[0], [True] * 5 + [False] * 7)
    np.testing.assert_array_equal(mask[1], [True] * 6 + [False] * 6)
    assert ids[1, 5] == EOS_ID


def test_round_trip(tok):
    for text in CAPTIONS:
        ids, _ = tok.encode_one(text)
        assert tok.decode(ids) == " ".join(normalize(text))
    assert tok.decode(tok.encode_one("a small cyan seven in the top-left corner")[0]) == \
        "a small cyan seven in the top left corner"


def test_unknown_words_map_to_unk_and_are_reported(tok):
    texts = ["a purple 3", "a red 3", "a huge purple 9"]
    assert tok.unknown_words(texts) == {"a purple 3": ["purple"], "a huge purple 9": ["huge", "purple", "9"]}
    with pytest.warns(TokenizerWarning, match="purple") as rec:
        ids, _ = tok.encode(texts)
    assert "huge" in str(rec[0].message)
    np.testing.assert_array_equal(ids[0, :5], [BOS_ID, tok.token_id("a"), UNK_ID, tok.token_id("3"), EOS_ID])
    assert tok.decode(ids[0]) == "a <unk> 3"


def test_all_unknown_text_is_an_error(tok):
    with pytest.raises(ValueError, match="'purple elephant'"):
        tok.encode(["a red 3", "purple elephant"])


@pytest.mark.parametrize("text", ["", "   ", " -- ,. !"])
def test_empty_text_is_an_error(tok, text):
    with pytest.raises(ValueError, match="index 1.*" + re.escape(repr(text))):
        tok.encode(["a red 3", text])
    with pytest.raises(ValueError, match="no words"):
        Tokenizer.build([text])


def test_non_string_is_a_type_error(tok):
    with pytest.raises(TypeError, match="index 2 is int"):
        tok.encode(["a red 3", "a red 3", 7])
    with pytest.raises(TypeError, match="index 0 is bytes"):
        Tokenizer.build([b"a red 3"])
    with pytest.raises(TypeError, match="encode_one"):
        tok.encode("a red 3")
    with pytest.raises(TypeError, match="NoneType"):
        tok.encode_one(None)


def test_truncation_keeps_eos_and_warns(tok):
    t = Tokenizer.build(CAPTIONS, max_length=5)
    long = "a small cyan seven in the top left corner"
    with pytest.warns(TokenizerWarning, match="truncated.*a small cyan seven"):
        ids, mask = t.encode_one(long)
    np.testing.assert_array_equal(ids, [BOS_ID, t.token_id("a"), t.token_id("small"), t.token_id("cyan"), EOS_ID])
    assert mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text that exactly fits does not warn
        t.encode_one("a small cyan")


def test_save_load_equal(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(str(path))
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["max_length"] == 12 and data["vocab"] == list(tok.vocab)
    loaded = Tokenizer.load(str(path))
    assert loaded == tok and loaded.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(loaded.encode(CAPTIONS)[0], tok.encode(CAPTIONS)[0])
    assert loaded != Tokenizer.build(CAPTIONS, max_length=13)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(str(bad))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "diffusion_jax.text.Tokenizer", "version": 99, "max_length": 8,
                               "vocab": list(SPECIAL_TOKENS)}))
    with pytest.raises(ValueError, match="old.json.*version 99"):
        Tokenizer.load(str(old))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "diffusion_jax.text.Tokenizer", "version": 1, "max_length": 8,
                                  "vocab": ["<unk>", "<pad>", "<bos>", "<eos>", "a"]}))
    with pytest.raises(ValueError, match="broken.json.*special tokens"):
        Tokenizer.load(str(broken))


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(ValueError, match="id 999"):
        tok.decode([BOS_ID, 999, EOS_ID])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 3), np.int32))
