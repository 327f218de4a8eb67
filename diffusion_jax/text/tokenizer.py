"""Word-level tokenizer for the captions of the CLIP phase.

The captions are generated programmatically from a small grammar ("a red 3 in the top left", "a small cyan seven in
the top-left corner"), so the vocabulary is closed and tiny. Word level is the right choice for such a vocabulary:
every word is exactly one token, there is no subword ambiguity (the same word always gets the same single id, so a
text encoder sees "seven" as one symbol rather than as pieces), and the vocabulary can be read and checked by eye.
A word the vocabulary does not know maps to `<unk>` and is reported, never silently split.

Normalisation (`normalize`): lower-case, then every run of letters or digits is a word and everything else
(whitespace, hyphens, underscores, slashes, punctuation) separates words and is dropped. So "top-left" and
"top left" give the same tokens ["top", "left"], and "A red 3, top-left." gives ["a", "red", "3", "top", "left"].

Ids: the special tokens come first, `<pad>`=0, `<unk>`=1, `<bos>`=2, `<eos>`=3, then the words **sorted
alphabetically** (not by first appearance), so the vocabulary does not depend on the order of the captions.
An encoded text is `<bos> w1 ... wk <eos> <pad> ...` of length `max_length`; its mask is True up to and including
`<eos>`. Too long texts are cut to `max_length - 2` words, keeping `<eos>`, with a warning.
"""
import hashlib
import json
import os
import re
import warnings
from collections import Counter
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FORMAT_VERSION = 1
_FORMAT_NAME = "diffusion_jax.text.Tokenizer"
_WORD = re.compile(r"[^\W_]+")  # runs of letters or digits (Unicode-aware); all else separates words


class TokenizerWarning(UserWarning):
    """Warning for texts that were truncated or held words outside the vocabulary."""


def normalize(text: str) -> List[str]:
    """Splits a caption into lower-case words; hyphens and punctuation separate words and are dropped.

    Why: captions from the grammar write "top-left" and "top left" interchangeably; both must give the same tokens.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}: {text!r}")
    return _WORD.findall(text.lower())


def _check_texts(texts: Sequence[str], where: str) -> Tuple[List[str], List[List[str]]]:
    """Returns (texts as a list, their words); raises TypeError (type and index) or ValueError (the empty text)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"{where} needs a list of str, got {type(texts).__name__}"
                        + (" (use encode_one for a single text)" if isinstance(texts, str) else ""))
    texts = list(texts)
    words = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{where}: text at index {i} is {type(text).__name__}, not str: {text!r}")
        w = normalize(text)
        if not w:
            raise ValueError(f"{where}: text at index {i} has no words (empty, or only whitespace/punctuation): "
                             f"{text!r}")
        words.append(w)
    return texts, words


