"""CLIP's byte-level BPE tokenizer, as Stable Diffusion folders ship it and transformers' `CLIPTokenizer` applies it.

Reads a diffusers folder's `tokenizer/` (`vocab.json` + `merges.txt`, or `tokenizer.json`, with the special tokens
from `tokenizer_config.json` / `special_tokens_map.json`) and gives the same ids as transformers 5's
`CLIPTokenizer(...)(texts, padding="max_length", max_length=77, truncation=True)`, the call diffusers' pipelines
make (tests/test_clip_bpe.py checks 1,000+ varied prompts against it). The rules, in order:

1. the special tokens (`<|startoftext|>`, `<|endoftext|>`, the pad token) written in a text are taken out first,
   as they are (so in SD 2.x every "!" is the pad token's id 0, not the word "!": transformers does the same);
2. normalise: Unicode NFC, every run of whitespace to one space, lower-case (character by character, as Rust's
   `char::to_lowercase`; so no Greek final sigma, unlike `str.lower`);
3. split into words: the contractions `'s 't 're 've 'm 'll 'd`, runs of letters, single digits, runs of anything
   else that is not whitespace (CLIP's pattern; whitespace is dropped);
4. each word's UTF-8 bytes as GPT-2's printable byte characters, `</w>` on the last one, merged by BPE rank;
5. `<|startoftext|>` + the first `max_length - 2` tokens + `<|endoftext|>`, padded with the folder's pad token
   (`<|endoftext|>` in SD 1.x, `!` in SD 2.x). A longer text is cut with a warning, as diffusers warns.

No `ftfy` and no HTML unescaping (transformers 5 does neither). The vocabulary is never part of this repository: a
real one comes with a downloaded SD folder, and `from_bpe_file` builds one from OpenAI's merge list as
`open-clip-torch` ships it (the tests take it from that pinned wheel).
"""
import gzip
import json
import os
import unicodedata
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77
# Unicode's White_Space property: what `\s` matches in the Rust regex behind transformers' CLIPTokenizer. Python's
# str.isspace() differs (it also takes U+001C..U+001F), so the set is spelled out.
WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                       + "".join(chr(c) for c in range(0x2000, 0x200B)))
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


class TokenizerFolderError(ValueError):
    """A tokenizer folder that cannot be read: names the file and what is wrong with it."""


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (the printable bytes map to
    themselves, the rest to code points from 256 on), in the order CLIP's vocabulary lists them."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    extra = [b for b in range(256) if b not in printable]
    return {b: chr(c) for b, c in zip(printable + extra, printable + [256 + i for i in range(len(extra))])}


_BYTE_CHARS = bytes_to_unicode()


def _category(char: str) -> str:
    if char in WHITESPACE:
        return "space"
    kind = unicodedata.category(char)[0]
    return "letter" if kind == "L" else "number" if kind == "N" else "other"


def split_words(text: str) -> List[str]:
    """CLIP's word pattern on normalised text (rule 3): contractions, letter runs, single digits, other runs. The
    special tokens' spellings (reached only when a text wrote them in other case: `<|EndOfText|>`) end a word."""
    words, i = [], 0
    while i < len(text):
        special = next((c for c in (BOS_TOKEN, EOS_TOKEN) if text.startswith(c, i)), None)
        if special:  # CLIP's pattern takes it whole; GPT-2's pattern (ByteLevel's, after it) splits it in three
            words += ["<|", special[2:-2], "|>"]
            i += len(special)
            continue
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        kind = _category(text[i])
        if contraction:
            j = i + len(contraction)
        elif kind == "number" or kind == "space":
            j = i + 1
        else:
            j = i + 1
            while j < len(text) and _category(text[j]) == kind:
                j += 1
        if kind != "space" or contraction:
            words.append(text[i:j])
        i = j
    return words


def normalize(text: str) -> str:
    """Rule 2: NFC, whitespace runs to one space, per-character lower-case."""
    text = unicodedata.normalize("NFC", text)
    out, previous_space = [], False
    for char in text:
        space = char in WHITESPACE
        if not (space and previous_space):
            out.append(" " if space else char.lower())
        previous_space = space
    return "".join(out)


