#!/usr/bin/env python
"""One training step of minillm against PyTorch eager on the same CPU.

A training step is: forward, cross-entropy loss, backward, AdamW step. The PyTorch side is
a small twin of minillm's models written below (pre-LN blocks, separate q/k/v/out
projections, learned positions, token embedding tied to the output layer, GELU with the
tanh approximation, final LayerNorm; ED with a cross-attention in every decoder layer),
loaded with *minillm's own weights*, so both frameworks run the same model on the same
batch with the same optimiser settings. The first two warm-up steps double as a check:
their losses must agree (column "dloss").

    python benchmarks/train_step.py                  # 6 configs x threads 1,2 + memory
    python benchmarks/train_step.py --sweep          # ... plus the scaling sweep (full run)
    python benchmarks/train_step.py --quick          # tiny configs, few reps (~1-2 min)
    python benchmarks/train_step.py --configs tiny-cd,small --threads 2 --json out.json
    python benchmarks/train_step.py --contention     # alone, two at once, beside a busy process
                                                     # (benchmarks/contention.py; --quick, --policies ...)

Every thread count runs in its own subprocess, with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
MKL_NUM_THREADS, NUMBA_NUM_THREADS and MINILLM_NUM_THREADS set before NumPy or torch is
imported (and torch.set_num_threads / minillm.kernels.set_num_threads called in it).
minillm runs in that subprocess and PyTorch in a second one beside it (in one process their
thread pools interfere); the two alternate step by step after warm-up (the order flips every
repetition, with a garbage collection and a short pause before each timed step so that no
thread pool is still spinning), and the table reports medians. Without torch installed,
minillm runs alone.

Peak memory: each (framework, config) runs in a fresh subprocess that imports the framework,
runs two steps of a toy model of the same architecture (to load the JIT kernels / torch's
lazy state), records `ru_maxrss` (the baseline), then runs a few steps of the real model
and records `ru_maxrss` again. Both the peak and peak - baseline are reported.

Configs (vocabulary 256, 4 heads, batch 16, float32):
    tiny   d_model 128, 4 layers, d_ff 512,  T 128
    small  d_model 256, 6 layers, d_ff 1024, T 256
    cd     causal decoder, loss on every position
    nd     prefix decoder, prefix_len = T/2, loss on the positions after the prefix
    ed     encoder-decoder, source T/2 and target T/2, L layers *per stack* (so a sequence
           of T tokens costs about the FLOPs of the L-layer decoder-only model), loss on
           every target position
tokens/s counts every input token of the step (B*T; for ED source + target).
ratio = minillm tokens/s / PyTorch tokens/s (= PyTorch time / minillm time): above 1
means minillm is faster.
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

SIZES = {
    "tiny": dict(vocab=256, d_model=128, n_heads=4, n_layers=4, d_ff=512, T=128, batch=16),
    "small": dict(vocab=256, d_model=256, n_heads=4, n_layers=6, d_ff=1024, T=256, batch=16),
}
ARCHS = ("cd", "nd", "ed")
LR, WEIGHT_DECAY, BETAS, EPS = 1e-3, 0.1, (0.9, 0.95), 1e-8
SWEEP_T = (64, 128, 256, 512)
SWEEP_LAYERS = (2, 4, 8)


def make_case(size, arch, **over):
    c = dict(SIZES[size], arch=arch, size=size)
    c.update(over)
    c["name"] = f"{size}-{arch}" + "".join(f" {k}={v}" for k, v in over.items())
    return c


def parse_configs(text):
    """'tiny-cd,small' -> cases; a bare size means all three archs, a bare arch both sizes."""
    cases = []
    for tok in [t.strip().lower() for t in text.split(",") if t.strip()]:
        if tok in SIZES:
            cases += [make_case(tok, a) for a in ARCHS]
        elif tok in ARCHS:
            cases += [make_case(s, tok) for s in SIZES]
        elif "-" in tok and tok.split("-", 1)[0] in SIZES and tok.split("-", 1)[1] in ARCHS:
            cases.append(make_case(*tok.split("-", 1)))
        else:
            raise SystemExit(f"--configs: unknown config {tok!r}; use e.g. tiny-cd, small-ed, tiny, nd")
    return cases


# ======================================================================================
# The batch (plain NumPy; both frameworks receive the same arrays)
# ======================================================================================

def make_batch(case, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    B, T, V = case["batch"], case["T"], case["vocab"]
    if case["arch"] == "ed":
        S = T2 = T // 2
        src = rng.integers(0, V, (B, S)).astype(np.int64)
        tgt = rng.integers(0, V, (B, T2 + 1)).astype(np.int64)
        return dict(src=src, inp=tgt[:, :-1].copy(), tgt=tgt[:, 1:].copy(), prefix=None)
    seq = rng.integers(0, V, (B, T + 1)).astype(np.int64)
    inp, tgt = seq[:, :-1].copy(), seq[:, 1:].copy()
    prefix = None
    if case["arch"] == "nd":
        prefix = T // 2
        tgt[:, :prefix] = -100  # loss on the continuation only
    return dict(src=None, inp=inp, tgt=tgt, prefix=prefix)


# ======================================================================================
# minillm
# ======================================================================================

class MinillmStep:
    def __init__(self, case, seed=0):
        import minillm
        from minillm import functional as F, optim
        from minillm.model.models import ModelConfig, build_model
        self.F = F
        max_len = case["T"] // 2 if case["arch"] == "ed" else case["T"]
        cfg = ModelConfig(vocab_size=case["vocab"], d_model=case["d_model"], n_heads=case["n_heads"],
                          n_layers=case["n_layers"], d_ff=case["d_ff"], max_len=max_len)
        self.model = build_model(case["arch"], cfg, seed)
        self.opt = optim.AdamW(self.model, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        self.arch = case["arch"]
        self.minillm = minillm

    def set_batch(self, b):
        self.b = b

    def forward_flops(self, case):
        try:
            if self.arch == "ed":
                return self.model.forward_flops(case["T"] // 2, case["T"] // 2)
            return self.model.forward_flops(case["T"])
        except Exception:  # the API moved: FLOPs are informative only
            return None

    def __call__(self):
        b = self.b
        self.opt.zero_grad()
        if self.arch == "ed":
            logits = self.model(b["src"], b["inp"])
        elif self.arch == "nd":
            logits = self.model(b["inp"], prefix_len=b["prefix"])
        else:
            logits = self.model(b["inp"])
        loss = self.F.cross_entropy(logits, b["tgt"])
        loss.backward()
        self.opt.step()
        return float(loss.data)


# ======================================================================================
# PyTorch twin (defined only when torch imports)
# ======================================================================================

def torch_twin_classes():
    import torch
    from torch import nn
    import torch.nn.functional as tF

    class Attention(nn.Module):
        def __init__(self, d, h, sdpa):
            super().__init__()
            self.h, self.sdpa = h, sdpa
            self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x, memory=None, mask=None, causal=False):
            B, T, D = x.shape
            src = x if memory is None else memory
            S = src.shape[1]
            split = lambda t, n: t.view(B, n, self.h, D // self.h).transpose(1, 2)  # noqa: E731
            q, k, v = split(self.q(x), T), split(self.k(src), S), split(self.v(src), S)
            if self.sdpa:
                y = tF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            else:  # the textbook version: materialise the (B, H, T, S) scores
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D // self.h))
                if causal:
                    mask = torch.ones(T, S, dtype=torch.bool).tril()
                if mask is not None:
                    att = att.masked_fill(~mask, float("-inf"))
                y = att.softmax(-1) @ v
            return self.out(y.transpose(1, 2).reshape(B, T, D))

    class FeedForward(nn.Module):
        def __init__(self, d, d_ff):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

        def forward(self, x):
            return self.fc2(tF.gelu(self.fc1(x), approximate="tanh"))

    class EncoderBlock(nn.Module):
        def __init__(self, d, h, d_ff, sdpa):
            super().__init__()
            self.ln1, self.attn = nn.LayerNorm(d), Attention(d, h, sdpa)
            self.ln2, self.ff = nn.LayerNorm(d), FeedForward(d, d_ff)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.ff(self.ln2(x))

    class DecoderBlock(nn.Module):
        def __init__(self, d, h, d_ff, sdpa, cross):
            super().__init__()
            self.ln1, self.self_attn = nn.LayerNorm(d), Attention(d, h, sdpa)
            if cross:
                self.ln_cross, self.cross_attn = nn.LayerNorm(d), Attention(d, h, sdpa)
            else:
                self.cross_attn = None
            self.ln2, self.ff = nn.LayerNorm(d), FeedForward(d, d_ff)

        def forward(self, x, mask=None, causal=False, memory=None):
            x = x + self.self_attn(self.ln1(x), mask=mask, causal=causal)
            if self.cross_attn is not None:
                x = x + self.cross_attn(self.ln_cross(x), memory=memory)
            return x + self.ff(self.ln2(x))

    def init_gpt2(model, n_layers):
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith(("ln_", "enc_ln", "dec_ln")):
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    class DecoderOnly(nn.Module):
        def __init__(self, c, arch, sdpa):
            super().__init__()
            d, self.arch = c["d_model"], arch
            self.tok_emb, self.pos_emb = nn.Embedding(c["vocab"], d), nn.Embedding(c["T"], d)
            self.blocks = nn.ModuleList(DecoderBlock(d, c["n_heads"], c["d_ff"], sdpa, False)
                                        for _ in range(c["n_layers"]))
            self.ln_f = nn.LayerNorm(d)
            init_gpt2(self, c["n_layers"])

        def forward(self, tokens, prefix_len=None):
            T = tokens.shape[1]
            mask, causal = None, self.arch == "cd"
            if not causal:
                i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
                mask = (j <= i) | ((i < prefix_len) & (j < prefix_len))
            x = self.tok_emb(tokens) + self.pos_emb.weight[:T]
            for blk in self.blocks:
                x = blk(x, mask=mask, causal=causal)
            return tF.linear(self.ln_f(x), self.tok_emb.weight)

    class EncoderDecoder(nn.Module):
        def __init__(self, c, sdpa):
            super().__init__()
            d, L, n = c["d_model"], c["n_layers"], c["T"] // 2
            self.tok_emb = nn.Embedding(c["vocab"], d)
            self.enc_pos, self.dec_pos = nn.Embedding(n, d), nn.Embedding(n, d)
            self.encoder = nn.ModuleList(EncoderBlock(d, c["n_heads"], c["d_ff"], sdpa) for _ in range(L))
            self.enc_ln = nn.LayerNorm(d)
            self.decoder = nn.ModuleList(DecoderBlock(d, c["n_heads"], c["d_ff"], sdpa, True) for _ in range(L))
            self.dec_ln = nn.LayerNorm(d)
            init_gpt2(self, L)

        def forward(self, src, tgt):
            x = self.tok_emb(src) + self.enc_pos.weight[:src.shape[1]]
            for blk in self.encoder:
                x = blk(x)
            memory = self.enc_ln(x)
            y = self.tok_emb(tgt) + self.dec_pos.weight[:tgt.shape[1]]
            for blk in self.decoder:
                y = blk(y, causal=True, memory=memory)
            return tF.linear(self.dec_ln(y), self.tok_emb.weight)

    return DecoderOnly, EncoderDecoder


class TorchStep:
    def __init__(self, case, sdpa=True):
        import torch
        import torch.nn.functional as tF
        DecoderOnly, EncoderDecoder = torch_twin_classes()
        self.torch, self.tF, self.arch = torch, tF, case["arch"]
        self.model = EncoderDecoder(case, sdpa) if case["arch"] == "ed" else DecoderOnly(case, case["arch"], sdpa)
        self.make_optimizer()

    def make_optimizer(self):
        # minillm's decay="auto" rule: matrices decay, biases/LayerNorm/embeddings do not
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim >= 2 and "emb" not in n]
        rest = [p for n, p in named if not (p.ndim >= 2 and "emb" not in n)]
        self.opt = self.torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                           {"params": rest, "weight_decay": 0.0}],
                                          lr=LR, betas=BETAS, eps=EPS)

    def load_minillm(self, mini_model):
        """Copy minillm's weights (Linear weights transposed: minillm stores (d_in, d_out)).
        Returns None on success, else why not (the names no longer match)."""
        torch = self.torch
        src = {n: p.data for n, p in mini_model.named_parameters()}
        linear = {f"{m}.weight" for m, mod in self.model.named_modules() if isinstance(mod, torch.nn.Linear)}
        dst = dict(self.model.named_parameters())
        if set(src) != set(dst):
            diff = sorted(set(src) ^ set(dst))
            return f"parameter names differ ({len(diff)}: {', '.join(diff[:3])}...)"
        with torch.no_grad():
            for n, p in dst.items():
                a = src[n].T if n in linear else src[n]
                if tuple(a.shape) != tuple(p.shape):
                    return f"shape of {n} differs: {a.shape} vs {tuple(p.shape)}"
                p.copy_(torch.from_numpy(a.copy()))
        self.make_optimizer()
        return None

    def set_batch(self, b):
        t = self.torch.from_numpy
        self.src = None if b["src"] is None else t(b["src"])
        self.inp, self.tgt, self.prefix = t(b["inp"]), t(b["tgt"]).reshape(-1), b["prefix"]

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        if self.arch == "ed":
            logits = self.model(self.src, self.inp)
        else:
            logits = self.model(self.inp, self.prefix)
        loss = self.tF.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.tgt, ignore_index=-100)
        loss.backward()
        self.opt.step()
        return loss.item()


def torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# ======================================================================================
# Workers (run in subprocesses with the thread environment already set)
# ======================================================================================

def setup_threads(n, frameworks):
    out = {}
    if "minillm" in frameworks:
        from minillm.engine import kernels as K
        out["minillm"] = K.set_num_threads(n)
    if "torch" in frameworks:
        import torch
        torch.set_num_threads(n)
        out["torch"] = torch.get_num_threads()
    return out


def summary(times):
    s = sorted(times)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return {"median": statistics.median(s), "p25": q[0], "p75": q[2], "min": s[0], "max": s[-1],
            "times": times}


def pause():
    gc.collect()
    time.sleep(0.03)  # let spinning BLAS/OpenMP workers go to sleep before the next timed step


def timed(step):
    """Wall and CPU seconds of one step, after a pause."""
    pause()
    c, t = time.process_time(), time.perf_counter()
    step()
    return time.perf_counter() - t, time.process_time() - c


class TorchServer:
    """The PyTorch twin in its own process, driven one step at a time over a pipe.

    Each framework runs in its own process, as a user would run it: in one process the
    thread pools of the two frameworks (Numba's, PyTorch's OpenMP) interfere with each
    other. The steps still alternate one by one, so both share the machine's noise."""

    def __init__(self, threads, sdpa):
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "torch-server",
               "--_payload", json.dumps({"threads": threads, "sdpa": sdpa})]
        env = dict(thread_env(threads), MINILLM_KERNELS="numpy")   # minillm there only builds weights
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the torch server died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        self.ask(cmd="quit")
        self.proc.wait()


