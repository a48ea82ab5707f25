"""The Numba CPU backend: the reference's kernels compiled and fused, whole epochs in one call.

Modules: ``compile`` (the cached ``jit``, codes, type intrinsics), ``cache`` (the on-disk
kernel cache), ``elementwise`` (one pass per rule: activation, loss, update, data),
``team`` (threads meeting in compiled code, and the pool that runs them), ``per_sample`` and
``small_batch`` (the two compiled epochs), ``blas`` (the BLAS epoch), ``backend`` (the class).

Choices, each measured on the 2-core Zen 4 machine (the numbers: benchmarks/results/design.md):

* ``train_batches`` takes every batch size (``can_train_batches``), in three ways:
  - per-sample SGD (the tutorials' way): one compiled call per stretch of the epoch, reading
    the uint8 images directly. Matrix-vector loops in which the first layer's update and the
    next sample's forward pass share one pass over its weights, the bound of a per-sample step;
  - batches up to 32 with every weight matrix at most 512 KiB: one compiled call too, with
    4 x 4 register tiles that add the weight gradient straight into the weights;
  - larger batches (``blas.blas_epoch``): GEMMs on BLAS, the weight gradient accumulated into W by
    gemm itself (beta = 1), compiled elementwise passes, no array allocated per batch.
  The per-kernel methods (``dense_forward``, ...) serve models the epochs cannot express; their
  GEMMs are NumPy's: compiled dot-product loops lost to OpenBLAS at every shape the networks use.
* Threads: the compiled epochs run as a team of nogil calls, one per thread (``team.run_team``),
  meeting through atomic counters (``meet``) rather than ``prange``: a parallel region per
  sample cost about as much as it saved, and the ``parallel=True`` mini-batch epoch took longer
  to compile than the team's. Per sample, each thread owns a slice of the first layer's rows
  and repeats the small later layers, so the team meets once per sample.
  The team never runs while BLAS does; its size is Numba's thread count (``NUMBA_NUM_THREADS``),
  at most the cores we may use.
* Every elementwise step is one pass: bias + activation in place; activation gradient times
  delta in place (through one array, so LLVM vectorises it); loss value and gradient; the SGD
  or momentum update. float32 exp is plain arithmetic that vectorises (``exp_row``).
* float32 stays float32: Numba widens ``float32 op <Python float>`` to float64, so constants come
  from ``typed(array, 1.0)`` and scalar arguments are cast before the call.
* fastmath is limited to {reassoc, contract, nsz, arcp} (vectorised sums, FMAs): never nnan/ninf,
  so NaN and inf behave as in NumPy, e.g. sigmoid(-1000) = 1/(1+inf) = 0 exactly.
* Compile time: no slice assignments (``a[:] = b`` compiles for seconds), no literal
  arguments (each compiles another copy of the callee), no ``np.ones`` & co. for constants.
* Kernels are cached on disk by ``cache`` in a folder named by the hash of every source file of
  this sub-package (``~/.cache/tinynet/numba/<hash>``): kernels that call each other are always
  loaded from the same version of the sources. (During development a cache left by earlier
  versions, kept in ``__pycache__`` and trusted by its timestamp, crashed a process; a new hash
  cannot go stale.) Damaged or unwritable caches: see cache.py.
"""

from tinynet.system import check_numba_threads_variable

# Every module here imports Numba, and Numba's own error for a bad NUMBA_NUM_THREADS names no
# variable: check it first.
check_numba_threads_variable()
