"""A run's data: the corpus (a tokenizer, training and validation documents) and the
deterministic stream of batches drawn from it.

    corpus = load_corpus(cfg)               # the built-in world, or a UTF-8 text file
    stream = BatchStream("cd", "flm", corpus, batch_size=32, max_len=64, seed=0)
    stream.batch(i)                         # a pure function of (seed, i)

``cfg`` is anything with the fields of ``minillm.train.trainer.TrainConfig`` that name the
data (``data``, ``arch``, ``objective``, ``max_len``, ``preset``, ``world_preset``,
``world_seed``; ``validation_batches`` also reads ``batch_size``, ``seed``, ``eval_batches``).
"""
import dataclasses
import os

import numpy as np

from .batches import check_pair, longest_fitting, make_batch, pack_sequences
from .tokenizer import ByteTokenizer, file_sequences
from .world import World

__all__ = ["Corpus", "load_corpus", "VAL_EPOCH", "BatchStream", "validation_batches"]


@dataclasses.dataclass
class Corpus:
    """A tokenizer, training documents and validation documents (1-D integer id arrays of any
    length). ``train`` is a list, or a function ``epoch -> list`` for data that is drawn
    afresh each epoch (the world states its facts in newly sampled templates every epoch)."""

    tokenizer: object
    train: object
    val: list
    name: str = ""
    split_ids: object = None   # PLM splits before one of these ids (the world: a fact's value)

    def train_docs(self, epoch):
        return self.train(epoch) if callable(self.train) else self.train


VAL_EPOCH = 999_999  # the world epoch whose documents serve as validation text


def load_corpus(cfg):
    """The corpus a (resolved) config names: a text file, or the built-in world of the
    config's preset, whose documents are made as long as a row of the run's layout holds,
    training epoch e using the world's documents of epoch e (restated in fresh templates);
    PLM splits them just before a fact's value."""
    if cfg.data == "world":
        world = World(cfg.world_preset or cfg.preset, seed=cfg.world_seed)
        tok, length = world.tokenizer, longest_fitting(cfg.arch, cfg.objective, cfg.max_len)

        def documents(epoch):
            return [tok.encode(d) for d in world.documents(epoch, length)]

        name = f"world:{cfg.world_preset or cfg.preset}:{cfg.world_seed}"
        return Corpus(tok, documents, documents(VAL_EPOCH), name=name, split_ids=world.value_ids)
    # a UTF-8 text file, byte-tokenized, cut into documents of the longest length whose
    # batches fit max_len; the last 5% of them (at least one) are held out for validation
    if not os.path.isfile(cfg.data):
        raise FileNotFoundError(f"data file {cfg.data!r} does not exist (use --data world for the built-in "
                                "world)")
    tok = ByteTokenizer()
    length = longest_fitting(cfg.arch, cfg.objective, cfg.max_len)
    docs = [np.asarray(d, dtype=np.int32) for d in file_sequences(cfg.data, tok, length)]
    n_val = max(1, len(docs) // 20) if len(docs) > 1 else 0
    train, val = docs[:len(docs) - n_val], docs[len(docs) - n_val:]
    return Corpus(tok, train, val or train, name=os.path.basename(cfg.data))


class BatchStream:
    """The batches of a run, as a pure function of ``(seed, index)``.

    Each epoch's documents are joined greedily (``pack_sequences``), in a seeded shuffled
    order, into *examples* of at most ``L`` tokens, ``L`` being the longest sequence whose
    ``arch:objective`` layout fits ``max_len`` positions; documents inside an example are
    separated by EOS (for FLM this is packing). A document longer than ``L`` is cut into pieces.

    Batch ``i`` holds rows ``i*B .. i*B+B-1`` of an endless stream. Row ``k`` is example
    ``k mod N`` (in a seeded permutation) of epoch ``k div N``, where ``N`` is the number of
    examples of epoch 0 (another epoch with a few more or fewer examples repeats or skips
    a few). The PLM split points and MLM noise spans of batch ``i`` come from
    ``default_rng([seed, i])``. Nothing else is random, so resuming at any step is exact.
    """

    def __init__(self, arch, objective, corpus, batch_size, max_len, seed, docs=None):
        self.arch, self.objective = check_pair(arch, objective)
        self.corpus, self.tokenizer = corpus, corpus.tokenizer
        self.batch_size, self.max_len, self.seed = batch_size, max_len, seed
        self.length = longest_fitting(arch, objective, max_len)
        self._docs = docs  # a fixed list (validation), else corpus.train_docs(epoch)
        self._epoch, self._examples = None, None
        self.per_epoch = len(self._epoch_examples(0))

    def _epoch_examples(self, epoch):
        if epoch != self._epoch:
            docs = self._docs if self._docs is not None else self.corpus.train_docs(epoch)
            docs = [np.asarray(d, dtype=np.int64) for d in docs if len(d)]
            if not docs:
                raise ValueError(f"empty corpus {self.corpus.name!r}: no documents with tokens")
            rng = np.random.default_rng([self.seed, 7, epoch])
            n = self.length
            docs = [docs[i] for i in rng.permutation(len(docs))]
            pieces = [d[s:s + n] for d in docs for s in range(0, len(d), n)]
            # each piece + EOS into rows of n + 1 tokens, less the last EOS: EOS-separated examples
            examples = [row[:-1] for row in pack_sequences(pieces, n + 1, self.tokenizer.eos_id)]
            self._epoch, self._examples = epoch, [examples[i] for i in rng.permutation(len(examples))]
        return self._examples

    def _row(self, k):
        epoch, pos = divmod(k, self.per_epoch)
        examples = self._epoch_examples(epoch)
        return examples[pos % len(examples)]

    def batch(self, index):
        seqs = [self._row(index * self.batch_size + j) for j in range(self.batch_size)]
        return make_batch(self.arch, self.objective, seqs, self.tokenizer,
                          np.random.default_rng([self.seed, index]), self.max_len, split_ids=self.corpus.split_ids)


def validation_batches(cfg, corpus):
    """The fixed validation batches of a run: ``cfg.eval_batches`` batches of the corpus's
    validation documents, laid out like the training batches."""
    val = BatchStream(cfg.arch, cfg.objective, corpus, cfg.batch_size, cfg.max_len,
                      seed=cfg.seed + 1_000_003, docs=corpus.val)
    return [val.batch(i) for i in range(cfg.eval_batches)]