def torch_server(threads, sdpa):
    """The other end of TorchServer: set up a case, run timed steps, until told to quit."""
    version = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            print(json.dumps({}), flush=True)
            return
        if msg["cmd"] == "setup":
            actual = setup_threads(threads, ["torch"])["torch"]
            import torch
            version = torch.__version__
            case = msg["case"]
            step = TorchStep(case, sdpa)
            note = step.load_minillm(MinillmStep(case).model)   # the same initial weights
            step.set_batch(make_batch(case))
            losses = [step() for _ in range(msg["warmup"])]
            out = {"losses": losses, "note": note, "threads": actual, "version": version}
        else:
            wall, cpu = timed(step)
            out = {"wall": wall, "cpu": cpu}
        print(json.dumps(out), flush=True)


def time_cases(cases, threads, reps, warmup, use_torch, sdpa, log):
    actual = setup_threads(threads, ["minillm"])
    import minillm
    where = {"minillm": os.path.dirname(minillm.__file__), "minillm_kernels": minillm.kernels.backend()}
    server = TorchServer(threads, sdpa) if use_torch else None
    results = []
    for case in cases:
        t0 = time.perf_counter()
        batch = make_batch(case)
        mini = MinillmStep(case)
        mini.set_batch(batch)
        res = {"case": case, "threads": threads, "threads_in_force": actual, "versions": where,
               "tokens": case["batch"] * case["T"], "fwd_flops": mini.forward_flops(case)}
        if res["fwd_flops"] is not None:
            res["fwd_flops"] *= case["batch"]
        # warm-up; the first two steps from identical weights double as the twin check
        res["losses"] = {"minillm": [mini() for _ in range(max(warmup, 2))]}
        steps = {"minillm": lambda: timed(mini)}
        if server:
            reply = server.ask(cmd="setup", case=case, warmup=max(warmup, 2))
            actual["torch"], where["torch"] = reply["threads"], reply["version"]
            res["losses"]["torch"], note = reply["losses"], reply["note"]
            res["dloss"] = None if note else max(abs(a - b) for a, b in zip(res["losses"]["minillm"][:2], reply["losses"][:2]))
            res["twin_note"] = note
            steps["torch"] = lambda: tuple(server.ask(cmd="step")[k] for k in ("wall", "cpu"))
        times, cpu = {k: [] for k in steps}, {k: [] for k in steps}
        order = list(steps)
        for r in range(reps):
            for k in (order if r % 2 == 0 else order[::-1]):
                wall, c = steps[k]()
                times[k].append(wall)
                cpu[k].append(c)
        for k in steps:
            res[k] = summary(times[k])
            res[k]["cpu_median"] = statistics.median(cpu[k])
        results.append(res)
        msg = "  ".join(f"{k} {res[k]['median'] * 1e3:.0f} ms" for k in steps)
        log(f"[{threads} thr] {case['name']}: {msg}  ({time.perf_counter() - t0:.0f} s)")
        del mini, steps
        gc.collect()
    if server:
        server.close()
    return results


