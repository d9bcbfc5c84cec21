#!/usr/bin/env python
"""Two experiments at once: the training throughput of minillm and PyTorch when processes share the cores.

For each config and each contender (PyTorch eager, and minillm under one or more thread
policies) it runs three scenarios, each a window of --seconds of training steps run back to
back, as a training loop runs them (no pauses; minillm calls `minillm.fast.sharing.adapt()`
after every step, as the trainer does):

    alone   one training process
    pair    two identical training processes at once (same contender, same config)
    busy    one training process beside one busy single-threaded process (a Python loop)

Every process first builds its model and runs --warmup steps (kernels load or compile),
then all start together. A process's rate is the steps it finished in its window divided by
the time they took; a window ends at the first step ending after --seconds (and after at
least 3 steps, or at 4 x --seconds). Every process keeps training until all windows are
over, so each window is measured under the same load throughout. Printed:

    ms           median step time in the window (pair: of both processes)
    pair total   (rate of process 1 + rate of process 2) / rate alone: the machine's
                 training throughput with two experiments, relative to one
    beside busy  rate beside the busy loop / rate alone; "loop" is the share of a core the
                 busy loop got meanwhile
    thr          minillm's thread count at the end of each window (adapting policies change it)

    python benchmarks/contention.py                  # tiny-cd and small-cd; PyTorch, minillm today and adapt
    python benchmarks/contention.py --quick          # tiny-cd only, shorter windows (~1-2 min)
    python benchmarks/contention.py --policies today,adapt,passive,spin=10000,workqueue --no-torch
    python benchmarks/train_step.py --contention ... # the same

Policies (minillm's environment; combine with '+', e.g. adapt+spin=30000):
    today       no adaptation, libgomp's default spin (what minillm did before issue 25)
    adapt       MINILLM_ADAPT_THREADS=1: the run-time adaptation of minillm/fast/sharing.py
    default     whatever minillm does with nothing set (MINILLM_NUM_THREADS unset)
    passive     OMP_WAIT_POLICY=PASSIVE (OpenMP workers sleep at once instead of spinning)
    spin=N      GOMP_SPINCOUNT=N (spin N rounds before sleeping; libgomp's default is 300000)
    workqueue   NUMBA_THREADING_LAYER=workqueue (Numba's own pool; idle workers sleep)
    one         MINILLM_NUM_THREADS=1
    numpy       MINILLM_KERNELS=numpy (no Numba: only OpenBLAS threads)
"""
import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as ts  # noqa: E402  (the models, batches and configs of the step benchmark)

CLEAN = ("MINILLM_NUM_THREADS", "MINILLM_ADAPT_THREADS", "MINILLM_KERNELS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
         "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
MIN_STEPS, CAP = 3, 4.0
NOT_QUIET = 0.15   # cores used by other processes during a window above which it is run again (--retries)


def policy_env(spec):
    """'adapt+spin=30000' -> the environment variables of that minillm policy."""
    env = {"MINILLM_ADAPT_THREADS": "0"}
    for part in spec.split("+"):
        name, _, value = part.partition("=")
        if name == "today":
            pass
        elif name == "default":
            env.pop("MINILLM_ADAPT_THREADS", None)
        elif name == "adapt":
            env["MINILLM_ADAPT_THREADS"] = "1"
        elif name == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        elif name == "spin" and value.isdigit():
            env["GOMP_SPINCOUNT"] = value
        elif name == "workqueue":
            env["NUMBA_THREADING_LAYER"] = "workqueue"
        elif name == "one":
            env["MINILLM_NUM_THREADS"] = "1"
        elif name == "numpy":
            env["MINILLM_KERNELS"] = "numpy"
        else:
            raise SystemExit(f"--policies: unknown policy {part!r} in {spec!r}")
    return env


# ======================================================================================
# The worker: one training process
# ======================================================================================

def worker(payload):
    case, framework, seconds = payload["case"], payload["framework"], payload["seconds"]
    changes = trace = None
    if framework == "torch":
        import torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))   # as many threads as minillm's default
        step = ts.TorchStep(case)
        threads = torch.get_num_threads
        after = lambda: None  # noqa: E731
    else:
        from minillm.fast import sharing
        step = ts.MinillmStep(case)
        threads, after = sharing.get_threads, sharing.adapt
    step.set_batch(ts.make_batch(case))
    for _ in range(payload["warmup"]):
        step()
        after()
    print("READY", flush=True)
    sys.stdin.readline()                                   # GO
    t0 = time.perf_counter()
    steps, result = [], None
    while True:
        s = time.perf_counter()
        step()
        after()
        e = time.perf_counter()
        steps.append([round(e - t0, 4), round(e - s, 4), threads()])
        if result is None and ((e - t0 >= seconds and len(steps) >= MIN_STEPS) or e - t0 >= CAP * seconds):
            if framework != "torch" and sharing._adapter:
                changes = [[round(t - t0, 3), n] for t, n in sharing._adapter.changes if t >= t0]
                trace = [[round(t - t0, 3), round(c, 3), round(f, 3), n] for t, c, f, n in sharing._adapter.trace]
            result = {"steps": steps, "changes": changes, "threads_start": steps[0][2],
                      "trace": trace if changes is not None else None}
            print("DONE " + json.dumps(result), flush=True)
        if result is not None and select.select([sys.stdin], [], [], 0)[0]:
            return                                         # STOP


