#!/usr/bin/env bash
# The cupy backend's checks on an NVIDIA GPU, as one command for a short lease of a machine
# with one: what is installed, the GPU tests, cuBLAS's workspace, two training runs and the GPU
# benchmark rows. Each step has its own time limit, so one that hangs does not take the rest;
# everything lands in $OUT (default ./gpu-out): session.log, gpu.json and the report's .md/.png.
#
#   TINYNET_DATA_DIR=<folder with the four MNIST files> bash benchmarks/gpu_session.sh
#
# Meant for a machine image that already holds CuPy, NCCL, mpi4py, Numba, pytest-benchmark and
# a CUDA build of PyTorch (nothing is downloaded). Wheels in ./.whl (e.g. mpich, for mpiexec)
# are installed beside it first. Not yet run on a GPU: read its log before trusting it.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {  # step SECONDS DESCRIPTION COMMAND...: run it under a time limit, say how it ended
    local limit=$1 what=$2
    shift 2
    echo "=== $what ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@"
    echo "=== $what: exit $?"
}

step 30 "the machine" nvidia-smi
if compgen -G ".whl/*.whl" >/dev/null; then
    step 120 "carried wheels" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
step 180 "tinynet, editable, without downloads" "$PY" -m pip install -q --no-deps \
    --no-build-isolation -e .
step 60 "versions" "$PY" -m tinynet.cli info

# the GPU tests first, then the data-parallel ones (mpiexec, NCCL inside CUDA graphs)
step 420 "GPU tests" "$PY" -m pytest -x -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_parity.py tests/test_update_paths.py -k "cupy or test_gpu"
step 300 "data-parallel GPU tests" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_distributed.py -k "fused_gpu and not cupy-host"

# cuBLAS's own log of one eager and one CUDA-graph epoch: the GEMMs should name the workspace
# tinynet set (cublasSetWorkspace after each cublasSetStream)
for graphs in 0 1; do
    step 120 "cuBLAS log, graphs=$graphs" env CUBLAS_LOGINFO_DBG=1 CUBLAS_LOGDEST_DBG=stderr \
        TINYNET_CUDA_GRAPHS=$graphs "$PY" -m tinynet.cli train --backend cupy --sample \
        --epochs 1 --quiet 2>&1 | grep -i -m 30 "workspace\|=== "
done

step 240 "training, CUDA graphs" env TINYNET_CUDA_GRAPHS=1 "$PY" -m tinynet.cli train \
    --backend cupy
step 240 "training, eager" "$PY" -m tinynet.cli train --backend cupy

# the rows: cupy eager and graph, PyTorch CUDA, and NumPy on the host for the ratios
step 900 "benchmarks" "$PY" -m pytest -q -p no:cacheprovider --benchmark \
    benchmarks/test_training.py -k "(cupy or pytorch-cuda or numpy-plain) and float32 and \
(b64 or b1024 or b4096)" --benchmark-json "$OUT/gpu.json"
step 120 "report" "$PY" -m benchmarks.report "$OUT/gpu.json" --out "$OUT/gpu"
