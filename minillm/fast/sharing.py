"""Sharing the cores with other processes: the run-time half of the thread policy.

`threads.py` says why and what was measured; this file holds the parts that must work on
both backends without loading Numba (`MINILLM_KERNELS=numpy` then adapts only OpenBLAS's
threads): how many threads to start with, whether to adapt, OpenBLAS's thread setter, and
`adapt()`, which a training loop calls once per step.

What `adapt()` does. Every WINDOW seconds of wall time it reads two counters the Linux
kernel keeps, and hands them to `Governor`, which decides the thread count:

  * how long this process's threads were runnable but waiting for a core
    (`/proc/self/task/*/schedstat`, second field). Alone on the machine this stays near
    zero; with another busy process, a spinning thread pool keeps one of our threads
    waiting most of the time. Once windows with more than CROWDED threads waiting on
    average have lasted CROWDED_FOR seconds in a row, drop threads (a short burst of
    another program's work does not count).
  * how long the cores we may run on were idle (`/proc/stat`). Once at least one core has
    been idle for PROBE seconds, try more threads again; a try that is crowded again within
    SETTLED seconds doubles the next wait (up to PROBE_MAX), so two processes at one thread
    each do not keep trying.

Overrides (read when the first `adapt()` runs):
    MINILLM_NUM_THREADS=n        use n threads and never adapt (`minillm study --jobs`
                                 sets it for its workers, so they keep their share)
    MINILLM_ADAPT_THREADS=0|1    force adaptation off or on (on: between 1 and the count
                                 in force, which MINILLM_NUM_THREADS or `set_num_threads`
                                 sets). Default: on, unless MINILLM_NUM_THREADS is set.
A `set_num_threads(n)` call while adapting makes n the new ceiling.
Without /proc (macOS, Windows) `adapt()` does nothing.
"""
import collections
import ctypes
import glob
import os
import sys
import time

ADAPT_VAR = "MINILLM_ADAPT_THREADS"
COUNT_VAR = "MINILLM_NUM_THREADS"


def cores():
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads(env=os.environ, n_cores=None):
    """The thread count to start with: MINILLM_NUM_THREADS, else every core we may use."""
    value = env.get(COUNT_VAR, "").strip()
    if not value:
        return n_cores or cores()
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(f"{COUNT_VAR} must be an integer, got {value!r}") from None


def adapt_enabled(env=os.environ):
    """Whether `adapt()` may change the thread count (see the module docstring)."""
    value = env.get(ADAPT_VAR, "").strip().lower()
    if not value:
        return not env.get(COUNT_VAR, "").strip()
    if value in ("1", "on", "yes", "true"):
        return True
    if value in ("0", "off", "no", "false"):
        return False
    raise ValueError(f"{ADAPT_VAR} must be 0 or 1, got {value!r}")