def memory_case(case, framework, steps, sdpa):
    import resource
    toy = dict(case, d_model=32, n_heads=2, n_layers=1, d_ff=64, T=8, batch=2)
    make = (lambda c: MinillmStep(c)) if framework == "minillm" else (lambda c: TorchStep(c, sdpa))
    s = make(toy)
    s.set_batch(make_batch(toy))
    for _ in range(2):
        s()
    del s
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = make(case)
    s.set_batch(make_batch(case))
    for _ in range(steps):
        s()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2 ** 20  # KiB on Linux, bytes on macOS
    return {"base_mb": base * scale, "peak_mb": peak * scale, "step_mb": (peak - base) * scale}


def profile_case(case, steps, sort_keys, top):
    import cProfile
    import pstats
    s = MinillmStep(case)
    s.set_batch(make_batch(case))
    for _ in range(3):
        s()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        s()
    pr.disable()
    for key in sort_keys:
        print(f"\n==== minillm {case['name']}, {steps} steps, sorted by {key} ====")
        pstats.Stats(pr).strip_dirs().sort_stats(key).print_stats(top)


def worker(args):
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    payload = json.loads(args.worker_payload)
    if args.worker == "time":
        out = time_cases(payload["cases"], payload["threads"], payload["reps"], payload["warmup"],
                         payload["torch"], payload["sdpa"], log)
    elif args.worker == "torch-server":
        torch_server(payload["threads"], payload["sdpa"])
        return
    elif args.worker == "memory":
        setup_threads(payload["threads"], [payload["framework"]])
        out = memory_case(payload["case"], payload["framework"], payload["steps"], payload["sdpa"])
    elif args.worker == "profile":
        setup_threads(payload["threads"], ["minillm"])
        profile_case(payload["case"], payload["steps"], ("cumulative", "tottime"), payload["top"])
        return
    print("RESULT " + json.dumps(out), flush=True)


