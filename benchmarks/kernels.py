"""Numba kernels vs their NumPy twins (and np.matmul, i.e. OpenBLAS, for GEMM), same run.

    python benchmarks/kernels.py              # kernels on 1 and 2 threads
    python benchmarks/kernels.py --threads 1 --tables plain   # only the plain vs tuned GEMM, 1 thread
    python benchmarks/kernels.py --policy     # + thread policy: workqueue vs OpenMP layer
    python benchmarks/kernels.py --compile    # + cold compile and cached start-up times

Times are medians over repeated runs (the machine is shared and noisy). "x" columns are
speed-ups: NumPy time / Numba time (> 1 means the Numba kernel is faster); for GEMM,
"vs BLAS" is np.matmul time / gemm time, i.e. the fraction of OpenBLAS throughput; "gain"
is the plain tiled GEMM's time (minillm/fast/gemm_plain.py) / the tuned gemm's.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def median_time(fn, repeat=15, budget=0.05):
    fn()
    t = time.perf_counter()
    fn()
    number = max(1, int(budget / max(time.perf_counter() - t, 1e-7)))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t) / number)
    return float(np.median(times))


def gemm_table(K, F, rng):
    print(f"{'GEMM float32':38s} {'gemm ms':>9s} {'BLAS ms':>9s} {'vs BLAS':>8s} {'GFLOP/s':>8s}")
    shapes = [((128, 128), (128, 128)), ((256, 256), (256, 256)), ((512, 512), (512, 512)),
              ((1024, 1024), (1024, 1024)), ((2048, 256), (256, 1024)), ((2048, 128), (128, 512)),
              ((512, 2048), (2048, 128)), ((8, 4, 128, 32), (8, 4, 32, 128)), ((8, 4, 128, 128), (8, 4, 128, 32))]
    for sa, sb in shapes:
        a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
        time.sleep(0.2)   # let OpenBLAS's spinning threads go to sleep before timing gemm
        tg, tb = median_time(lambda: F.gemm(a, b)), median_time(lambda: np.matmul(a, b))
        flops = 2 * np.prod(np.broadcast_shapes(sa[:-2], sb[:-2]) or (1,)) * sa[-2] * sa[-1] * sb[-1]
        print(f"{str(sa) + ' @ ' + str(sb):38s} {tg * 1e3:9.3f} {tb * 1e3:9.3f} {tb / tg:8.2f} {flops / tg / 1e9:8.1f}")


def plain_table(F, rng):
    from minillm.fast.gemm_plain import gemm_plain
    print(f"{'GEMM float32, plain vs tuned':38s} {'plain ms':>9s} {'gemm ms':>9s} {'gain':>8s} {'GFLOP/s':>8s}")
    for m, k, n in ((256, 256, 256), (512, 512, 512), (2048, 128, 512), (2048, 512, 128)):
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        tp, tg = median_time(lambda: gemm_plain(a, b)), median_time(lambda: F.gemm(a, b))
        print(f"{f'({m}, {k}) @ ({k}, {n})':38s} {tp * 1e3:9.3f} {tg * 1e3:9.3f} {tp / tg:8.2f} "
              f"{2 * m * k * n / tp / 1e9:8.1f}")


def kernel_table(F, R, rng):
    f32 = np.float32
    att = rng.standard_normal((8, 4, 128, 128)).astype(f32) * 3
    tril = np.tri(128, dtype=bool)
    big = rng.standard_normal((8, 4, 512, 512)).astype(f32)
    y, ly = R.softmax(att, tril), R.log_softmax(att, tril)
    dy = rng.standard_normal(att.shape).astype(f32)
    h = rng.standard_normal((16, 128, 512)).astype(f32)
    x = rng.standard_normal((16, 128, 128)).astype(f32)
    w, b = rng.standard_normal(128).astype(f32), rng.standard_normal(128).astype(f32)
    ln = R.layer_norm(x, w, b, 1e-5)
    logits = rng.standard_normal((2048, 256)).astype(f32) * 4
    tg = rng.integers(0, 256, 2048)
    lse = R.cross_entropy(logits, tg, -100)[1]
    qkv = rng.standard_normal((16, 128, 384)).astype(f32)   # q, k, v: column blocks, as a fused projection gives
    q, k, v = qkv[..., :128], qkv[..., 128:256], qkv[..., 256:]
    p, gy = R.attention_forward(q, k, v, 4, tril)[1], rng.standard_normal((16, 128, 128)).astype(f32)
    y2, bias = rng.standard_normal((2048, 512)).astype(f32), rng.standard_normal(512).astype(f32)
    adam = [rng.standard_normal(1 << 20).astype(f32) for _ in range(2)] + [np.zeros(1 << 20, f32) for _ in range(2)]
    xl, wl = rng.standard_normal((2048, 128)).astype(f32), rng.standard_normal((128, 512)).astype(f32)
    ids, ge = rng.integers(0, 256, (16, 256)), rng.standard_normal((16, 256, 256)).astype(f32)
    cases = [
        ("softmax (8,4,128,128)", lambda: F.softmax(att), lambda: R.softmax(att)),
        ("softmax masked (8,4,128,128)", lambda: F.softmax(att, tril), lambda: R.softmax(att, tril)),
        ("softmax (8,4,512,512)", lambda: F.softmax(big), lambda: R.softmax(big)),
        ("softmax_backward (8,4,128,128)", lambda: F.softmax_backward(y, dy), lambda: R.softmax_backward(y, dy)),
        ("log_softmax masked (8,4,128,128)", lambda: F.log_softmax(att, tril), lambda: R.log_softmax(att, tril)),
        ("log_softmax_backward masked", lambda: F.log_softmax_backward(ly, dy, tril),
         lambda: R.log_softmax_backward(ly, dy, tril)),
        ("gelu (16,128,512)", lambda: F.gelu(h), lambda: R.gelu(h)),
        ("gelu_backward (16,128,512)", lambda: F.gelu_backward(h, h), lambda: R.gelu_backward(h, h)),
        ("layer_norm (16,128,128)", lambda: F.layer_norm(x, w, b, 1e-5), lambda: R.layer_norm(x, w, b, 1e-5)),
        ("layer_norm_backward (16,128,128)", lambda: F.layer_norm_backward(x, x, w, *ln[1:]),
         lambda: R.layer_norm_backward(x, x, w, *ln[1:])),
        ("cross_entropy (2048,256)", lambda: F.cross_entropy(logits, tg, -100),
         lambda: R.cross_entropy(logits, tg, -100)),
        ("cross_entropy_backward (2048,256)", lambda: F.cross_entropy_backward(logits, tg, lse, -100, 1e-3),
         lambda: R.cross_entropy_backward(logits, tg, lse, -100, 1e-3)),
        ("attention fwd (16,128,3x128) 4 heads", lambda: F.attention_forward(q, k, v, 4, tril),
         lambda: R.attention_forward(q, k, v, 4, tril)),
        ("attention backward, same", lambda: F.attention_backward(q, k, v, 4, p, gy),
         lambda: R.attention_backward(q, k, v, 4, p, gy)),
        ("add_bias (2048,512) in place", lambda: F.add_bias(y2, bias), lambda: R.add_bias(y2, bias)),
        ("sum_rows (2048,512)", lambda: F.sum_rows(y2), lambda: R.sum_rows(y2)),
        ("linear (2048,128) @ (128,512) + bias", lambda: F.linear(xl, wl, bias), lambda: R.linear(xl, wl, bias)),
        ("weight_gradients of the linear above", lambda: F.weight_gradients(xl, y2),
         lambda: R.weight_gradients(xl, y2)),
        ("embedding_backward 4096 ids, V=256, D=256", lambda: F.embedding_backward(ids, ge, 256),
         lambda: R.embedding_backward(ids, ge, 256)),
        ("adamw_update 1M parameters", lambda: F.adamw_update(*adam, 1e-3, (0.9, 0.95), 1e-8, 0.1, 5),
         lambda: R.adamw_update(*adam, 1e-3, (0.9, 0.95), 1e-8, 0.1, 5)),
    ]
    print(f"{'kernel float32':38s} {'numba ms':>9s} {'numpy ms':>9s} {'x':>8s}")
    for name, fast, ref in cases:
        tf, tr = median_time(fast), median_time(ref)
        print(f"{name:38s} {tf * 1e3:9.3f} {tr * 1e3:9.3f} {tr / tf:8.2f}")


def policy_child():
    """A training-step-like loop: products interleaved with parallel Numba kernels, the
    products once by OpenBLAS (np.matmul) and once by minillm's gemm (`matmul` today)."""
    from minillm.fast import ops as F
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 128)).astype(np.float32)
    w1, w2 = rng.standard_normal((128, 512)).astype(np.float32), rng.standard_normal((512, 128)).astype(np.float32)
    q = rng.standard_normal((16, 4, 128, 32)).astype(np.float32)
    tril = np.tri(128, dtype=bool)

    def step(mm):
        h = F.gelu(mm(x, w1))
        F.layer_norm(mm(h, w2), None, None, 1e-5)
        mm(F.softmax(mm(q, q.swapaxes(-1, -2)), tril), q)
    import numba
    blas, gemm = (median_time(lambda: step(mm), repeat=21) * 1e3 for mm in (np.matmul, F.gemm))
    print(f"{numba.threading_layer():10s} {blas:8.2f} ms/step with BLAS products {gemm:8.2f} ms/step with gemm")


