// The one launch path of both ops' CUDA kernels: one thread per output element in a grid-stride loop,
// the arithmetic in the op's *_math.cuh. Included by the *_kernel.cu files only (nvcc).
//
// An Op is a struct with
//   using Shape = ...;                                   // with outputCount()
//   static int32_t check(Shape const&);                  // a kpn::Status
//   template <typename T> __device__ static void store(T const* a, T const* b, T* out, Shape const&, int64_t index);
#pragma once

#include <algorithm>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "kpn_common.h"

namespace kpn
{

constexpr int32_t kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loop beyond this: no grid-size limit to reach

template <typename Op, typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) elementwiseKernel(
    T const* __restrict__ a, T const* __restrict__ b, T* __restrict__ out, typename Op::Shape shape, int64_t count)
{
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count; index += stride)
    {
        Op::template store<T>(a, b, out, shape, index);
    }
}

// Checks the shape and pointers, enqueues on `stream`; returns a kpn::Status, and on kCudaError the
// CUDA error in *cudaError. Never aborts.
template <typename Op>
int32_t launchElementwise(DType dtype, void const* a, void const* b, void* out, typename Op::Shape const& shape,
    cudaStream_t stream, cudaError_t* cudaError)
{
    if (int32_t status = Op::check(shape))
    {
        return status;
    }
    int64_t const count = shape.outputCount();
    if (count == 0)
    {
        return kSuccess;
    }
    if (!a || !b || !out)
    {
        return kNullPointer;
    }
    int64_t const blocks = std::min<int64_t>((count + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
    switch (dtype)
    {
    case DType::kFloat32:
        elementwiseKernel<Op, float><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
            static_cast<float const*>(a), static_cast<float const*>(b), static_cast<float*>(out), shape, count);
        break;
    case DType::kFloat16:
        elementwiseKernel<Op, __half><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
            static_cast<__half const*>(a), static_cast<__half const*>(b), static_cast<__half*>(out), shape, count);
        break;
    default: return kBadDType;
    }
    cudaError_t const error = cudaGetLastError();
    if (cudaError)
    {
        *cudaError = error;
    }
    return error == cudaSuccess ? kSuccess : kCudaError;
}

} // namespace kpn