# ======================================================================================
# The driver
# ======================================================================================

def thread_env(n):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                "MINILLM_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(n)
    return env


def run_worker(kind, payload, threads, capture=True):
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", kind, "--_payload", json.dumps(payload)]
    p = subprocess.run(cmd, env=thread_env(threads), stdout=subprocess.PIPE if capture else None, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{kind} worker failed (exit {p.returncode}) for {payload.get('case', {}).get('name', '')}")
    if not capture:
        return None
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"{kind} worker printed no result")


def git_rev(path):
    """' (git abc1234[+local changes])' for a path inside a git checkout, else ''."""
    try:
        rev = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {rev}{' + local changes' if dirty else ''})" if rev else ""


def loglog_slope(xs, ys):
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def table(headers, rows, aligns=None):
    cols = list(zip(headers, *rows))
    widths = [max(len(str(v)) for v in col) for col in cols]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    fmt = lambda r: "  ".join(f"{str(v):{a}{w}}" for v, a, w in zip(r, aligns, widths))  # noqa: E731
    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def spread(s):
    return f"{100 * (s['p75'] - s['p25']) / s['median']:.0f}%"


def main():
    if "--contention" in sys.argv[1:]:   # two experiments at once: benchmarks/contention.py
        import contention
        return contention.main([a for a in sys.argv[1:] if a != "--contention"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny configs only, few repetitions")
    ap.add_argument("--configs", default=None,
                    help="comma list of size-arch (tiny-cd), size (tiny) or arch (nd); default all six")
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts (default 1,2)")
    ap.add_argument("--sweep", action="store_true",
                    help=f"also time tiny CD at T={SWEEP_T} and layers={SWEEP_LAYERS} and fit log-log exponents")
    ap.add_argument("--sweep-threads", type=int, default=None, help="threads for the sweep (default: the smallest of --threads, normally 1: the exponents then "
                         "measure work, not parallel efficiency, and resist other load on the machine)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per framework and config (default 9; --quick 3)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 2: they check the twin)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--no-torch", action="store_true", help="time minillm alone even if torch is installed")
    ap.add_argument("--torch-attention", choices=("sdpa", "manual"), default="sdpa",
                    help="PyTorch attention: F.scaled_dot_product_attention (default) or the materialised "
                         "scores/mask/softmax/matmul a textbook twin of minillm would write")
    ap.add_argument("--profile", metavar="CONFIG", default=None,
                    help="instead of timing, cProfile minillm steps of one config (e.g. tiny-cd) and print hot spots")
    ap.add_argument("--json", metavar="FILE", default=None, help="also write every measurement to FILE")
    ap.add_argument("--_worker", dest="worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_payload", dest="worker_payload", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.profile:
        (case,) = parse_configs(args.profile)[:1]
        run_worker("profile", {"case": case, "threads": threads[-1], "steps": 10, "top": 30}, threads[-1], capture=False)
        return
    cases = parse_configs(args.configs or ("tiny" if args.quick else "tiny,small"))
    reps = args.reps or (3 if args.quick else 9)
    use_torch = torch_available() and not args.no_torch
    sdpa = args.torch_attention == "sdpa"
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    mem_threads = max(threads)
    sweep_threads = args.sweep_threads or min(threads)
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
              "settings": {"reps": reps, "warmup": args.warmup, "torch": use_torch,
                           "torch_attention": args.torch_attention, "threads": threads},
              "timing": [], "memory": [], "sweep": {}}
    if not use_torch:
        log("torch is not installed (or --no-torch): timing minillm alone. "
            "CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu")

    try:
        for n in threads:
            report["timing"] += run_worker("time", {"cases": cases, "threads": n, "reps": reps,
                                                    "warmup": args.warmup, "torch": use_torch, "sdpa": sdpa}, n)
        if not args.no_memory:
            for case in cases:
                for fw in ["minillm"] + (["torch"] if use_torch else []):
                    m = run_worker("memory", {"case": case, "framework": fw, "threads": mem_threads,
                                              "steps": 3, "sdpa": sdpa}, mem_threads)
                    m.update(case=case["name"], framework=fw)
                    report["memory"].append(m)
                    log(f"[memory] {case['name']} {fw}: peak {m['peak_mb']:.0f} MB, step {m['step_mb']:.0f} MB")
        if args.sweep:
            sreps = max(3, reps // 2) if not args.quick else 2
            for axis, values in (("T", SWEEP_T), ("n_layers", SWEEP_LAYERS)):
                sc = [make_case("tiny", "cd", **{axis: v}) for v in values]
                report["sweep"][axis] = run_worker("time", {"cases": sc, "threads": sweep_threads, "reps": sreps,
                                                            "warmup": 2, "torch": use_torch, "sdpa": sdpa},
                                                   sweep_threads)
    except (KeyboardInterrupt, SystemExit) as e:  # report what was measured so far
        report["interrupted"] = str(e) or type(e).__name__
        log(f"interrupted ({report['interrupted']}): reporting what was measured")

    report["machine"]["loadavg_end"] = os.getloadavg()
    if report.get("interrupted"):
        print(f"INTERRUPTED ({report['interrupted']}): partial results", file=sys.stderr)
    report["machine"]["seconds"] = time.time() - started
    print_report(report, use_torch, mem_threads, sweep_threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


def print_report(report, use_torch, mem_threads, sweep_threads):
    m, s = report["machine"], report["settings"]
    print(f"\nminillm vs PyTorch eager: one training step (forward, cross-entropy, backward, AdamW)")
    print(f"python {m['python']}, {m['cpus']} CPUs, load average {m['loadavg_start'][0]:.2f} -> "
          f"{m['loadavg_end'][0]:.2f}; {s['reps']} alternating timed steps per framework after "
          f"{max(s['warmup'], 2)} warm-up steps; medians")
    if use_torch:
        import importlib.metadata
        print(f"torch {importlib.metadata.version('torch')} (attention: {s['torch_attention']}); "
              "ratio = minillm tokens/s / torch tokens/s (>1: minillm faster); "
              "dloss = |loss difference| over the first two steps from identical weights")
    print("ED: source T/2 + target T/2 with L layers per stack (about the FLOPs per token of the L-layer "
          "decoder-only model); ND: prefix_len = T/2, loss after the prefix. "
          "GF/s: 3 x nominal forward FLOPs / step time")
    if report["timing"]:
        v = report["timing"][0]["versions"]
        print(f"minillm from {v['minillm']}{git_rev(v['minillm'])}, kernels: {v['minillm_kernels']}")
    print("ms = median wall time of a step, iqr = interquartile range / median, cpu = median process CPU "
          "time of a step (less sensitive to other load on the machine; at 1 thread it is the work done, "
          "with more threads it includes spin-waiting); cpu ratio = torch cpu / minillm cpu\n")
    hdr = ["config", "thr", "tokens", "minillm ms", "iqr", "cpu", "tok/s", "GF/s"]
    if use_torch:
        hdr += ["torch ms", "iqr", "cpu", "tok/s", "GF/s", "ratio", "cpu ratio", "dloss"]
    rows = []
    for r in report["timing"]:
        mm = r["minillm"]["median"]
        gf = lambda t: f"{3 * r['fwd_flops'] / t / 1e9:.0f}" if r["fwd_flops"] else "-"  # noqa: E731
        row = [r["case"]["name"], r["threads"], r["tokens"], f"{mm * 1e3:.1f}", spread(r["minillm"]),
               f"{r['minillm']['cpu_median'] * 1e3:.0f}", f"{r['tokens'] / mm:,.0f}", gf(mm)]
        if use_torch:
            tm = r["torch"]["median"]
            row += [f"{tm * 1e3:.1f}", spread(r["torch"]), f"{r['torch']['cpu_median'] * 1e3:.0f}",
                    f"{r['tokens'] / tm:,.0f}", gf(tm),
                    f"{tm / mm:.2f}x", f"{r['torch']['cpu_median'] / r['minillm']['cpu_median']:.2f}x",
                    "n/a" if r["dloss"] is None else f"{r['dloss']:.1e}"]
        rows.append(row)
    print(table(hdr, rows))
    notes = {r["twin_note"] for r in report["timing"] if r.get("twin_note")}
    for n in notes:
        print(f"note: torch twin not loaded with minillm's weights: {n}")

    if report["memory"]:
        print(f"\npeak resident memory, each framework and config in its own process ({mem_threads} threads; "
              "baseline = after import and two toy steps; step = peak - baseline)")
        by = {(x["case"], x["framework"]): x for x in report["memory"]}
        names = list(dict.fromkeys(x["case"] for x in report["memory"]))
        hdr = ["config", "minillm base MB", "peak MB", "step MB"]
        if use_torch:
            hdr += ["torch base MB", "peak MB", "step MB", "peak ratio", "step ratio"]
        rows = []
        for n in names:
            a = by[(n, "minillm")]
            row = [n, f"{a['base_mb']:.0f}", f"{a['peak_mb']:.0f}", f"{a['step_mb']:.0f}"]
            if use_torch:
                b = by[(n, "torch")]
                row += [f"{b['base_mb']:.0f}", f"{b['peak_mb']:.0f}", f"{b['step_mb']:.0f}",
                        f"{a['peak_mb'] / b['peak_mb']:.2f}x", f"{a['step_mb'] / max(b['step_mb'], 1e-9):.2f}x"]
            rows.append(row)
        print(table(hdr, rows))
        if use_torch:
            print("ratios: minillm / torch (below 1: minillm uses less)")

    for axis, res in list(report["sweep"].items()):
        label = "T" if axis == "T" else "layers"
        print(f"\nscaling sweep: tiny CD, step time against {label} ({sweep_threads} thread{'s' if sweep_threads > 1 else ''})")
        xs = [r["case"][axis] for r in res]
        fws = ["minillm"] + (["torch"] if use_torch else [])
        hdr = [label] + [f"{f} {q}" for f in fws for q in ("ms", "cpu ms", "us/token")] + \
              (["ratio", "cpu ratio"] if use_torch else [])
        rows = []
        for x, r in zip(xs, res):
            row = [x]
            for f in fws:
                row += [f"{r[f]['median'] * 1e3:.1f}", f"{r[f]['cpu_median'] * 1e3:.1f}",
                        f"{r[f]['median'] / r['tokens'] * 1e6:.1f}"]
            if use_torch:
                row += [f"{r['torch']['median'] / r['minillm']['median']:.2f}x",
                        f"{r['torch']['cpu_median'] / r['minillm']['cpu_median']:.2f}x"]
            rows.append(row)
        print(table(hdr, rows))
        for what, key in (("wall", "median"), ("cpu", "cpu_median")):
            exps = []
            for f in fws:
                ys = [r[f][key] for r in res]
                fit = loglog_slope(xs, ys)
                local = [loglog_slope(xs[i:i + 2], ys[i:i + 2]) for i in range(len(xs) - 1)]
                report.setdefault("exponents", {})[f"{f}:{axis}:{what}"] = {"fit": fit, "local": local}
                exps.append(f"{f} {fit:.2f} (neighbours: {', '.join(f'{e:.2f}' for e in local)})")
            print(f"exponent of {what} time in {label} (log-log least squares): " + "; ".join(exps))


if __name__ == "__main__":
    main()