def policy():
    print("\nThread policy: one step = 4 products + gelu + layer_norm + causal softmax, 2 threads")
    for layer in ("workqueue", "omp"):
        env = dict(os.environ, NUMBA_THREADING_LAYER=layer, MINILLM_NUM_THREADS="2")
        subprocess.run([sys.executable, __file__, "--policy-child"], env=env, check=False)


def startup_child():
    t0 = time.perf_counter()
    from minillm.engine import kernels as K
    from minillm.fast import ops as F
    t1 = time.perf_counter()
    times = []
    for dt in (np.float32, np.float64):
        x = np.ones((2, 3, 4), dt)
        m = np.ones((3, 4), bool)
        F.gemm(x, x.swapaxes(-1, -2))
        y = F.softmax(x, m)
        F.log_softmax_backward(F.log_softmax(x, m), x, m)
        F.softmax_backward(y, x)
        F.gelu_backward(x, F.gelu(x))
        _, mean, rstd = F.layer_norm(x, x[0, 0], x[0, 0], 1e-5)
        F.layer_norm_backward(x, x, x[0, 0], mean, rstd)
        _, lse = F.cross_entropy(x[0], np.zeros(3, int), -100)
        F.cross_entropy_backward(x[0], np.zeros(3, int), lse, -100, 1.0)
        K.matmul(x, x.swapaxes(-1, -2))
        F.gemm(np.ones((2, 128, 128), dt), np.ones((128, 128), dt))   # large enough for the threaded path
        _, p = F.attention_forward(x, x, x, 2)
        F.attention_backward(x, x, x, 2, p, x)
        F.add_bias(x.copy(), x[0, 0])
        F.sum_rows(x)
        F.linear(x[0], x[0].T, x[0, :, 0])
        F.weight_gradients(np.ones((128, 128), dt), np.ones((128, 128), dt))
        F.embedding_backward(np.zeros(3, int), x[0], 2)
        F.adamw_update(x.copy(), x, x.copy(), x.copy() ** 2, 1e-3, (0.9, 0.99), 1e-8, 0.0, 1)
        times.append(time.perf_counter() - t1 - sum(times))
    print(f"import {t1 - t0:5.2f} s, first call of every kernel: float32 {times[0]:5.2f} s, then float64 {times[1]:5.2f} s")


