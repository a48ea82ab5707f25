"""The CuPy GPU backend: the reference's kernels on CUDA arrays, the elementwise steps fused.

Modules: ``cuda/`` (the CUDA files: ``tinynet.cuh``, each rule once, and ``rows.cu``, the
fused epoch's per-row kernels), ``sources`` (reads them; every elementwise kernel as data),
``cublas`` (cuBLAS on a handle of our own), ``plan``
(a model's prepared training plan: buffers, kernels, CUDA graphs), ``backend`` (the class).

* Arrays are ``cupy.ndarray``; ``asarray`` uploads, ``to_numpy`` downloads. ``fit`` uploads the
  training set once (uint8 stays uint8) and gathers and rescales each batch on the device.
* GEMMs: ``cupy.dot`` hands cuBLAS the transposed views (``W.T``) as transpose flags, not copies.
* Fused ``ElementwiseKernel``s, declared once as data in ``sources.ELEMENTWISE`` (the host
  tests build the same), built when the backend is created and compiled by CuPy on first use
  per dtype (then cached on disk): bias + activation, activation gradient times delta,
  SGD and momentum updates, uint8 -> float rescaling, the squared-error gradient. Softmax and the
  losses' sums use the reference code on CuPy arrays (a reduction each).
* ``train_batches`` (``plan.EpochPlan``) runs built-in models without the per-kernel Python: every
  array preallocated per batch size, each batch gathered from the uint8 images by index on the
  device, the batch counter and learning rate in device memory, GEMMs through cuBLAS on a handle
  of our own, the output layer's softmax, cross-entropy and gradient in one kernel, plain SGD
  folded into the gradient GEMMs (W <- W - lr d^T a with beta = 1; a bias's sum over the batch is
  the GEMM d^T 1), each row's loss added up in row order on the device (the same sum on every
  run, which atomics would not give): no host <-> device transfer and no sync inside an epoch.
  With ``graphs=True`` (or ``TINYNET_CUDA_GRAPHS=1``) up to 16 steps are
  captured as one CUDA graph and replayed for the full batches (the partial batch at the end of an
  epoch runs eagerly).
* ``train_batches_distributed``: the same plan as one rank of an MPI job. Each step takes this
  rank's shard of the batch, writes every gradient into one flat buffer, and sums it over the
  ranks: NCCL on the stream, inside the CUDA graphs, where every rank has its own GPU; MPI
  through host memory, without graphs, where ranks share one (NCCL refuses that).
* FP32 by default. CuPy uses TF32 tensor cores only when ``CUPY_TF32=1`` is set: opt in there
  (the fused epoch's cuBLAS handle follows the same variable).
* Nothing here imports CuPy at module import time; ``CupyBackend()`` raises BackendError saying
  why the GPU cannot be used (package missing, no driver, no device) and how to fix it.
"""
