"""The thread policy's decisions (minillm/fast/threads.py, minillm/fast/sharing.py), on
injected environments and measurements: no timing, no real load."""
import os
import subprocess
import sys

import pytest

from minillm.fast import sharing
from minillm.fast.sharing import Governor

W = Governor.WINDOW
C = round(Governor.CROWDED_FOR / W)   # crowded windows in a row that drop threads


# ---- overrides --------------------------------------------------------------------------

def test_thread_count_follows_minillm_num_threads():
    assert sharing.default_threads({}, n_cores=6) == 6
    assert sharing.default_threads({"MINILLM_NUM_THREADS": "3"}, n_cores=6) == 3
    assert sharing.default_threads({"MINILLM_NUM_THREADS": "0"}, n_cores=6) == 1   # clamped, as before
    with pytest.raises(ValueError, match="MINILLM_NUM_THREADS.*'two'"):
        sharing.default_threads({"MINILLM_NUM_THREADS": "two"})


def test_study_jobs_split_is_kept():
    # `minillm study --jobs 2` on 2 cores gives each worker MINILLM_NUM_THREADS=1: one thread, fixed
    env = {"MINILLM_NUM_THREADS": "1"}
    assert sharing.default_threads(env, n_cores=2) == 1
    assert not sharing.adapt_enabled(env)


def test_adaptation_is_on_by_default_and_off_for_an_explicit_count():
    assert sharing.adapt_enabled({})
    assert not sharing.adapt_enabled({"MINILLM_NUM_THREADS": "2"})
    assert sharing.adapt_enabled({"MINILLM_NUM_THREADS": "2", "MINILLM_ADAPT_THREADS": "1"})
    assert not sharing.adapt_enabled({"MINILLM_ADAPT_THREADS": "0"})
    assert not sharing.adapt_enabled({"MINILLM_ADAPT_THREADS": "off"})
    with pytest.raises(ValueError, match="MINILLM_ADAPT_THREADS.*'maybe'"):
        sharing.adapt_enabled({"MINILLM_ADAPT_THREADS": "maybe"})


def test_threading_layer_is_the_users_when_set():
    from minillm.fast import threads
    assert threads.threading_layer({"NUMBA_THREADING_LAYER": "workqueue"}) is None
    layer, priority = threads.threading_layer({})
    assert layer == "default" and priority[0] == "omp"


# ---- the governor -------------------------------------------------------------------------

def run(g, windows, waiting, idle):
    """Feed `windows` identical windows; returns the thread counts decided."""
    return [g.update(W, waiting * W, idle * W) for _ in range(windows)]


def test_quiet_machine_keeps_every_thread():
    g = Governor(2)
    assert run(g, 100, waiting=0.02, idle=0.05) == [2] * 100


def test_crowded_cores_drop_to_one_thread_and_stay_while_crowded():
    g = Governor(2)
    assert run(g, C, waiting=0.9, idle=0.0) == [2] * (C - 1) + [1]
    assert run(g, 100, waiting=0.0, idle=0.05) == [1] * 100   # the other process keeps its core


def test_a_short_burst_of_other_work_is_not_crowding():
    g = Governor(2)
    for _ in range(20):
        assert run(g, C - 1, waiting=0.9, idle=0.0) + run(g, 3, waiting=0.0, idle=0.0) == [2] * (C + 2)
    assert Governor(2).update(Governor.CROWDED_FOR, 0.9 * Governor.CROWDED_FOR, 0.0) == 1   # one long window

def test_a_free_core_brings_the_threads_back_after_the_probe_wait():
    n = round(Governor.PROBE / W)
    g = Governor(2)
    run(g, C, waiting=0.9, idle=0.0)
    assert run(g, n - 1, waiting=0.0, idle=1.0) == [1] * (n - 1)
    assert run(g, 1, waiting=0.0, idle=1.0) == [2]
    g = Governor(2)                                   # a busy window in between restarts the wait
    run(g, C, waiting=0.9, idle=0.0)
    run(g, n - 1, waiting=0.0, idle=1.0)
    run(g, 1, waiting=0.0, idle=0.0)
    assert run(g, n - 1, waiting=0.0, idle=1.0) == [1] * (n - 1)
    assert run(g, 1, waiting=0.0, idle=1.0) == [2]


def test_a_failed_try_doubles_the_wait_and_a_settled_one_resets_it():
    g = Governor(2)
    for expect in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0):
        run(g, C, waiting=0.9, idle=0.0)            # crowded again right after the try
        assert g.probe_wait == expect * Governor.PROBE or g.probe_wait == Governor.PROBE_MAX
        before = len(run(g, round(g.probe_wait / W), waiting=0.0, idle=1.0))
        assert g.threads == 2 and before >= 1
    run(g, round(Governor.SETTLED / W) + 1, waiting=0.0, idle=0.0)   # a try that lasts
    run(g, C, waiting=0.9, idle=0.0)
    assert g.probe_wait == Governor.PROBE


def test_many_cores_give_up_only_what_others_take():
    g = Governor(8)
    assert run(g, C, waiting=0.9, idle=0.0)[-1] == 7    # one other busy thread: one fewer
    g = Governor(8)
    assert run(g, C, waiting=4.0, idle=0.0)[-1] == 4    # another 8-thread process: half each
    assert run(g, round(Governor.PROBE / W), waiting=0.0, idle=2.0)[-1] == 6


def test_one_thread_never_changes():
    g = Governor(1)
    assert run(g, 10, waiting=3.0, idle=0.0) + run(g, 10, waiting=0.0, idle=1.0) == [1] * 20


# ---- the adapter: a set_num_threads call is the new ceiling ------------------------------

class FakeMachine:
    def __init__(self):
        self.crowd, self.free, self.idle_total = 0.0, 0.0, 0.0

    def waiting(self):
        return self.crowd * W

    def idle(self):
        self.idle_total += self.free * W
        return self.idle_total


def test_adapter_applies_decisions_and_takes_a_users_count_as_ceiling():
    state = {"threads": 4, "t": 0.0}
    machine = FakeMachine()

    def apply(n):
        state["threads"] = n

    def clock():
        state["t"] += W
        return state["t"]

    a = sharing.Adapter(machine, get=lambda: state["threads"], apply=apply, clock=clock)
    machine.crowd = 3.0
    assert [a() for _ in range(C)][-1] == 1 and state["threads"] == 1
    state["threads"] = 3                       # the user's set_num_threads(3)
    machine.crowd, machine.free = 0.0, 0.0
    assert a() == 3 and a.governor.ceiling == 3


def test_numpy_backend_adapts_openblas_without_loading_numba():
    code = ("import sys, minillm\n"
            "from minillm.fast import sharing\n"
            "assert sharing.adapt() is not None\n"
            "sharing.set_threads(1)\n"
            "assert sharing.get_threads() == 1 or sharing.blas_get is None\n"
            "assert 'numba' not in sys.modules, 'numba was loaded'\n")
    env = dict(os.environ, MINILLM_KERNELS="numpy", MINILLM_ADAPT_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
