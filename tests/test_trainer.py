"""The trainer: seeded reproducibility, exact resume at any split point, gradient
accumulation, budgets in tokens seen, non-finite loss and Ctrl-C handling, logs."""
import json
import os
import signal

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minillm.data.tokenizer import ByteTokenizer
from minillm.train.checkpoint import load_checkpoint
from minillm.train.trainer import (BatchStream, Corpus, Interrupted, NonFiniteLoss, Trainer, TrainConfig,
                                   load_corpus)


def config(**kw):
    base = dict(arch="nd", objective="plm", preset="smoke", tokens=1200, dropout=0.1,
                eval_every=3, eval_batches=1, log_every=1, checkpoint_every=1000)
    base.update(kw)
    return TrainConfig(**base)


_corpora = {}


def corpus(cfg):
    key = (cfg.arch, cfg.objective)
    if key not in _corpora:
        _corpora[key] = load_corpus(cfg.resolved())
    return _corpora[key]


def weights(trainer):
    return {n: p.data.copy() for n, p in trainer.model.named_parameters()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def losses(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


_straight = {}


def straight_run(tmp_path_factory, **kw):
    key = tuple(sorted(kw.items()))
    if key not in _straight:
        cfg = config(**kw)
        out = str(tmp_path_factory.mktemp("straight"))
        t = Trainer(cfg, corpus(cfg), out, progress=False)
        t.fit()
        _straight[key] = (t, out)
    return _straight[key]


def test_same_seed_same_run_different_seed_different_run(tmp_path, tmp_path_factory):
    t1, out1 = straight_run(tmp_path_factory)
    cfg = config()
    t2 = Trainer(cfg, corpus(cfg), str(tmp_path / "b"), progress=False)
    t2.fit()
    assert losses(out1) == losses(str(tmp_path / "b")) and len(losses(out1)) > 3
    assert same(weights(t1), weights(t2))
    cfg3 = config(seed=1)
    t3 = Trainer(cfg3, corpus(cfg3), None, progress=False)
    t3.fit()
    assert not same(weights(t1), weights(t3))


def test_budget_is_tokens_seen(tmp_path_factory):
    t, out = straight_run(tmp_path_factory)
    with open(os.path.join(out, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r for r in records if "loss" in r]
    assert t.tokens_seen >= 1200 and t.tokens_seen - steps[-1]["step_tokens"] < 1200
    assert sum(r["step_tokens"] for r in steps) == t.tokens_seen
    # tokens seen count every non-pad token fed; loss tokens are fewer under PLM
    assert all(r["loss_tokens"] < r["step_tokens"] for r in steps)
    assert any("val_loss" in r for r in records) and "val_loss" in records[-1]
    assert all(r["tokens_per_s"] > 0 for r in steps)


@settings(max_examples=6)
@given(split=st.integers(1, 100))
def test_resume_is_exact_at_any_split(split, tmp_path_factory):
    straight, straight_out = straight_run(tmp_path_factory)
    split = 1 + split % (straight.step - 1)
    out = str(tmp_path_factory.mktemp("resume"))
    cfg = config()
    first = Trainer(cfg, corpus(cfg), out, progress=False)
    first.fit(max_steps=split)
    assert first.step == split and load_checkpoint(os.path.join(out, "checkpoint.npz")).step == split
    resumed = Trainer.resume(out, corpus(cfg), progress=False)
    assert resumed.step == split
    resumed.fit()
    assert resumed.step == straight.step and resumed.tokens_seen == straight.tokens_seen
    assert same(weights(resumed), weights(straight))
    for a, b in zip(resumed.opt.state["exp_avg_sq"], straight.opt.state["exp_avg_sq"]):
        np.testing.assert_array_equal(a, b)
    assert losses(out) == losses(straight_out)


def test_resume_after_log_ran_ahead_of_checkpoint(tmp_path, tmp_path_factory):
    """A crash after logging steps the checkpoint does not hold: resume redoes them once."""
    straight, straight_out = straight_run(tmp_path_factory)
    out, ckpt = str(tmp_path / "run"), str(tmp_path / "run" / "checkpoint.npz")
    cfg = config()
    t = Trainer(cfg, corpus(cfg), out, progress=False)
    t.fit(max_steps=3)
    saved = open(ckpt, "rb").read()
    t.fit(max_steps=5)                 # logs steps 4 and 5 ...
    with open(ckpt, "wb") as f:        # ... but "crashes" before their checkpoint lands
        f.write(saved)
    resumed = Trainer.resume(out, corpus(cfg), progress=False)
    assert resumed.step == 3
    resumed.fit()
    assert [s for s, _ in losses(out)] == list(range(1, straight.step + 1))
    assert losses(out) == losses(straight_out)


def test_gradient_accumulation_matches_one_big_batch():
    big = config(objective="flm", arch="cd", dropout=0.0, batch_size=8, tokens=800, eval_every=0)
    small = config(objective="flm", arch="cd", dropout=0.0, batch_size=4, grad_accum=2, tokens=800, eval_every=0)
    a = Trainer(big, corpus(big), None, progress=False)
    b = Trainer(small, corpus(small), None, progress=False)
    a.fit(max_steps=3)
    b.fit(max_steps=3)
    assert a.tokens_seen == b.tokens_seen
    for k, v in weights(a).items():
        np.testing.assert_allclose(weights(b)[k], v, rtol=1e-4, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = config(checkpoint_every=2)
    t = Trainer(cfg, corpus(cfg), str(tmp_path), progress=False)
    t.fit(max_steps=4)
    good = load_checkpoint(tmp_path / "checkpoint.npz")
    before = (tmp_path / "checkpoint.npz").read_bytes()
    t.model.blocks[0].ff.fc1.weight.data[0, 0] = np.nan  # something went badly wrong
    with pytest.raises(NonFiniteLoss, match="step 5"):
        t.fit()
    assert (tmp_path / "checkpoint.npz").read_bytes() == before and good.step == 4
    assert t.step == 4


def test_ctrl_c_saves_and_resume_continues_exactly(tmp_path, tmp_path_factory):
    straight, _ = straight_run(tmp_path_factory)
    cfg = config()

    class PressCtrlC(Trainer):
        def train_step(self):
            record = super().train_step()
            if self.step == 4:
                os.kill(os.getpid(), signal.SIGINT)
            return record

    t = PressCtrlC(cfg, corpus(cfg), str(tmp_path), progress=False)
    with pytest.raises(Interrupted, match="step 4"):
        t.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert load_checkpoint(tmp_path / "checkpoint.npz").step == 4
    resumed = Trainer.resume(str(tmp_path), corpus(cfg), progress=False)
    resumed.fit()
    assert same(weights(resumed), weights(straight))


def test_batch_stream_is_a_function_of_seed_and_index():
    cfg = config().resolved()
    c = corpus(cfg)
    s1 = BatchStream(cfg.arch, cfg.objective, c, 4, cfg.max_len, seed=3)
    s2 = BatchStream(cfg.arch, cfg.objective, c, 4, cfg.max_len, seed=3)
    late = s1.batch(50)  # far into a later epoch first, then back
    early = s1.batch(0)
    assert np.array_equal(s2.batch(0).tokens, early.tokens)
    assert np.array_equal(s2.batch(50).tokens, late.tokens)
    assert np.array_equal(s2.batch(50).prefix_len, late.prefix_len)
    assert all(len(row) <= cfg.max_len for row in early.tokens)
    assert not np.array_equal(BatchStream(cfg.arch, cfg.objective, c, 4, cfg.max_len, seed=4).batch(0).tokens,
                              early.tokens)


def test_batch_stream_examples_are_documents_cut_to_fit_and_joined_by_eos():
    tok = ByteTokenizer(n_sentinels=4)
    docs = [np.arange(10 + 100 * k, 10 + 100 * k + n) for k, n in enumerate((3, 5, 40, 1, 7, 12, 15))]
    stream = BatchStream("cd", "flm", Corpus(tok, docs, docs), batch_size=2, max_len=16, seed=0)
    L = stream.length
    assert L == 15
    examples = [x.tolist() for x in stream._epoch_examples(0)]
    assert all(1 <= len(x) <= L and x[0] != tok.eos_id and x[-1] != tok.eos_id for x in examples)
    pieces = [p for x in examples for p in " ".join(map(str, x)).split(f" {tok.eos_id} ")]
    expected = [" ".join(map(str, d[i:i + L].tolist())) for d in docs for i in range(0, len(d), L)]
    assert sorted(pieces) == sorted(expected)  # the 40-token document is cut into 15 + 15 + 10
    assert len(examples) < len(expected)       # short pieces share examples


def test_bad_configs_refused():
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(preset="huge").resolved()
    with pytest.raises(ValueError, match="makes no sense"):
        TrainConfig(arch="ed", objective="flm").resolved()
    with pytest.raises(ValueError, match="unknown setting"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(FileNotFoundError):
        load_corpus(TrainConfig(data="/nonexistent/file.txt").resolved())


def test_progress_without_tqdm_prints_plain_lines(monkeypatch):
    import io
    import sys
    from minillm.train.trainer import Progress
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    out = io.StringIO()
    p = Progress(total=1000, enabled=True, every=0.0, stream=out)
    assert p.bar is None
    p.update(400, step=1, loss=3.25)
    p.update(600, step=2, loss=2.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "1,000/1,000 tokens" in lines[1] and "loss 2.5000" in lines[1]
    assert "tok/s" in lines[1] and "ETA" in lines[1]
