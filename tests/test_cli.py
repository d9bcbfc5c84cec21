"""The `minillm` command: smoke runs of every subcommand, resume, Ctrl-C, and exit code 2
with a one-line message (no traceback) for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minillm.cli import main

SMOKE = ["--preset", "smoke", "--no-progress"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "cd")
    assert main(["train", "--arch", "cd", "--objective", "flm", "--out", out, "--tokens", "4000"] + SMOKE) == 0
    return out


def test_train_writes_checkpoint_config_and_log(trained):
    assert sorted(os.listdir(trained)) == ["checkpoint.npz", "config.json", "log.jsonl"]
    with open(os.path.join(trained, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["arch"] == "cd" and cfg["tokens"] == 4000 and cfg["model"]["d_model"] == 32
    with open(os.path.join(trained, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r for r in records if "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns something
    assert "val_loss" in records[-1]


@pytest.mark.parametrize("arch,objective", [("nd", "plm"), ("ed", "mlm")])
def test_train_other_pairs(arch, objective, tmp_path, capsys):
    code, _, err = run(["train", "--arch", arch, "--objective", objective, "--out", str(tmp_path / "r"),
                        "--tokens", "600"] + SMOKE, capsys)
    assert code == 0, err
    assert "done: step" in err
    code, out, _ = run(["generate", str(tmp_path / "r"), "--prompt", "the pet of", "--max-new-tokens", "3"], capsys)
    assert code == 0 and len(out.split()) <= 3


def test_generate_and_eval(trained, capsys):
    code, out, _ = run(["generate", trained, "--prompt", "the colour of", "--max-new-tokens", "5"], capsys)
    assert code == 0 and 1 <= len(out.split()) <= 5
    code, out2, _ = run(["generate", trained, "--prompt", "the colour of", "--max-new-tokens", "5", "--no-cache"], capsys)
    assert out2 == out
    code, out, _ = run(["generate", trained, "--prompt", "the colour of", "--temperature", "1", "--top-k", "3"], capsys)
    assert code == 0
    code, out, _ = run(["eval", trained, "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["step"] > 0 and result["val_loss"] > 0 and 0 <= result["val_acc"] <= 1
    code, out, _ = run(["eval", os.path.join(trained, "checkpoint.npz")], capsys)
    assert code == 0 and "perplexity" in out


def test_describe(capsys):
    code, out, _ = run(["describe", "--preset", "smoke", "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["arch"] for r in rows] == ["cd", "nd", "ed"]
    cd, nd, ed = rows
    assert cd["parameters"] == nd["parameters"] < ed["parameters"]
    code, out, _ = run(["describe", "--d-model", "64", "--n-heads", "4", "--vocab-size", "100"], capsys)
    assert code == 0 and "d_model 64" in out


def test_resume_extends_budget(trained, tmp_path, capsys):
    import shutil
    out = str(tmp_path / "copy")
    shutil.copytree(trained, out)
    code, _, err = run(["train", "--out", out, "--resume"] + SMOKE, capsys)
    assert code == 0 and "already saw its budget" in err
    code, _, err = run(["train", "--out", out, "--resume", "--tokens", "5000"] + SMOKE, capsys)
    assert code == 0, err
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["tokens"] == 5000


def test_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"arch": "nd", "objective": "mlm", "preset": "smoke", "tokens": 300, "lr": 0.001}))
    code, _, err = run(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 0, err
    with open(tmp_path / "r" / "config.json") as f:
        resolved = json.load(f)
    assert resolved["objective"] == "mlm" and resolved["lr"] == 0.001 and resolved["d_model"] == 32


def bad(argv, capsys, match):
    code, out, err = run(argv, capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert match in err, err


def test_exit_2_cases(trained, tmp_path, capsys):
    bad(["train", "--arch", "xd", "--objective", "flm"], capsys, "invalid choice")
    bad(["train", "--arch", "cd", "--objective", "clm"], capsys, "invalid choice")
    bad(["train", "--arch", "ed", "--objective", "flm", "--out", str(tmp_path / "x")] + SMOKE, capsys, "makes no sense")
    bad(["train", "--arch", "cd", "--objective", "flm", "--data", str(tmp_path / "missing.txt"),
         "--out", str(tmp_path / "y")] + SMOKE, capsys, "does not exist")
    bad(["train", "--arch", "cd", "--objective", "flm", "--out", trained] + SMOKE, capsys, "--force")
    bad(["train", "--arch", "cd", "--objective", "flm", "--tokens", "-5", "--out", str(tmp_path / "z")] + SMOKE,
        capsys, "tokens")
    bad(["train", "--out", trained, "--resume", "--d-model", "64"], capsys, "cannot change d_model")
    bad(["train", "--arch", "cd", "--objective", "flm", "--config", str(tmp_path / "nope.json")], capsys, "nope.json")
    bad(["generate", str(tmp_path / "nothing.npz"), "--prompt", "x"], capsys, "nothing.npz")
    bad(["generate", trained, "--prompt", "qwertyuiop"], capsys, "unknown word")
    bad(["generate", trained], capsys, "--prompt")
    truncated = tmp_path / "bad.npz"
    truncated.write_bytes(open(os.path.join(trained, "checkpoint.npz"), "rb").read()[:1000])
    bad(["eval", str(truncated)], capsys, "bad.npz")
    text = tmp_path / "text.txt"
    text.write_text("hello world, some text of our own. " * 50)
    bad(["eval", trained, "--data", str(text)], capsys, "another tokenizer")
    bad(["frobnicate"], capsys, "invalid choice")
    assert main(["train", "--help"]) == 0


def test_force_overwrites_and_text_file_data(trained, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    out = str(tmp_path / "r")
    argv = ["train", "--arch", "cd", "--objective", "flm", "--data", str(text), "--out", out, "--tokens", "500"] + SMOKE
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv + ["--force", "--seed", "1"], capsys)
    assert code == 0, err
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["seed"] == 1
    code, out_text, _ = run(["generate", out, "--prompt", "the quick", "--max-new-tokens", "5"], capsys)
    assert code == 0


def test_console_script_and_ctrl_c(tmp_path):
    """`python -m minillm` runs the same program; Ctrl-C saves a checkpoint that resumes."""
    out = str(tmp_path / "r")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minillm", "train", "--arch", "cd", "--objective", "flm",
                             "--preset", "smoke", "--tokens", "10000000", "--out", out],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    lines = []
    while time.time() < deadline:  # wait until training has started
        line = proc.stderr.readline()
        lines.append(line)
        if "budget" in line:
            break
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    r = subprocess.run([sys.executable, "-m", "minillm", "eval", out, "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["step"] > 0


def test_non_finite_loss_exits_2_and_names_the_step(tmp_path, capsys):
    code, out, err = run(["train", "--arch", "cd", "--objective", "flm", "--lr", "1e30", "--no-progress",
                          "--out", str(tmp_path / "nan")] + SMOKE, capsys)
    assert code == 2, err
    assert "non-finite loss at step" in err and "Traceback" not in err and "Warning" not in err


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`minillm ... | head` must not print a traceback when head stops reading."""
    proc = subprocess.Popen([sys.executable, "-m", "minillm", "study", "--preset", "smoke", "--out", str(tmp_path),
                             "--list-units"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the program has written anything (it is still importing)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
