#!/usr/bin/env bash
# Everything this repository can check on a CUDA GPU without TensorRT, in one command:
#   bash benchmarks/gpu_check.sh benchmarks/results/<gpu-name>
# 1. the CUDA kernels against the PyTorch reference ops, fp32 and fp16 (tests/test_cuda_ops.py), and the
#    other tests whose GPU path differs (a GPU run's checkpoint, the torch-cuda latency rows);
# 2. the kernels' latency vs PyTorch eager and their share of the copy bandwidth (benchmarks/cuda_ops.py);
# 3. the shipped models in PyTorch eager on the GPU, fp32 and fp16 (kpn-bench latency).
# The timings run first, on an idle GPU. Needs torch with CUDA, nvcc, and the repository's dependencies.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_FOLDER}
cd "$(dirname "$0")/.."
mkdir -p "$out"
python -m benchmarks.cuda_ops --out "$out" || exit
python -m benchmarks.cli latency --models shipped --backends torch-cuda,torch-cuda-fp16 --sizes 256,512,1024,2048 \
    --warmup 3 --repeat 10 --no-ops --out "$out" || exit
python -m pytest -q -rs tests/test_cuda_ops.py tests/test_runtime_trt.py "tests/test_bench.py::test_latency_command" \
    "tests/test_train.py::test_a_gpu_runs_checkpoint_holds_only_cpu_tensors_and_resumes_on_the_cpu" \
    "tests/test_train.py::test_worker_processes_make_the_same_batches_and_the_same_run"
