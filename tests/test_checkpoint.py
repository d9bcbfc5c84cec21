"""Checkpoints: round trip, atomic save under a crash, corrupt/truncated/mismatched refused
with nothing changed."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minillm import optim
from minillm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minillm.model.models import ModelConfig, build_model
from minillm.data.tokenizer import WordTokenizer

CFG = ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=12)


def trained(seed=0, arch="cd", cfg=CFG):
    model = build_model(arch, cfg, seed=seed)
    opt = optim.AdamW(model, lr=1e-2)
    for p in model.parameters():
        p.grad = np.random.default_rng(seed).normal(size=p.shape).astype(p.dtype)
    opt.step()
    return model, opt


def save(path, model, opt, step=3, **kw):
    save_checkpoint(path, model, opt, step=step, tokens_seen=99, config={"run": "x", "lr": 0.01},
                    tokenizer=WordTokenizer(["a", "b", "c"], n_sentinels=2), **kw)


def test_round_trip(tmp_path):
    path = tmp_path / "ck.npz"
    model, opt = trained()
    rng = np.random.default_rng(5)
    save(path, model, opt, rng_states={"data": rng.bit_generator.state})
    expected_next = rng.random()

    ck = load_checkpoint(path)
    assert ck.step == 3 and ck.tokens_seen == 99 and ck.config == {"run": "x", "lr": 0.01}
    assert ck.arch == "cd" and ck.model_config["d_model"] == 16
    assert ck.tokenizer() == WordTokenizer(["a", "b", "c"], n_sentinels=2)

    fresh, fresh_opt = build_model("cd", CFG, seed=1), optim.AdamW(build_model("cd", CFG, seed=1), lr=0.5)
    fresh_opt = optim.AdamW(fresh, lr=0.5)
    gen = np.random.default_rng(0)
    ck.restore(fresh, fresh_opt, rngs={"data": gen})
    for (n, a), (m, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert n == m
        np.testing.assert_array_equal(a.data, b.data)
    assert fresh_opt.t == 1 and fresh_opt.lr == 1e-2
    for x, y in zip(opt.state["exp_avg_sq"], fresh_opt.state["exp_avg_sq"]):
        np.testing.assert_array_equal(x, y)
    assert gen.random() == expected_next
    np.testing.assert_array_equal(ck.build_model().tok_emb.weight.data, model.tok_emb.weight.data)


def test_file_is_plain_npz_without_pickle(tmp_path):
    path = tmp_path / "ck.npz"
    save(path, *trained())
    with np.load(path, allow_pickle=False) as z:
        assert "model/tok_emb.weight" in z.files and "__meta__" in z.files
        assert all(z[k].dtype != object for k in z.files)


class Boom(Exception):
    pass


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    old_model, old_opt = trained(seed=0)
    save(path, old_model, old_opt, step=1)
    before = path.read_bytes()

    real_savez = np.savez

    def savez_then_crash(f, **arrays):  # write part of the new file, then die
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise Boom("power cut")

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(Boom):
        save(path, *trained(seed=1), step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 1
    assert os.listdir(tmp_path) == ["ck.npz"]  # the temporary file was cleaned up


def test_hard_kill_mid_write_keeps_previous_checkpoint(tmp_path):
    """A process killed (os._exit, no cleanup) in the middle of a save leaves the old file."""
    path = tmp_path / "ck.npz"
    save(path, *trained(seed=0), step=1)
    script = textwrap.dedent(f"""
        import os, numpy as np
        from minillm import optim
        from minillm.train.checkpoint import save_checkpoint
        from minillm.model.models import ModelConfig, build_model
        m = build_model("cd", ModelConfig(40, 16, 2, 1, 32, 12), seed=3)
        real = np.savez
        def dying(f, **a):
            real(f, **a); f.flush(); os._exit(9)
        np.savez = dying
        save_checkpoint({str(path)!r}, m, optim.AdamW(m, lr=0.1), step=2)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == 9
    assert load_checkpoint(path).step == 1
    leftovers = [f for f in os.listdir(tmp_path) if f != "ck.npz"]
    assert all(f.startswith(".ck.npz.") and f.endswith(".tmp") for f in leftovers)


def test_truncated_refused(tmp_path):
    path = tmp_path / "ck.npz"
    save(path, *trained())
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="ck.npz"):
            load_checkpoint(path)


def test_flipped_bytes_refused(tmp_path):
    path = tmp_path / "ck.npz"
    save(path, *trained())
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    hits = 0
    for pos in rng.integers(0, len(data), size=20):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            assert "ck.npz" in str(e)
            hits += 1
    # a flip in zip padding or an unused header field can be harmless; most flips are not
    assert hits >= 15


def test_not_a_checkpoint_refused(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minillm checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.npz")


def test_mismatched_model_refused_and_nothing_changes(tmp_path):
    path = tmp_path / "ck.npz"
    save(path, *trained())
    ck = load_checkpoint(path)
    bigger = ModelConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, d_ff=32, max_len=12)
    for model in (build_model("cd", bigger, seed=7), build_model("ed", CFG, seed=7)):
        before = model.state_dict()
        with pytest.raises(CheckpointError, match="ck.npz"):
            ck.restore(model)
        after = model.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before)


def test_mismatched_weights_refused_with_the_parameter_named(tmp_path):
    path = tmp_path / "ck.npz"
    save(path, *trained())
    model = build_model("cd", CFG, seed=7)
    before = model.state_dict()
    for edit in ("missing", "shape"):
        ck = load_checkpoint(path)
        name = sorted(ck.model_state)[0]
        if edit == "missing":
            del ck.model_state[name]
        else:
            ck.model_state[name] = ck.model_state[name][..., :1]
        with pytest.raises(CheckpointError, match=rf"ck\.npz.*{re.escape(name)}"):
            ck.restore(model)
        assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_mismatched_optimizer_refused_before_touching_model(tmp_path):
    path = tmp_path / "ck.npz"
    save(path, *trained())
    model = build_model("cd", CFG, seed=7)
    before = model.state_dict()
    sgd = optim.SGD(model, lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="optimiser"):
        load_checkpoint(path).restore(model, sgd)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_a_single_npy_array_is_named_as_such(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(3))
    with pytest.raises(CheckpointError, match=r"x\.npy: .*a single \.npy array, not an \.npz"):
        load_checkpoint(tmp_path / "x.npy")
