"""Tokenizers: byte-level for any UTF-8 text, word-level for the built-in synthetic world.

Both share one id layout, so the special ids never move:

    0 <pad>   1 <bos>   2 <eos>   3 <sep>   4.. <extra_id_0>, <extra_id_1>, ...  (sentinels)

followed by the ordinary tokens (the 256 byte values, or the words). ``tok.pad_id``,
``bos_id``, ``eos_id``, ``sep_id`` and ``sentinel_ids`` expose them; the objectives and
batch builders read nothing else.

- ``ByteTokenizer``: ``decode(encode(text)) == text`` for every string.
- ``WordTokenizer``: splits on whitespace; ``decode(encode(text)) == " ".join(text.split())``,
  which is ``text`` itself for text in that normal form (the world's text always is).
  Unknown words raise ``ValueError`` naming the word and where it is. Special token names
  (``<eos>``, ``<extra_id_3>``, ...) in the text map to their ids.
- ``tok.to_dict()`` / ``tokenizer_from_dict(d)``: a JSON-ready dict (checkpoints store it).
- ``iter_text_file(path)`` streams a UTF-8 file in chunks (invalid UTF-8 is a ``ValueError``
  naming the file and the byte offset) and ``file_sequences(path, tok, length)`` cuts the
  stream of its byte ids into training sequences (text files are read byte-level: the word
  tokenizer serves the built-in world only).
"""
from __future__ import annotations

import codecs
import itertools
import os
from typing import Iterable, Iterator

import numpy as np

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "ByteTokenizer", "WordTokenizer", "tokenizer_from_dict", "iter_text_file",
           "file_sequences"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>")


def sentinel_name(k: int) -> str:
    return f"<extra_id_{k}>"


