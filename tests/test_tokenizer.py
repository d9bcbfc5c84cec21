"""Tests for minillm.tokenizer: special ids, round trips, JSON, streaming files, bad input."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.data.tokenizer import (
    ByteTokenizer,
    WordTokenizer,
    file_sequences,
    iter_text_file,
    tokenizer_from_dict,
)

WORDS = ["the", "pet", "of", "zorvel", "is", "a", "cat", ".", "question", ":", "?", "héllo", "日本"]


@pytest.mark.parametrize("tok", [ByteTokenizer(5), WordTokenizer(WORDS, 5)])
def test_special_ids_are_fixed_and_distinct(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 3)
    assert tok.sentinel_ids == (4, 5, 6, 7, 8)
    assert [tok.id_to_token(i) for i in range(9)] == [
        "<pad>", "<bos>", "<eos>", "<sep>", "<extra_id_0>", "<extra_id_1>",
        "<extra_id_2>", "<extra_id_3>", "<extra_id_4>"]
    assert tok.n_special == 9


@given(st.text())
def test_byte_round_trip_is_exact(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert len(ids) == len(text.encode("utf-8"))
    assert ids.min(initial=tok.vocab_size) >= tok.n_special and ids.max(initial=0) < tok.vocab_size
    assert tok.decode(ids) == text


def test_byte_decode_specials():
    tok = ByteTokenizer(3)
    ids = [tok.bos_id, *tok.encode("hi"), tok.sentinel_ids[2], *tok.encode("!"), tok.eos_id]
    assert tok.decode(ids) == "<bos>hi<extra_id_2>!<eos>"
    assert tok.decode(ids, skip_special=True) == "hi!"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


word_lists = st.lists(st.sampled_from(WORDS + ["<eos>", "<extra_id_3>"]), max_size=30)


@given(word_lists, st.sampled_from([" ", "  ", "\n", "\t "]))
def test_word_round_trip(words, sep):
    tok = WordTokenizer(WORDS, n_sentinels=8)
    canonical = " ".join(words)
    assert tok.decode(tok.encode(canonical)) == canonical
    messy = sep + sep.join(words) + sep
    assert tok.decode(tok.encode(messy)) == canonical  # whitespace is normalised


def test_word_specials_and_vocabulary():
    tok = WordTokenizer(["a", "b", "c", "d"], n_sentinels=2)
    assert tok.vocab_size == 4 + 2 + 4
    assert tok.encode("<bos> a <extra_id_1>").tolist() == [1, 6, 5]


def test_word_errors():
    tok = WordTokenizer(WORDS, 2)
    with pytest.raises(ValueError, match=r"unknown word 'dog' at word index 3"):
        tok.encode("the pet is dog")
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="special"):
        WordTokenizer(["a", "<pad>"])


@pytest.mark.parametrize("tok", [ByteTokenizer(7), WordTokenizer(WORDS, 3)])
def test_json_round_trip(tok):
    back = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert type(back) is type(tok) and back == tok
    assert back.vocab_size == tok.vocab_size and back.sentinel_ids == tok.sentinel_ids
    text = "the pet of zorvel is a cat . héllo 日本"
    assert back.encode(text).tolist() == tok.encode(text).tolist()


def test_from_dict_rejects_unknown_type():
    with pytest.raises(ValueError, match="bad.json.*bpe"):
        tokenizer_from_dict({"type": "bpe", "n_sentinels": 0}, source="bad.json")


@given(text=st.text(min_size=1), chunk=st.integers(1, 9))
def test_streaming_a_file_gives_the_same_text_and_ids(text, chunk, tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    assert "".join(iter_text_file(path, chunk)) == text
    tok = ByteTokenizer()
    streamed = np.concatenate([tok.encode(t) for t in iter_text_file(path, chunk)])
    assert streamed.tolist() == tok.encode(text).tolist()


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
@pytest.mark.parametrize("prefix,bad,offset", [
    (b"hello\nworld\n", b"\xff", 12),                 # a byte that never starts UTF-8
    ("héllo\n".encode(), b"\xe2\x28\xa1", 7),          # a 3-byte lead with a bad continuation
    (b"ab\n\ncd", b"\xe2\x82", 6),                     # truncated at end of file
])
def test_invalid_utf8_names_file_and_offset(tmp_path, chunk, prefix, bad, offset):
    path = tmp_path / "broken.txt"
    path.write_bytes(prefix + bad + (b"" if bad == b"\xe2\x82" else b" tail"))
    line = prefix.count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"broken\.txt: invalid UTF-8 at byte offset {offset} \(line {line}\)"):
        list(iter_text_file(path, chunk))


def test_file_sequences(tmp_path):
    path = tmp_path / "c.txt"
    text = "the pet of zorvel is a cat .\n" * 5
    path.write_text(text)
    btok = ByteTokenizer()
    seqs = list(file_sequences(path, btok, 16, chunk_bytes=7))
    assert [len(s) for s in seqs] == [16] * 9 + [1]
    assert btok.decode(np.concatenate(seqs)) == text


def test_file_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty corpus.*empty.txt"):
        list(file_sequences(empty, ByteTokenizer(), 8))
