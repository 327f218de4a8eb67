"""CLIP's BPE tokenizer (text/clip_bpe.py) gives transformers' CLIPTokenizer ids (issue 25, item 2).

The vocabulary is never committed: it is built from OpenAI's merge list as the pinned `open-clip-torch==3.3.0` wheel
ships it (installed `--no-deps` by the README's test command; conftest.py's `bpe_file` checks its sha256), written as
a diffusers `tokenizer/` folder, and read by both tokenizers.
"""
import json
import os
import random

import numpy as np
import pytest

from diffusion_jax.text.clip_bpe import ClipTokenizer, TokenizerFolderError, normalize, split_words

def _prompts(n: int, seed: int = 0) -> list:
    """Varied prompts: captions, case, punctuation, digits, contractions, accents (composed and not), CJK, Greek,
    emoji, whitespace runs, control and zero-width characters, HTML entities, literal special tokens, long texts."""
    rng = random.Random(seed)
    words = ("a photo of a cat", "An astronaut riding a HORSE", "oil painting", "Trending on ArtStation", "8k",
             "hyper-realistic", "don't", "IT'S", "we'll", "they're", "you've", "I'm", "he'd", "'re'", "rock'n'roll",
             "café", "cafe\u0301", "naïve", "Ångström", "Straße", "ΟΔΟΣ Σίσυφος", "東京タワー", "北京", "한국어",
             "हिन्दी", "العربية", "😀🚀", "👩‍🚀", "½ ² ③", "3.14159", "1,000,000", "v2.1", "#hashtag", "@user",
             "https://example.com/a?b=c", "&amp; &lt;3", "<|endoftext|>", "<|startoftext|>x", "C++", "x^2",
             "a\tb\nc", "  spaced   out  ", "\u3000ideo\u3000space", "zero\u200bwidth", "ctrl\x1cchar", "NBSP\xa0",
             "!!!", "...", "—em—dash", "«quoted»", "“smart” ‘quotes’", "it’s", "(parens)", "[b]", "{c}", "~_~",
             "İstanbul", "ǅemal", "ﬁne", "Ⅻ", "x\u0301\u0302", "O'Neil's", "1990s", "2nd", "A1B2C3", "__init__")
    out = ["", " ", "a", "A", "!", "<|endoftext|>", "a " * 100, "word " * 76, "word " * 75, "🚀" * 30]
    while len(out) < n:
        k = rng.choice((1, 2, 3, 5, 8, 40))
        parts = [rng.choice(words) for _ in range(k)]
        sep = rng.choice((" ", ", ", "", "  ", "\n", " | "))
        text = sep.join(parts)
        if rng.random() < 0.2:
            text = text.upper() if rng.random() < 0.5 else text.title()
        out.append(text)
    return out


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"], ids=["sd1_pad_eos", "sd2_pad_bang"])
@pytest.mark.parametrize("files", ["vocab_merges", "tokenizer_json"])
def test_ids_equal_transformers_clip_tokenizer(bpe_file, tmp_path, pad, files):
    from transformers import CLIPTokenizer

    ours = ClipTokenizer.from_bpe_file(bpe_file, pad_token=pad)
    assert ours.vocab_size == 49408 and ours.pad_id == (49407 if pad == "<|endoftext|>" else 0)
    folder = str(tmp_path / "tokenizer")
    ours.save(folder)
    theirs = CLIPTokenizer.from_pretrained(folder)
    if files == "tokenizer_json":  # transformers 5 saves tokenizer.json; a folder may hold only that
        theirs.save_pretrained(str(tmp_path / "saved"))
        folder = str(tmp_path / "saved")
        for name in ("vocab.json", "merges.txt"):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        assert os.path.exists(os.path.join(folder, "tokenizer.json"))
    loaded = ClipTokenizer.load(folder)
    prompts = _prompts(1200)
    expected = np.asarray(theirs(prompts, padding="max_length", max_length=77, truncation=True).input_ids)
    with pytest.warns(UserWarning, match="cut to 75"):
        got = loaded.encode(prompts)
    assert got.shape == expected.shape == (1200, 77) and got.dtype == np.int32
    differ = [i for i in range(len(prompts)) if not np.array_equal(got[i], expected[i])]
    assert not differ, f"{len(differ)} prompts differ, first {prompts[differ[0]]!r}: {got[differ[0]][:12]} vs " \
                       f"{expected[differ[0]][:12]}"
    with pytest.warns(UserWarning):  # built from the file = loaded from the folder
        assert np.array_equal(ours.encode(prompts[:20]), got[:20])


def test_known_ids_rules_and_truncation(bpe_file):
    tok = ClipTokenizer.from_bpe_file(bpe_file)
    assert tok.encode(["a photo of a cat"])[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]
    assert tok.encode([""])[0, :3].tolist() == [49406, 49407, 49407]
    assert normalize("ΟΔΟΣ  A\t\u3000b") == "οδοσ a b"  # per-character lower-case, whitespace runs collapsed
    assert split_words("don't 12 ab!? 'rex <|endoftext|>,") == ["don", "'t", "1", "2", "ab", "!?", "'re", "x", "<|",
                                                                "endoftext", "|>", ","]
    with pytest.warns(UserWarning, match="prompt at index 1 has 80 tokens, over the 75 that fit"):
        ids = tok.encode(["ok", "cat " * 80])
    assert ids[1, 0] == 49406 and ids[1, 76] == 49407 and (ids[1, 1:76] == 2368).all()


def test_small_vocabulary_for_tiny_models(bpe_file):
    tok = ClipTokenizer.from_bpe_file(bpe_file, num_merges=100)
    assert tok.vocab_size == 512 + 100 + 2
    assert tok.encode(["an astronaut"]).max() < tok.vocab_size


def test_bad_folders_and_prompts_are_named(bpe_file, tmp_path):
    with pytest.raises(TokenizerFolderError, match="no tokenizer files"):
        ClipTokenizer.load(str(tmp_path))
    tok = ClipTokenizer.from_bpe_file(bpe_file, num_merges=10)
    tok.save(str(tmp_path / "t"))
    os.remove(tmp_path / "t" / "merges.txt")
    with pytest.raises(TokenizerFolderError, match=r"merges.txt: missing"):
        ClipTokenizer.load(str(tmp_path / "t"))
    tok.save(str(tmp_path / "u"))
    (tmp_path / "u" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<none>"}))
    with pytest.raises(TokenizerFolderError, match="no '<none>' token"):
        ClipTokenizer.load(str(tmp_path / "u"))
    (tmp_path / "u" / "vocab.json").write_text("{oops")
    with pytest.raises(TokenizerFolderError, match="vocab.json: not readable JSON"):
        ClipTokenizer.load(str(tmp_path / "u"))
    with pytest.raises(TypeError, match="prompt at index 1 is int"):
        tok.encode(["fine", 3])
    with pytest.raises(TypeError, match="needs a list of str"):
        tok.encode("one string")
