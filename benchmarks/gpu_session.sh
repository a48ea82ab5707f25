#!/usr/bin/env bash
# The cupy backend's checks on an NVIDIA GPU in one command of at most 7 minutes, for a short
# lease of a machine with one (600 s a command, 15 minutes of device time a task, the start
# included): the GPU tests, cuBLAS's log of its workspace, one training run and the GPU
# benchmark rows, each step under its own limit and all of them under one deadline.
#
#   mkdir -p .gpu-data/mnist && cp ../shared/mnist/*.gz .gpu-data/mnist/   # here, once
#   bash benchmarks/gpu_session.sh                                         # there
#
# Nothing can be fetched on the device and ../shared does not travel: MNIST comes with the
# working tree in .gpu-data/mnist (11 MB of .gz; carry it: the folder is git-ignored). The
# device's image brings Python with CuPy for CUDA 13, a CUDA PyTorch, pytest-benchmark, numba
# and scipy (no mpich: the data-parallel tests skip); tinynet goes in with --no-deps, or, if
# pip cannot build it there, runs from the tree. A fused epoch that falls back to kernel by
# kernel stops the run with an error (the warning is made one). At most 8 files in $OUT:
# session.log, benchmark.json (pytest-benchmark's) and the report's gpu.md, gpu.png, gpu.json.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
PY=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${GPU_SESSION_S:-420}))
export PYTHONUNBUFFERED=1 TINYNET_DATA_DIR=${TINYNET_DATA_DIR:-$PWD/.gpu-data/mnist}
# the cuBLAS fallback's warning, as an error: a GPU run must not pass on the reference's kernels
export PYTHONWARNINGS="error:tinynet's cupy backend cannot drive cuBLAS:RuntimeWarning"

step() {  # step SECONDS DESCRIPTION COMMAND...: under its limit and the deadline; how it ended
    local limit=$1 what=$2 left=$((DEADLINE - SECONDS))
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "=== $what: skipped, the session's deadline is reached"
        return 0
    fi
    echo "=== $what ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@"
    echo "=== $what: exit $?"
}

if ! ls "$TINYNET_DATA_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1; then
    echo "=== no MNIST in $TINYNET_DATA_DIR: copy the four .gz files there before the run"
    exit 2
fi
step 20 "the machine" nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step 90 "tinynet, --no-deps" "$PY" -m pip install -q --no-deps --no-build-isolation -e .
if ! "$PY" -c "import tinynet.kernels" 2>/dev/null; then  # pip could not build it: the tree
    ln -sfn ../kernels tinynet/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    echo "=== tinynet from the tree (tinynet/kernels -> kernels)"
fi
step 20 "versions" "$PY" -m tinynet.cli info

step 150 "GPU tests" "$PY" -m pytest -x -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_parity.py tests/test_update_paths.py tests/test_distributed.py \
    -k "cupy or test_gpu or fused_gpu"

# cuBLAS's own log of one CUDA-graph epoch: its GEMMs must name the workspace tinynet set
# (cublasSetWorkspace after each cublasSetStream)
step 45 "cuBLAS log, graphs" env CUBLAS_LOGINFO_DBG=1 CUBLAS_LOGDEST_DBG=stderr \
    TINYNET_CUDA_GRAPHS=1 "$PY" -m tinynet.cli train --backend cupy --sample --epochs 1 \
    --quiet 2>&1 | grep -i -m 20 "workspace\|error\|==="
step 60 "training, CUDA graphs, 3 epochs" env TINYNET_CUDA_GRAPHS=1 "$PY" -m tinynet.cli train \
    --backend cupy --epochs 3

# the issue's rows: cupy eager and graph, PyTorch CUDA, and NumPy on the host for the ratios
step 120 "benchmarks" "$PY" -m pytest -q -p no:cacheprovider --benchmark \
    benchmarks/test_training.py -k "(cupy or pytorch-cuda or numpy-plain) and float32 and \
784-256-128-10 and (b64 or b1024)" --benchmark-json "$OUT/benchmark.json"
step 20 "report" "$PY" -m benchmarks.report "$OUT/benchmark.json" --out "$OUT/gpu"
echo "=== done in ${SECONDS}s; $OUT: $(ls "$OUT" | tr '\n' ' ')"