# ======================================================================================
# The driver
# ======================================================================================

def start(case, contender, args):
    framework, spec = contender
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env.update(policy_env(spec) if framework == "minillm" else {"MINILLM_KERNELS": "numpy"})
    payload = {"case": case, "framework": framework, "seconds": args.seconds, "warmup": args.warmup}
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(payload)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def cpu_seconds(pid):
    """CPU seconds a process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds():
    """CPU seconds the machine has been busy (all cores, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Others:
    """The CPU that processes other than ours used during a window, in cores: the check that a
    shared machine stayed quiet (the report flags windows above 0.1)."""

    def __init__(self, pids):
        self.t, self.busy = time.perf_counter(), busy_seconds()
        self.start = {pid: cpu_seconds(pid) for pid in pids}
        self.ended = 0.0   # CPU seconds of our processes that ended meanwhile

    def forget(self, pid):
        """Call before `pid` ends."""
        self.ended += cpu_seconds(pid) - self.start.pop(pid)

    def cores(self):
        ours = self.ended + sum(cpu_seconds(pid) - c for pid, c in self.start.items())
        return (busy_seconds() - self.busy - ours) / (time.perf_counter() - self.t)


def wait_quiet(limit, log):
    """Wait (up to `limit` s) until other processes use under 0.1 core for a second."""
    t0 = time.perf_counter()
    while True:
        b0, w0 = busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        load = (busy_seconds() - b0) / (time.perf_counter() - w0)
        if load < 0.1 or time.perf_counter() - t0 > limit:
            return load
        log(f"  waiting: other processes use {load:.2f} cores")


def scenario(case, contender, kind, args):
    """Run one scenario; returns the DONE results of its training processes (+ the busy loop's share)."""
    procs = [start(case, contender, args) for _ in range(2 if kind == "pair" else 1)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "READY":
                raise SystemExit(f"a worker failed to start ({contender}, {case['name']}): exit {p.wait()}")
        if args.wait_quiet:   # our processes are idle now, waiting for GO
            wait_quiet(args.wait_quiet, args.log)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if kind in ("busy", "leave") else None
        if busy:
            time.sleep(0.2)   # the loop is running before the window starts
            c0, w0 = cpu_seconds(busy.pid), time.perf_counter()
        others = Others([p.pid for p in procs] + ([busy.pid] if busy else []))
        for p in procs:
            p.stdin.write("GO\n")
            p.stdin.flush()
        if kind == "leave":   # the other process ends half-way through the window
            time.sleep(args.seconds / 2)
            others.forget(busy.pid)
            busy.kill()
            busy.wait()
            busy = None
        results = []
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("DONE "):
                raise SystemExit(f"a worker died ({contender}, {case['name']}, {kind}): exit {p.wait()}")
            results.append(json.loads(line[5:]))
        out = {"procs": results, "others": others.cores()}
        if busy:
            out["loop_share"] = (cpu_seconds(busy.pid) - c0) / (time.perf_counter() - w0)
            busy.kill()
            busy.wait()
        for p in procs:
            p.stdin.write("STOP\n")
            p.stdin.flush()
            p.wait()
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def rate(proc, half=False):
    """Steps per second of one process's window (half: of the steps that start in its second
    half, once an adapting policy has settled; the whole window if none do)."""
    ends = [s[0] for s in proc["steps"]]
    start = max([t for t in ends if t <= ends[-1] / 2], default=0.0) if half else 0.0
    n = sum(t > start for t in ends)
    return n / (ends[-1] - start)


def median_ms(procs):
    return 1e3 * statistics.median(s[1] for p in procs for s in p["steps"])


def summarise(res):
    """res: {kind: [scenario results over repeats]} -> the figures of the table."""
    alone = statistics.median(rate(r["procs"][0]) for r in res["alone"])
    row = {"alone_ms": statistics.median(median_ms(r["procs"]) for r in res["alone"]), "alone_rate": alone,
           "others": max(r.get("others", 0.0) for k in res for r in res[k])}
    if "pair" in res:
        row["pair_ms"] = statistics.median(median_ms(r["procs"]) for r in res["pair"])
        row["pair_total"] = statistics.median(sum(rate(p) for p in r["procs"]) for r in res["pair"]) / alone
        row["pair_half"] = statistics.median(sum(rate(p, True) for p in r["procs"]) for r in res["pair"]) / alone
        row["pair_threads"] = [p["steps"][-1][2] for p in res["pair"][-1]["procs"]]
    if res.get("leave"):
        last = res["leave"][-1]["procs"][0]
        row["leave_half"] = statistics.median(rate(r["procs"][0], True) for r in res["leave"]) / alone
        row["leave_changes"] = " ".join(f"{t:g}s:{n}" for t, n in last["changes"] or [])
    if "busy" in res:
        row["busy_ms"] = statistics.median(median_ms(r["procs"]) for r in res["busy"])
        row["busy_rel"] = statistics.median(rate(r["procs"][0]) for r in res["busy"]) / alone
        row["busy_half"] = statistics.median(rate(r["procs"][0], True) for r in res["busy"]) / alone
        row["loop_share"] = statistics.median(r["loop_share"] for r in res["busy"])
        row["busy_threads"] = res["busy"][-1]["procs"][0]["steps"][-1][2]
    return row


def label(contender):
    return "torch" if contender[0] == "torch" else f"minillm {contender[1]}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny-cd only, 4 s windows")
    ap.add_argument("--configs", default=None, help="size-arch list as in train_step.py (default tiny-cd,small-cd)")
    ap.add_argument("--policies", default="today,adapt", help="minillm policies to compare (see above)")
    ap.add_argument("--scenarios", default="alone,pair,busy", help="any of alone,pair,busy,leave (alone is always "
                    "run; leave: beside a busy loop that stops half-way)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="window per scenario (default 6, small configs 12; --quick 4)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the window")
    ap.add_argument("--repeat", type=int, default=1, help="run every scenario this many times, contenders "
                    "alternating (medians are reported)")
    ap.add_argument("--no-torch", action="store_true", help="minillm only")
    ap.add_argument("--retries", type=int, default=2, help=f"run a window again (up to this many times) when "
                    f"other processes used more than {NOT_QUIET} cores during it")
    ap.add_argument("--wait-quiet", type=float, default=120, metavar="S", help="before each window, wait up to S "
                    "seconds for other processes to use under 0.1 core (0: do not wait)")
    ap.add_argument("--json", metavar="FILE", default=None, help="also write every step time to FILE")
    ap.add_argument("--_worker", dest="worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))

    cases = ts.parse_configs(args.configs or ("tiny-cd" if args.quick else "tiny-cd,small-cd"))
    contenders = ([] if args.no_torch or not ts.torch_available() else [("torch", "")]) + \
        [("minillm", p.strip()) for p in args.policies.split(",") if p.strip()]
    for c in contenders:
        if c[0] == "minillm":
            policy_env(c[1])   # fail on a bad name before anything runs
    kinds = ["alone"] + [k for k in ("pair", "busy", "leave") if k in args.scenarios.split(",")]
    log = args.log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report = {"loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "cases": {},
              "settings": {k: v for k, v in vars(args).items() if k != "log"}}
    started = time.time()
    given = args.seconds
    for case in cases:
        args.seconds = given or (4.0 if args.quick else 6.0) * (2 if case["size"] == "small" else 1)
        res = {label(c): {k: [] for k in kinds} for c in contenders}
        try:
            for kind in kinds:
                for _ in range(args.repeat):
                    for c in contenders:
                        r = scenario(case, c, kind, args)
                        for _ in range(args.retries):   # other processes ran meanwhile: again, keep the quietest
                            if r["others"] <= NOT_QUIET:
                                break
                            log(f"  {case['name']} {label(c)} {kind}: other processes used {r['others']:.2f} "
                                "cores: running it again")
                            r = min(r, scenario(case, c, kind, args), key=lambda x: x["others"])
                        res[label(c)][kind].append(r)
                        ms = median_ms(r["procs"])
                        thr = [p["steps"][-1][2] for p in r["procs"]]
                        log(f"{case['name']} {label(c)} {kind}: {ms:.0f} ms/step, {sum(map(rate, r['procs'])):.2f} "
                            f"steps/s, threads at end {thr}, other processes {r['others']:.2f} cores"
                            + (f", loop {r['loop_share']:.2f} core" if "loop_share" in r else "")
                            + "".join(f", changes {p['changes']}" for p in r["procs"] if p["changes"]))
        except KeyboardInterrupt:
            log("interrupted: reporting what was measured")
        report["cases"][case["name"]] = {"tokens": case["batch"] * case["T"], "seconds": args.seconds, "results": res}
    report["loadavg_end"] = os.getloadavg()
    report["wall_seconds"] = time.time() - started
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)


def print_report(report):
    print(f"\ntraining throughput when processes share the cores ({report['cpus']} CPUs, load average "
          f"{report['loadavg_start'][0]:.2f} -> {report['loadavg_end'][0]:.2f}, {report['wall_seconds']:.0f} s)")
    print("ms = median step; pair total = summed rate of two processes / rate alone; beside busy = rate beside a "
          "busy loop / rate alone (loop = its share of a core); 2nd half = the same over the second half of the "
          "window (after adapting); thr = threads at the end; vs torch = torch alone ms / this alone ms; "
          "leave = the busy loop stops half-way: thread changes (s, count); others = the most CPU (cores) other "
          "processes used in any window of the row: above ~0.15 the machine was not quiet")
    hdr = ["config", "who", "window s", "alone ms", "tok/s", "vs torch", "pair ms", "pair total", "2nd half", "thr",
           "busy ms", "beside busy", "2nd half", "loop", "thr", "others"]
    rows = []
    for name, c in report["cases"].items():
        rows_c = {who: summarise(res) for who, res in c["results"].items() if res["alone"]}
        torch_ms = rows_c.get("torch", {}).get("alone_ms")
        for who, r in rows_c.items():
            g = lambda k, f: f.format(r[k]) if k in r else "-"  # noqa: E731
            rows.append([name, who, f"{c['seconds']:g}", f"{r['alone_ms']:.1f}",
                         f"{c['tokens'] * r['alone_rate']:,.0f}",
                         f"{torch_ms / r['alone_ms']:.2f}x" if torch_ms else "-",
                         g("pair_ms", "{:.0f}"), g("pair_total", "{:.2f}x"), g("pair_half", "{:.2f}x"),
                         "/".join(map(str, r.get("pair_threads", []))) or "-",
                         g("busy_ms", "{:.0f}"), g("busy_rel", "{:.2f}x"), g("busy_half", "{:.2f}x"),
                         g("loop_share", "{:.2f}"),
                         str(r.get("busy_threads", "-")), f"{r['others']:.2f}"])
    print(ts.table(hdr, rows))
    for name, c in report["cases"].items():
        for who, res in c["results"].items():
            if res.get("leave") and res["alone"]:
                r = summarise(res)
                print(f"leave, {name}, {who}: rate in the second half {r['leave_half']:.2f}x alone; "
                      f"thread changes: {r['leave_changes'] or 'none'}")


if __name__ == "__main__":
    main()