def startup():
    print("\nCompile: a fresh NUMBA_CACHE_DIR, then the same one again")
    with tempfile.TemporaryDirectory() as d:
        for label in ("cold  ", "cached"):
            print(label, end=" ", flush=True)
            subprocess.run([sys.executable, __file__, "--startup-child"], env=dict(os.environ, NUMBA_CACHE_DIR=d), check=False)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2], help="thread counts to run (none: skip the tables)")
    p.add_argument("--tables", nargs="*", choices=("gemm", "plain", "kernels"), default=["gemm", "plain", "kernels"],
                   help="tables to print at each thread count: GEMM vs OpenBLAS, plain vs tuned GEMM, kernels vs NumPy")
    p.add_argument("--policy", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--policy-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--startup-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.policy_child:
        return policy_child()
    if args.startup_child:
        return startup_child()
    from minillm.engine import kernels as K
    from minillm.fast import ops as F
    from minillm.engine import reference as R
    for n in args.threads:
        print(f"\n=== {K.set_num_threads(n)} thread(s) (Numba and OpenBLAS) ===")
        rng = np.random.default_rng(0)
        if "gemm" in args.tables:
            gemm_table(K, F, rng)
        if "plain" in args.tables:
            plain_table(F, rng)
        if "kernels" in args.tables:
            kernel_table(F, R, rng)
    if args.policy:
        policy()
    if args.compile:
        startup()


if __name__ == "__main__":
    main()