class Tokenizer:
    """Closed-vocabulary word tokenizer: text -> fixed-length int32 ids with bos/eos and a padding mask."""

    def __init__(self, vocab: Sequence[str], max_length: int = 16):
        """Wraps a vocabulary list whose first four entries are `<pad>`, `<unk>`, `<bos>`, `<eos>`.

        Usually made by `Tokenizer.build(captions)` or `Tokenizer.load(path)`.
        """
        vocab = tuple(vocab)
        if vocab[:4] != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with the special tokens {list(SPECIAL_TOKENS)}, got {list(vocab[:4])}")
        for i, word in enumerate(vocab):
            if not isinstance(word, str):
                raise TypeError(f"vocab entry at index {i} is {type(word).__name__}, not str: {word!r}")
        dup = [w for w, c in Counter(vocab).items() if c > 1]
        if dup:
            raise ValueError(f"vocab has duplicate entries: {sorted(dup)}")
        bad = [w for w in vocab[4:] if normalize(w) != [w]]
        if bad:
            raise ValueError(f"vocab entries must be single normalised words (see normalize), got {bad}")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3 (<bos>, one word, <eos>), got {max_length!r}")
        self._vocab = vocab
        self._ids = {w: i for i, w in enumerate(vocab)}
        self.max_length = max_length

    @classmethod
    def build(cls, texts: Sequence[str], *, max_length: int = 16, min_count: int = 1) -> "Tokenizer":
        """Builds the vocabulary from captions: every normalised word seen at least `min_count` times, sorted.

        Sorted order makes the ids independent of the order (or shuffling) of the captions.
        """
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        _, words = _check_texts(texts, "Tokenizer.build")
        if not words:
            raise ValueError("Tokenizer.build needs at least one text, got none")
        counts = Counter(w for ws in words for w in ws)
        kept = sorted(w for w, c in counts.items() if c >= min_count)
        return cls(SPECIAL_TOKENS + tuple(kept), max_length=max_length)

    @property
    def vocab(self) -> Tuple[str, ...]:
        """The vocabulary, index = token id (special tokens first)."""
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the size of the text encoder's embedding table)."""
        return len(self._vocab)

    def token_id(self, word: str) -> int:
        """Id of one vocabulary entry (a normalised word or a special token); `<unk>`'s id if unknown."""
        return self._ids.get(word, UNK_ID)

    def unknown_words(self, texts: Sequence[str]) -> Dict[str, List[str]]:
        """Maps each text that holds out-of-vocabulary words to those words (normalised, in order, repeats kept).

        Texts whose words are all known are left out, so an empty dict means nothing maps to `<unk>`.
        """
        out = {}
        for text, words in zip(*_check_texts(texts, "Tokenizer.unknown_words")):
            unknown = [w for w in words if w not in self._ids]
            if unknown:
                out[text] = unknown
        return out

    def encode(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Encodes texts to ids int32 [N, max_length] (`<bos>` words `<eos>` `<pad>`...) and mask bool [N, max_length].

        Unknown words become `<unk>` with a warning listing them; a text made only of unknown words is an error
        (it would carry no information). Texts longer than `max_length - 2` words are truncated, keeping `<eos>`,
        with a warning naming the text.
        """
        return self._encode(texts, "Tokenizer.encode")

    def _encode(self, texts: Sequence[str], where: str, stacklevel: int = 3) -> Tuple[np.ndarray, np.ndarray]:
        """`encode`, with warnings attributed `stacklevel` frames up (the user's call site)."""
        texts, words = _check_texts(texts, where)
        ids = np.full((len(words), self.max_length), PAD_ID, dtype=np.int32)
        unknown, truncated = {}, []
        room = self.max_length - 2
        for n, (text, ws) in enumerate(zip(texts, words)):
            row = [self._ids.get(w, UNK_ID) for w in ws]
            bad = [w for w, i in zip(ws, row) if i == UNK_ID]
            if bad:
                if len(bad) == len(ws):
                    raise ValueError(f"{where}: text at index {n} has only unknown words {bad}: {text!r}")
                unknown[text] = bad
            if len(row) > room:
                truncated.append(text)
                row = row[:room]
            ids[n, :len(row) + 2] = [BOS_ID, *row, EOS_ID]
        if unknown:
            warnings.warn(f"{where}: words outside the vocabulary map to {UNK}: {unknown}",
                          TokenizerWarning, stacklevel=stacklevel)
        if truncated:
            warnings.warn(f"{where}: {len(truncated)} text(s) longer than max_length={self.max_length} "
                          f"({room} words + {BOS}/{EOS}) were truncated: {truncated}", TokenizerWarning,
                          stacklevel=stacklevel)
        return ids, ids != PAD_ID

    def encode_one(self, text: str) -> Tuple[np.ndarray, np.ndarray]:
        """Encodes one text to ids int32 [max_length] and mask bool [max_length] (see `encode`)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode_one: text must be str, got {type(text).__name__}: {text!r}")
        ids, mask = self._encode([text], "Tokenizer.encode_one")
        return ids[0], mask[0]

    def encode_empty(self) -> Tuple[np.ndarray, np.ndarray]:
        """The empty caption `<bos> <eos>` as ids int32 [max_length] and mask bool [max_length].

        `encode` refuses empty text (a user's empty prompt is a mistake); this is the deliberate "no caption" that
        classifier-free guidance trains and samples with.
        """
        ids = np.full(self.max_length, PAD_ID, dtype=np.int32)
        ids[:2] = (BOS_ID, EOS_ID)
        return ids, ids != PAD_ID

    def decode(self, ids: Sequence[int]) -> str:
        """Turns one row of ids back into normalised text: skips `<bos>`/`<pad>`, stops at `<eos>`, shows `<unk>`.

        For in-vocabulary text, `decode(encode_one(t)[0]) == " ".join(normalize(t))`.
        """
        arr = np.asarray(ids)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"Tokenizer.decode needs a 1-D integer id sequence, got {arr.dtype} shape {arr.shape}")
        words = []
        for i in arr.tolist():
            if not 0 <= i < len(self._vocab):
                raise ValueError(f"Tokenizer.decode: id {i} is outside the vocabulary [0, {len(self._vocab)})")
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self._vocab[i])
        return " ".join(words)

    def save(self, path: str) -> None:
        """Writes the tokenizer as JSON (format name, version, max_length, vocab list), creating parent folders."""
        data = {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "max_length": self.max_length,
                "vocab": list(self._vocab)}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)  # never leave a half-written tokenizer behind

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """Reads a tokenizer written by `save`; every error names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer file {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT_NAME:
            raise ValueError(f"tokenizer file {path} is not a {_FORMAT_NAME} file (no matching 'format' field)")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"tokenizer file {path} has version {data.get('version')!r}; "
                             f"this code reads version {FORMAT_VERSION}")
        missing = [k for k in ("max_length", "vocab") if k not in data]
        if missing or not isinstance(data["vocab"], list):
            raise ValueError(f"tokenizer file {path} lacks fields {missing or ['vocab (a list)']}")
        try:
            return cls(data["vocab"], max_length=data["max_length"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"tokenizer file {path} is invalid: {e}") from e

    def fingerprint(self) -> str:
        """sha256 (hex) of the vocabulary and max_length: what a model conditioned on this tokenizer records."""
        data = json.dumps({"max_length": self.max_length, "vocab": list(self._vocab)}, ensure_ascii=False)
        return hashlib.sha256(data.encode("utf-8")).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._vocab == other._vocab and self.max_length == other.max_length

    def __hash__(self) -> int:
        return hash((self._vocab, self.max_length))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