class ClipTokenizer:
    """Byte-level BPE with CLIP's rules (module docstring); `encode` gives int32 ids `[N, max_length]`."""

    def __init__(self, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]], *, pad_token: str = EOS_TOKEN,
                 max_length: int = MAX_LENGTH):
        for token in (BOS_TOKEN, EOS_TOKEN, pad_token):
            if token not in vocab:
                raise ValueError(f"ClipTokenizer: the vocabulary has no {token!r} token")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"ClipTokenizer: max_length must be an int >= 2, got {max_length!r}")
        self.vocab = dict(vocab)
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.bos_id, self.eos_id, self.pad_id = vocab[BOS_TOKEN], vocab[EOS_TOKEN], vocab[pad_token]
        self.pad_token, self.max_length = pad_token, max_length
        self.specials = tuple(dict.fromkeys((BOS_TOKEN, EOS_TOKEN, pad_token)))  # SD 2's "!" is one of them
        self._cache: Dict[str, List[int]] = {}

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def load(cls, folder: str) -> "ClipTokenizer":
        """From a tokenizer folder (diffusers' `tokenizer/`, or a whole SD folder holding one)."""
        if os.path.isdir(os.path.join(folder, "tokenizer")):
            folder = os.path.join(folder, "tokenizer")
        config = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the second wins, as in transformers
            config.update(_read_json(folder, name, required=False))
        pad = _token_text(config.get("pad_token", EOS_TOKEN), os.path.join(folder, "tokenizer_config.json"))
        max_length = config.get("model_max_length", MAX_LENGTH)
        if not isinstance(max_length, int) or max_length > 10 ** 6:  # transformers' "no limit" is a huge number
            max_length = MAX_LENGTH
        if os.path.exists(os.path.join(folder, "vocab.json")):
            vocab = _read_json(folder, "vocab.json")
            merges = _read_merges(os.path.join(folder, "merges.txt"))
        elif os.path.exists(os.path.join(folder, "tokenizer.json")):
            model = _read_json(folder, "tokenizer.json").get("model", {})
            if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
                raise TokenizerFolderError(f"{os.path.join(folder, 'tokenizer.json')}: 'model' is not a BPE model "
                                           "with a 'vocab'")
            vocab = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        else:
            raise TokenizerFolderError(f"{folder}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
        try:
            return cls(vocab, merges, pad_token=pad, max_length=max_length)
        except ValueError as e:
            raise TokenizerFolderError(f"{folder}: {e}") from None

    @classmethod
    def from_bpe_file(cls, path: str, *, num_merges: Optional[int] = None, pad_token: str = EOS_TOKEN
                      ) -> "ClipTokenizer":
        """From OpenAI's gzipped merge list (`bpe_simple_vocab_16e6.txt.gz`): CLIP's 48,894 merges and the 49,408
        token vocabulary built from them; `num_merges` keeps only the first ones (a small vocabulary for tests)."""
        vocab, merges = vocab_from_bpe_file(path, num_merges)
        if pad_token not in vocab:
            raise ValueError(f"from_bpe_file: pad token {pad_token!r} is not in the vocabulary")
        return cls(vocab, merges, pad_token=pad_token)

    def save(self, folder: str) -> None:
        """Writes diffusers' `tokenizer/` files: vocab.json, merges.txt, tokenizer_config.json."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.vocab, f, ensure_ascii=False)
        merges = sorted(self.ranks, key=self.ranks.get)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": self.max_length,
                       "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
                       "pad_token": self.pad_token}, f, indent=1)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ----------------------------------------------------------------------------------------------- encoding
    def _bpe(self, word: str) -> List[int]:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        parts = [_BYTE_CHARS[b] for b in word.encode("utf-8")]
        parts[-1] += END_OF_WORD
        while len(parts) > 1:
            pairs = list(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        unk = self.vocab[EOS_TOKEN]
        ids = [self.vocab.get(part, unk) for part in parts]
        self._cache[word] = ids
        return ids

    def tokens(self, text: str) -> List[int]:
        """The ids of one text, without start, end, truncation or padding."""
        ids, i = [], 0
        while i < len(text):  # rule 1: literal special tokens, the first and then the longest
            found = [(text.find(s, i), -len(s), s) for s in self.specials if text.find(s, i) >= 0]
            j, _, special = min(found) if found else (len(text), 0, None)
            for word in split_words(normalize(text[i:j])):
                ids += self._bpe(word)
            if special:
                ids.append(self.vocab[special])
                j += len(special)
            i = j
        return ids

    def encode(self, texts: Sequence[str], *, max_length: Optional[int] = None) -> np.ndarray:
        """int32 ids [N, max_length]: start, tokens (cut to fit, with a warning), end, pads."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"ClipTokenizer.encode needs a list of str, got {type(texts).__name__}")
        length = self.max_length if max_length is None else max_length
        out = np.full((len(texts), length), self.pad_id, np.int32)
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"ClipTokenizer.encode: prompt at index {n} is {type(text).__name__}, not str: "
                                f"{text!r}")
            ids = self.tokens(text)
            if len(ids) > length - 2:
                warnings.warn(f"prompt at index {n} has {len(ids)} tokens, over the {length - 2} that fit; cut to "
                              f"{length - 2}: {text!r}", stacklevel=2)
                ids = ids[:length - 2]
            row = [self.bos_id] + ids + [self.eos_id]
            out[n, :len(row)] = row
        return out

    __call__ = encode


def vocab_from_bpe_file(path: str, num_merges: Optional[int] = None) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """CLIP's vocabulary and merges from OpenAI's merge list: the 256 byte characters, the same with `</w>`, one
    token per merge, then `<|startoftext|>` and `<|endoftext|>` (49,408 entries for the full list)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    total = 49152 - 256 - 2  # the merges CLIP uses: lines 1..48,894 of the file (line 0 is a version header)
    count = total if num_merges is None else num_merges
    if not 0 <= count <= total:
        raise ValueError(f"num_merges must be in [0, {total}], got {num_merges!r}")
    merges = [tuple(line.split()) for line in lines[1:1 + count]]
    chars = list(_BYTE_CHARS.values())
    tokens = chars + [c + END_OF_WORD for c in chars] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def read_json(path: str, error: type = None) -> dict:
    """A JSON object from `path`; `error` (default TokenizerFolderError) names the file when it is missing, is not
    JSON or is not an object. (pretrained/folder.py reads configs with it too.)"""
    error = error or TokenizerFolderError
    if not os.path.isfile(path):
        raise error(f"{path}: missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise error(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_json(folder: str, name: str, required: bool = True) -> dict:
    path = os.path.join(folder, name)
    return read_json(path) if required or os.path.exists(path) else {}


def _read_merges(path: str) -> List[Tuple[str, str]]:
    if not os.path.exists(path):
        raise TokenizerFolderError(f"{path}: missing (vocab.json needs its merges.txt)")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
    merges = [tuple(line.split(" ")) for line in lines]
    bad = next((n for n, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None:
        raise TokenizerFolderError(f"{path}: merge {bad} is not two symbols: {lines[bad]!r}")
    return merges


def _token_text(token, path: str) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with 'content'."""
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    if isinstance(token, str):
        return token
    raise TokenizerFolderError(f"{path}: pad_token must be a string or {{'content': ...}}, got {token!r}")
