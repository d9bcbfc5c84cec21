"""Scale-out: unit claims (two runners never run a unit twice, stale claims are taken over),
the study on a Dask cluster (same numbers as the local runner; a killed worker loses no
finished unit), and `--dask` without Dask installed."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from minillm.cli import main
from minillm.study import units
from minillm.study.plan import PRESETS, result_path, unit_dir
from minillm.train import lock

SMOKE = ["study", "--preset", "smoke", "--no-progress"]
NAMES = [u.name for u in units(PRESETS["smoke"])]


def study(out, *extra, env=None):
    """`minillm study --preset smoke` on `out` in a new process (not waited for)."""
    return subprocess.Popen([sys.executable, "-m", "minillm", *SMOKE, "--out", str(out), *extra], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out


def numbers(out):
    """Every unit's result and the study's results.json, without timings."""
    def load(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {n: {k: v for k, v in load(result_path(out, n)).items() if k != "seconds"} for n in NAMES}, \
        load(os.path.join(out, "results.json"))


def starts(out, name):
    """How many times unit `name` started training from scratch (step-1 records in its log)."""
    with open(os.path.join(unit_dir(out, name), "log.jsonl"), encoding="utf-8") as f:
        return sum(json.loads(line).get("step") == 1 and "loss" in line for line in f)


# ---- claims ------------------------------------------------------------------------------------

def test_claim_is_exclusive_and_released(tmp_path):
    path = str(tmp_path / "claim")
    with lock.claim(path) as first:
        owner = json.load(open(path))
        with lock.claim(path) as second:   # our own process holds it, alive: not stale
            assert (first, second) == (True, False)
    assert owner["pid"] == os.getpid() and owner["host"] and owner["start"]
    assert not os.path.exists(path)


def test_claim_of_a_killed_process_is_taken_over(tmp_path, capfd):
    path = str(tmp_path / "claim")
    script = ("import os, signal, sys; from minillm.train.lock import claim\n"
              "with claim(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", script, path], timeout=120)
    assert r.returncode == -signal.SIGKILL and os.path.exists(path)   # the dead process left its claim
    with lock.claim(path) as mine:
        assert mine and json.load(open(path))["pid"] == os.getpid()
    assert "is gone" in capfd.readouterr().err


def test_claim_from_another_host_is_stale_only_without_heartbeat(tmp_path, capfd):
    path = str(tmp_path / "claim")
    with open(path, "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "start": "then"}, f)
    with lock.claim(path, timeout=60) as mine:
        assert not mine   # touched just now: live
    os.utime(path, (time.time() - 61, time.time() - 61))
    with lock.claim(path, timeout=60) as mine:
        assert mine
    assert "its heartbeat stopped 6" in capfd.readouterr().err   # 61 s ago, or a little more


def test_two_runners_on_one_directory_run_each_unit_once(tmp_path):
    runners = [study(tmp_path), study(tmp_path)]
    while not glob.glob(str(tmp_path / "units" / "*" / "result.json")) and runners[0].poll() is None:
        time.sleep(0.05)
    assert main([*SMOKE, "--out", str(tmp_path), "--report"]) == 0   # the table so far, during the run
    first, second = [finish(p) for p in runners]
    assert [starts(tmp_path, n) for n in NAMES] == [1] * len(NAMES)
    assert first == second and all(u.label in first for u in units(PRESETS["smoke"]))   # both: the full table


# ---- Dask --------------------------------------------------------------------------------------

def test_dask_not_installed_exits_2_with_the_install_hint(tmp_path):
    script = ("import sys; sys.modules['distributed'] = None\nfrom minillm.cli import main\n"
              f"sys.exit(main({[*SMOKE, '--out', str(tmp_path), '--dask', 'tcp://127.0.0.1:8786']!r}))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'pip install "dask[distributed]"' in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.fixture
def cluster(monkeypatch):
    """Two worker processes of one thread each: the split `--jobs 2` makes on 2 cores."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.delenv("MINILLM_NUM_THREADS", raising=False)   # the workers' thread count comes from Dask
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


def test_dask_writes_the_numbers_of_the_local_runner(tmp_path, cluster):
    local = finish(study(tmp_path / "local", "--jobs", "2", env={"MINILLM_NUM_THREADS": "1"}))
    assert main([*SMOKE, "--out", str(tmp_path / "dask"), "--dask", cluster]) == 0
    assert numbers(tmp_path / "dask") == numbers(tmp_path / "local") and "CD:FLM" in local


def test_killed_dask_worker_loses_no_finished_unit(tmp_path, cluster):
    proc = study(tmp_path, "--dask", cluster)
    victim = None
    while victim is None and proc.poll() is None:   # a unit in flight, after another has finished
        done = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "units" / "*" / "result.json"))}
        claims = glob.glob(str(tmp_path / "units" / "*" / "claim")) if done else []
        for claim in [c for c in claims if os.path.join(os.path.dirname(c), "result.json") not in done]:
            try:
                victim = json.load(open(claim))["pid"]
            except (OSError, ValueError):   # just released, or still being written
                continue
            os.kill(victim, signal.SIGKILL)
            break
    assert victim is not None, "the study finished before a worker could be killed"
    proc.communicate(timeout=600)   # Dask reruns the lost task on a new worker, or the run fails
    finish(study(tmp_path))         # the rerun completes the study
    assert all(os.path.getmtime(p) == t for p, t in done.items())   # finished units were not redone
    assert all(os.path.exists(result_path(tmp_path, n)) for n in NAMES)


def test_a_takeover_left_by_a_killed_runner_does_not_block_the_claim(tmp_path, capfd):
    """A runner killed while replacing a stale claim leaves PATH.takeover behind; that guard is
    judged like a claim (its process is gone), so the unit can still be taken over."""
    path = str(tmp_path / "claim")
    r = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"host": socket.gethostname(), "pid": int(r.stdout), "start": "then"}
    for name in (path, path + ".takeover"):
        with open(name, "w") as f:
            json.dump(dead, f)
    with lock.claim(path) as mine:
        assert mine and json.load(open(path))["pid"] == os.getpid()
    assert not os.path.exists(path + ".takeover") and "is gone" in capfd.readouterr().err
