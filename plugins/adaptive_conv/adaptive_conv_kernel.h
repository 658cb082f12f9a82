// Launch function of the AdaptiveConv CUDA kernel. No TensorRT types: the plugin (and any other
// caller, e.g. a ctypes harness over device pointers) passes raw device pointers and a shape.
#pragma once

#include <cuda_runtime_api.h>

#include "adaptive_conv_math.cuh"

namespace kpn
{

// frames [B,N,C,H,W], kernels [B,N,K*K,H,W], out [B,N,C,H,W], all of `dtype`, contiguous, on the
// device. Enqueues on `stream`; returns a kpn::Status, and on kCudaError the CUDA error in *cudaError.
int32_t launchAdaptiveConv(DType dtype, void const* frames, void const* kernels, void* out,
    AdaptiveConvShape const& shape, cudaStream_t stream, cudaError_t* cudaError = nullptr);

} // namespace kpn

extern "C"
{
// C ABI over device pointers (dtype: 0 float32, 1 float16), for harnesses loaded with ctypes.
KPN_EXPORT int32_t kpn_adaptive_conv_cuda(int32_t dtype, void const* frames, void const* kernels, void* out, int64_t batch,
    int64_t frameCount, int64_t channels, int64_t height, int64_t width, int32_t kernelSize, void* stream);
}
