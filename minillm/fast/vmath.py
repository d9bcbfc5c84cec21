"""A vectorisable exp(x) for float32 and float64, for use inside Numba loops.

Why: the llvmlite build here has no SVML (Intel's vector maths library), so `np.exp` in a
Numba loop is a call to the scalar libm `exp` per element and the loop cannot use SIMD.
This one is plain arithmetic, which LLVM turns into 8-16 lanes per instruction:

    x = n ln2 + r,  n = round(x / ln2),  |r| <= ln2 / 2      (range reduction)
    exp(r) ~ 1 + r + r^2/2! + ... + r^d/d!                   (Taylor polynomial, Horner form)
    exp(x) = 2^n exp(r)                                      (2^n built from its bits)

ln2 is split into a high part with trailing zero bits and a small low part (Cody-Waite),
so n * ln2_hi is exact and r keeps full precision. Degree 7 (float32, error < 1 ULP over
|r| <= 0.35) and 13 (float64, ~1e-16 relative). Inputs below the smallest normal result
give 0; inputs above the largest give +inf. Callers (softmax, cross-entropy) only ever pass
x <= 0, so the fast path is the common one.

`vmax(a, b)` is the other missing piece: a max reduction only vectorises when LLVM sees its
`maxnum` intrinsic with no-NaN flags, and Numba's `max` emits a compare and a select instead.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .threads import EXACT, jit


def vexp(x):
    """Python-side stand-in (used only outside compiled code); Numba uses the overloads below."""
    return np.exp(x)


f32, f64 = np.float32, np.float64
# float32 constants: log2(e), ln2 = HI + LO with HI exact in 9 bits, limits of a normal result
LOG2E_32, HI_32, LO_32 = f32(1.4426950408889634), f32(0.693359375), f32(-2.12194440e-4)
MIN_32, MAX_32 = f32(-87.3365), f32(88.72283)
LOG2E_64, HI_64, LO_64 = f64(1.4426950408889634), f64(0.6931471803691238), f64(1.9082149292705877e-10)
MIN_64, MAX_64 = f64(-708.3964), f64(709.7827)
# Taylor coefficients 1/k!
C32 = tuple(f32(1 / np.prod(np.arange(1.0, k + 1))) for k in range(8))
C64 = tuple(f64(1 / np.prod(np.arange(1.0, k + 1))) for k in range(14))


# No `reassoc` here (EXACT): reordering `x - n*HI - n*LO` would undo the Cody-Waite split.


@jit(fastmath=EXACT)
def _exp32(x):
    xc = x if x > MIN_32 else MIN_32   # clamp with selects: min()/max() check for NaN
    xc = xc if xc < MAX_32 else MAX_32
    n = np.floor(xc * LOG2E_32 + f32(0.5))
    r = xc - n * HI_32 - n * LO_32
    p = C32[7]
    for k in range(6, -1, -1):   # Horner; the loop has a constant trip count and is unrolled
        p = p * r + C32[k]
    # 2^n = 2^h * 2^(n-h) with h = floor(n/2), so each factor is a normal float even for n = 128.
    # A float 2^e has the bits (e + 127) << 23; we form that integer in float arithmetic
    # ((e + 127) * 2^23 is exact) because Numba widens int32 arithmetic to int64, which
    # would halve the SIMD width.
    h = np.floor(n * f32(0.5))
    s1 = np.int32((h + f32(127)) * f32(8388608)).view(np.float32)
    s2 = np.int32((n - h + f32(127)) * f32(8388608)).view(np.float32)
    y = p * s1 * s2
    y = f32(0.0) if x < MIN_32 else y
    return f32(np.inf) if x > MAX_32 else y


@jit(fastmath=EXACT)
def _exp64(x):
    xc = x if x > MIN_64 else MIN_64
    xc = xc if xc < MAX_64 else MAX_64
    n = np.floor(xc * LOG2E_64 + 0.5)
    r = xc - n * HI_64 - n * LO_64
    p = C64[13]
    for k in range(12, -1, -1):
        p = p * r + C64[k]
    h = np.floor(n * 0.5)
    s1 = np.int64((h + 1023.0) * 4503599627370496.0).view(np.float64)
    s2 = np.int64((n - h + 1023.0) * 4503599627370496.0).view(np.float64)
    y = p * s1 * s2
    y = 0.0 if x < MIN_64 else y
    return np.inf if x > MAX_64 else y


@overload(vexp)
def _vexp_overload(x):
    """A call to the jit function, not the function itself: Numba resolves an overload afresh
    in each kernel that uses it (twice in a parallel one) and would compile what it returns
    each time, where a jit function is compiled once (and cached): 0.3 s per copy here."""
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)


@intrinsic
def vmax(typingctx, a, b):
    """max(a, b) for two floats of one type, as LLVM's `maxnum` so max-reductions vectorise."""
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        name = "llvm.maxnum.f32" if t == ir.FloatType() else "llvm.maxnum.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t]), name)
        return builder.call(fn, args, fastmath=("nnan", "nsz"))
    return a(a, b), codegen