def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy loaded, or (None, None)."""
    import numpy as np
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                setter, getter = (getattr(lib, f"{prefix}{verb}_num_threads{suffix}", None)
                                  for verb in ("set", "get"))
                if setter is not None and getter is not None:
                    setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                    return setter, getter
    return None, None


blas_set, blas_get = _openblas()


class Governor:
    """How many threads to use next, from what the machine did in the last window.

    Pure logic, no I/O: `update` takes measurements (the tests feed it made-up ones)."""

    WINDOW = 0.25     # seconds of wall time between decisions
    CROWDED = 0.25    # our threads' mean number waiting for a core above which a window is crowded
    CROWDED_FOR = 0.5 # seconds of crowded windows in a row before threads are dropped
    FREE = 0.75       # idle cores, averaged over a window, that count as one free core
    PROBE = 1.0       # seconds with a free core before trying more threads again ...
    PROBE_MAX = 32.0  # ... doubled after each try that was crowded again, up to this
    SETTLED = 10.0    # seconds after a try from which a crowding counts as new, not as the try failing

    def __init__(self, ceiling):
        self.ceiling = self.threads = max(1, int(ceiling))
        self.probe_wait = self.PROBE
        self.free_for = 0.0       # seconds a free core has lasted, while below the ceiling
        self.crowded_for = 0.0    # seconds of crowded windows in a row
        self.since_try = None     # seconds since the last try of more threads

    def update(self, wall, waiting, idle):
        """wall: seconds the window lasted; waiting: seconds our threads spent runnable but
        not running, summed over threads; idle: core-seconds our cores were idle. Returns
        the thread count to use from now on."""
        if wall <= 0:
            return self.threads
        crowd, free = waiting / wall, idle / wall
        if self.since_try is not None:
            self.since_try += wall
        self.crowded_for = self.crowded_for + wall if crowd > self.CROWDED else 0.0
        if self.threads > 1 and self.crowded_for >= self.CROWDED_FOR:
            failed_try = self.since_try is not None and self.since_try < self.SETTLED
            self.probe_wait = min(2 * self.probe_wait, self.PROBE_MAX) if failed_try else self.PROBE
            self.threads = max(1, self.threads - max(1, round(crowd)))
            self.free_for, self.crowded_for, self.since_try = 0.0, 0.0, None
        elif crowd > self.CROWDED:
            self.free_for = 0.0
        elif self.threads < self.ceiling and free >= self.FREE:
            self.free_for += wall
            if self.free_for >= self.probe_wait:
                self.threads = min(self.ceiling, self.threads + int(free + 1 - self.FREE))
                self.free_for, self.since_try = 0.0, 0.0
        else:
            self.free_for = 0.0
        return self.threads


class Machine:
    """The two counters `Governor` needs, read from Linux's /proc."""

    def __init__(self):
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:
            cpus = range(os.cpu_count() or 1)
        self.names = {f"cpu{c}".encode() for c in cpus}
        self.tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self.last_waits = {}

    def waiting(self):
        """Seconds our threads waited for a core since the last call, summed over threads
        (a thread counts from the call that first sees it)."""
        waits = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                    waits[tid] = int(f.read().split()[1])
            except (OSError, ValueError, IndexError):   # the thread ended meanwhile
                pass
        new = sum(w - self.last_waits.get(tid, w) for tid, w in waits.items())
        self.last_waits = waits
        return new * 1e-9

    def idle(self):
        """Core-seconds our cores have been idle since boot (idle + iowait)."""
        total = 0
        with open("/proc/stat", "rb") as f:
            for line in f:
                if not line.startswith(b"cpu"):
                    break
                fields = line.split()
                if fields[0] in self.names:
                    total += int(fields[4]) + int(fields[5])
        return total * self.tick


def _threads_module():
    return sys.modules.get(__package__ + ".threads")   # loaded only with the Numba backend


def get_threads():
    """The thread count in force: Numba's and OpenBLAS's if Numba is loaded, else OpenBLAS's."""
    threads = _threads_module()
    if threads is not None:
        return threads.num_threads()
    return blas_get() if blas_get is not None else 1


def set_threads(n):
    """Set the thread count without loading Numba if it is not loaded yet."""
    threads = _threads_module()
    if threads is not None:
        return threads.set_num_threads(n)
    if blas_set is not None:
        blas_set(n)
    return n


class Adapter:
    """`Governor` fed from `Machine` every WINDOW seconds, applying its decisions. The
    clock, the machine and the thread getter and setter can be replaced (tests do)."""

    def __init__(self, machine=None, get=get_threads, apply=set_threads, clock=time.perf_counter):
        self.machine, self.get, self.apply, self.clock = machine or Machine(), get, apply, clock
        self.governor = Governor(self.get())
        self.machine.waiting()   # starts the per-thread counts
        self.last = (self.clock(), self.machine.idle())
        self.changes = []        # (clock, new count) of every change: the benchmark prints them
        self.trace = collections.deque(maxlen=256)   # (clock, crowd, free cores, count) of recent windows

    def __call__(self):
        now = self.clock()
        if now - self.last[0] < Governor.WINDOW:
            return self.governor.threads
        g, in_force = self.governor, self.get()
        if in_force != g.threads:   # someone called set_num_threads: that is the new ceiling
            self.governor = g = Governor(in_force)
        waiting, idle = self.machine.waiting(), self.machine.idle()
        was = g.threads
        wall = now - self.last[0]
        want = g.update(wall, waiting, idle - self.last[1])
        self.trace.append((now, waiting / wall, (idle - self.last[1]) / wall, want))
        self.last = (now, idle)
        if want != was:
            self.apply(want)
            self.changes.append((now, want))
        return want


_adapter = None


def adapt():
    """Call once per training step: adapts the thread count to what else runs on the
    machine (module docstring). Costs ~1 us, and ~30 us every WINDOW seconds. Returns the
    thread count in force, or None when adaptation is off."""
    global _adapter
    if _adapter is None:
        usable = adapt_enabled() and os.path.exists("/proc/self/task") and os.path.exists("/proc/stat")
        _adapter = Adapter() if usable else False
    return _adapter() if _adapter else None