class Tokenizer:
    """Common part: special tokens and sentinels at the start of the vocabulary."""

    def __init__(self, n_sentinels: int):
        n_sentinels = int(n_sentinels)
        if n_sentinels < 0:
            raise ValueError(f"n_sentinels must be >= 0, got {n_sentinels}")
        self.n_sentinels = n_sentinels
        self.pad_id, self.bos_id, self.eos_id, self.sep_id = range(len(SPECIAL_TOKENS))
        self.n_special = len(SPECIAL_TOKENS) + n_sentinels
        self.sentinel_ids = tuple(range(len(SPECIAL_TOKENS), self.n_special))
        self._special_names = list(SPECIAL_TOKENS) + [sentinel_name(k) for k in range(n_sentinels)]
        self._special_index = {name: i for i, name in enumerate(self._special_names)}

    # subclasses define: kind, vocab_size, encode, decode, _regular_name, _payload
    def id_to_token(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} out of range [0, {self.vocab_size})")
        if token_id < self.n_special:
            return self._special_names[token_id]
        return self._regular_name(token_id)

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if len(bad):
            raise ValueError(f"token id {ids[bad[0]]} at index {bad[0]} out of range [0, {self.vocab_size})")
        return ids

    def to_dict(self) -> dict:
        return {"type": self.kind, "n_sentinels": self.n_sentinels, **self._payload()}

    def __eq__(self, other):
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, n_sentinels={self.n_sentinels})"


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte: id = ``n_special + byte``. Handles any text exactly."""

    kind = "byte"

    def __init__(self, n_sentinels: int = 100):
        super().__init__(n_sentinels)
        self.vocab_size = self.n_special + 256

    def _regular_name(self, token_id):
        return repr(bytes([token_id - self.n_special]))[2:-1]

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + self.n_special

    def decode(self, ids, skip_special: bool = False, errors: str = "replace") -> str:
        """Bytes back to text; special ids become their names (or vanish if
        ``skip_special``). Byte runs that are not valid UTF-8 use ``errors``."""
        pieces = []
        for special, run in itertools.groupby(self._check_ids(ids).tolist(), lambda t: t < self.n_special):
            if not special:
                pieces.append(bytes(t - self.n_special for t in run).decode("utf-8", errors=errors))
            elif not skip_special:
                pieces += [self._special_names[t] for t in run]
        return "".join(pieces)

    def _payload(self):
        return {}


class WordTokenizer(Tokenizer):
    """One token per whitespace-separated word of a fixed vocabulary."""

    kind = "word"

    def __init__(self, words: Iterable[str], n_sentinels: int = 32):
        super().__init__(n_sentinels)
        self.words, self._index = list(words), dict(self._special_index)
        for i, w in enumerate(self.words):
            if not isinstance(w, str) or not w or len(w.split()) != 1 or w != w.strip():
                raise ValueError(f"vocabulary entries must be non-empty words without spaces, got {w!r}")
            if w in self._special_index:
                raise ValueError(f"vocabulary word {w!r} clashes with a special token name")
            if w in self._index:
                raise ValueError(f"duplicate vocabulary word {w!r}")
            self._index[w] = self.n_special + i
        self.vocab_size = self.n_special + len(self.words)

    def _regular_name(self, token_id):
        return self.words[token_id - self.n_special]

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        words = text.split()
        try:
            return np.array([self._index[w] for w in words], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"unknown word {e.args[0]!r} at word index {words.index(e.args[0])} "
                             "(not in the vocabulary)") from None

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = self._check_ids(ids).tolist()
        return " ".join(self.id_to_token(t) for t in ids if not (skip_special and t < self.n_special))

    def _payload(self):
        return {"words": self.words}


def tokenizer_from_dict(d: dict, source: str = "dict") -> Tokenizer:
    """The tokenizer ``to_dict`` describes; ``source`` names where ``d`` came from in errors."""
    kind = d.get("type")
    if kind == "byte":
        return ByteTokenizer(d["n_sentinels"])
    if kind == "word":
        return WordTokenizer(d["words"], d["n_sentinels"])
    raise ValueError(f"{source}: unknown tokenizer type {kind!r} (expected 'byte' or 'word')")


def iter_text_file(path, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """Yield the text of a UTF-8 file in chunks of about ``chunk_bytes`` bytes, never
    holding the whole file. Invalid UTF-8 raises ``ValueError`` with the file name, the
    byte offset of the first bad byte, and its line number."""
    chunk_bytes = int(chunk_bytes)
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    consumed, newlines = 0, 0  # bytes fed to the decoder so far, newlines among them
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_bytes)
            final = not data
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                # e.object is the decoder's pending bytes followed by this chunk
                offset = consumed - len(pending) + e.start
                line = newlines - pending.count(b"\n") + e.object[: e.start].count(b"\n") + 1
                bad = e.object[e.start : e.end]
                raise ValueError(f"{os.fspath(path)}: invalid UTF-8 at byte offset {offset} "
                                 f"(line {line}): {bad!r} ({e.reason})") from None
            consumed += len(data)
            newlines += data.count(b"\n")
            if text:
                yield text
            if final:
                return


def file_sequences(path, tokenizer: Tokenizer, length: int,
                   chunk_bytes: int = 1 << 20) -> Iterator[np.ndarray]:
    """Stream a UTF-8 file as consecutive id sequences of ``length`` tokens (the last one
    may be shorter), with a tokenizer that encodes each chunk of text on its own
    (``ByteTokenizer``: a byte never spans two chunks). Raises ``ValueError`` for a file
    with no tokens."""
    length = int(length)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    buf = np.empty(0, dtype=np.int64)
    total = 0
    for text in iter_text_file(path, chunk_bytes):
        ids = tokenizer.encode(text)
        total += len(ids)
        buf = np.concatenate([buf, ids])
        while len(buf) >= length:
            yield buf[:length]
            buf = buf[length:]
    if total == 0:
        raise ValueError(f"empty corpus: {os.fspath(path)} contains no tokens")
    if len(buf):
        yield buf
