"""Claims: a lock file saying which process runs a piece of work, so that two runners never run it twice.

`with claim(path) as mine:` creates `path` atomically (O_CREAT|O_EXCL: exactly one process
wins) holding the owner's host, pid and start time, and yields True; the file is removed when
the block ends, and a thread touches it every HEARTBEAT seconds while the block runs. If
another process holds a live claim, it yields False and the caller should wait for that
process's result. A claim whose process is gone is stale, and is taken over with a line on
stderr saying why:

  * its owner ran on this host and its pid no longer exists (killed, crashed), or
  * its owner ran on another host and its heartbeat (the file's modification time) is older
    than `timeout` seconds: the hosts' clocks and the shared file system must roughly agree.

Two runners that find the same stale claim at once must not both take it over, so judging
and replacing a claim happens while holding a second lock file, PATH.takeover.
The study claims each unit before it runs it (`minillm/study/run.py`).
"""
import contextlib
import json
import os
import socket
import sys
import threading
import time

HEARTBEAT = 10.0   # seconds between touches of a held claim
TIMEOUT = 120.0    # a claim from another host untouched for this long is stale


def _create(path, text=""):
    """Create `path` with `text` in it; False if it exists already. (Mode "x" opens with
    O_CREAT|O_EXCL: of all the processes creating one path at once, exactly one succeeds.)"""
    with contextlib.suppress(FileExistsError), open(path, "x", encoding="utf-8") as f:
        f.write(text)
        return True
    return False


def stale(path, timeout=TIMEOUT):
    """Why the claim at `path` is stale (its owner is gone), or None if it is live or there is none."""
    try:
        with open(path, encoding="utf-8") as f:   # the heartbeat is the file's modification time
            age, text = time.time() - os.fstat(f.fileno()).st_mtime, f.read()
    except FileNotFoundError:
        return None
    owner = json.loads(text) if text.endswith("}") else {}   # {}: still being written, or its writer died
    if owner.get("host") != socket.gethostname():
        return f"its heartbeat stopped {age:.0f} s ago" if age > timeout else None
    try:
        os.kill(owner["pid"], 0)   # signal 0 only asks whether the process exists
    except OSError as e:           # PermissionError: it does, as another user's
        return f"its process {owner['pid']} on this host is gone" if isinstance(e, ProcessLookupError) else None


def _beat(path):
    """Touch the claim at `path` every HEARTBEAT seconds until it is gone."""
    with contextlib.suppress(FileNotFoundError):
        while True:
            time.sleep(HEARTBEAT)
            os.utime(path)


@contextlib.contextmanager
def claim(path, timeout=TIMEOUT):
    """Hold the claim at `path` for the with-block: yields True, or False while another process holds it."""
    me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": time.ctime()})
    mine = _create(path, me)
    if not mine and stale(path + ".takeover", timeout):   # a runner died while taking over
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".takeover")
    if not mine and _create(path + ".takeover", me):   # one runner at a time judges and replaces a claim
        try:
            if why := stale(path, timeout):
                print(f"taking over the stale claim {path}: {why}", file=sys.stderr, flush=True)
                os.unlink(path)
                mine = _create(path, me)
        finally:
            os.unlink(path + ".takeover")
    with contextlib.ExitStack() as release:
        if mine:   # ours until the with-block ends
            release.callback(os.unlink, path)
            threading.Thread(target=_beat, args=(path,), daemon=True).start()
        yield mine
