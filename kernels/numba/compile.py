"""What every compiled kernel shares: ``jit`` with tinynet's kernel cache, the activation and
loss codes, and the intrinsics that keep float32 arithmetic in float32."""

from __future__ import annotations

import glob
import os
from collections import namedtuple

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from tinynet.backend import ACTIVATION_CODE
from tinynet.kernels.numba import cache

# The kernels' on-disk cache: a folder per version of this sub-package's sources (the cache's
# own format included), so a kernel is never loaded beside callers built from other sources.
SOURCES = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "*.py")))
CACHE = cache.configure(SOURCES)

# The compiled epochs' arguments, grouped (Numba takes namedtuples of arrays and scalars):
# Thread: its rank in the team, the counters the team meets through, each layer's unit bounds.
Thread = namedtuple("Thread", "rank progress bounds")
# Data: the rows X[order] with targets T[order], inputs scaled as X * in_scale + in_offset.
Data = namedtuple("Data", "X order T in_scale in_offset")
# Net: per layer W, b, activation code and parameter, whether W and b train, their momentum
# velocities (SGD) or first moments (Adam), and their second moments (Adam; else empty).
Net = namedtuple("Net", "Ws bs acts alphas train_w train_b vWs vbs sWs sbs")
# Rule: the loss (code, scale, mean or sum per batch) and the update: SGD's lr, momentum,
# nesterov and weight_decay, or with ``adam`` Adam's b1, b2, eps, weight_decay (its L2 term; 0
# for AdamW) and shrink (AdamW's 1 - lr weight_decay; 1 for Adam), and step, the updates
# applied before this call.
Rule = namedtuple(
    "Rule", "kind scale mean lr momentum nesterov adam b1 b2 eps weight_decay shrink step"
)

# RuleNow: the rule for one update (elementwise.rule_at): lr and momentum; out_of_line: Adam,
# or SGD with Nesterov or weight decay, which the compiled loops apply out of line (their
# inline loops are plain and momentum SGD's); adam_step's constants for this update.
RuleNow = namedtuple("RuleNow", "lr momentum out_of_line adam nesterov constants")

FAST = {"reassoc", "contract", "nsz", "arcp"}
ACT = ACTIVATION_CODE  # activation name -> the code the kernels branch on
IDENTITY, STEP, SIGMOID, TANH, RELU, SOFTMAX, LEAKY_RELU = (
    ACT[name] for name in ("identity", "step", "sigmoid", "tanh", "relu", "softmax", "leaky_relu")
)
SQUARED_ERROR, CROSS_ENTROPY, BINARY_CROSS_ENTROPY = 0, 1, 2
# an EpochSpec's loss -> the code the compiled epochs know it by
LOSS_KINDS = {
    "squared_error": SQUARED_ERROR,
    "cross_entropy": CROSS_ENTROPY,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
}


def jit(fn=None, *, fastmath=FAST, **options):
    """``njit`` with tinynet's kernel cache (see cache.py) and these defaults."""
    # error_model="numpy": float division by zero gives inf or NaN, as in NumPy, instead of
    # raising ZeroDivisionError; the check Numba adds otherwise keeps loops with a division from
    # vectorising.
    if fn is None:
        return lambda f: jit(f, fastmath=fastmath, **options)
    compiled = njit(fastmath=fastmath, nogil=True, error_model="numpy", **options)(fn)
    return cache.cached(compiled)


def inner_jit(fn):
    """A helper only compiled code calls: without the wrappers that let Python call a function,
    each compiles faster."""
    return jit(fn, no_cpython_wrapper=True, no_cfunc_wrapper=True)


def inlined_jit(fn):
    """A small helper that the hot loops call per element or per row, inlined by Numba into
    each caller: LLVM decides for an inner_jit helper, and where it kept the call (update_bias
    once it called sgd_step) per-sample epochs ran far slower (design.md)."""
    return jit(fn, inline="always", no_cpython_wrapper=True, no_cfunc_wrapper=True)


@intrinsic
def typed(typingctx, like, value):
    """``value`` as the type of the number ``like`` or the element type of the array ``like``,
    so float32 arithmetic stays float32 (Numba widens ``float32 op <Python float or int>`` to
    float64). An intrinsic, because the obvious jitted helper costs a noticeable compile per
    process and dtype."""
    element = like.dtype if isinstance(like, types.Array) else like

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[1], signature.args[1], signature.return_type)

    return element(like, types.unliteral(value)), codegen


@intrinsic
def smallest_normal(typingctx, like):
    """The smallest positive normal number (np.finfo(...).tiny) of the number ``like``'s type
    or of the array ``like``'s element type."""
    element = like.dtype if isinstance(like, types.Array) else like
    tiny = float(np.finfo(np.dtype(str(element))).tiny)

    def codegen(context, builder, signature, args):
        return context.get_constant(signature.return_type, tiny)

    return element(like), codegen


@intrinsic
def is_float32(typingctx, like):
    """Whether ``like`` holds float32, as a constant the compiler folds (a dtype switch)."""
    is_float32 = like.dtype == types.float32

    def codegen(context, builder, signature, args):
        return context.get_constant(types.boolean, is_float32)

    return types.boolean(like), codegen


@jit
def cache_probe():
    """Nothing: called once so that numba_cache can check that Numba consults its cache."""
    return 0
