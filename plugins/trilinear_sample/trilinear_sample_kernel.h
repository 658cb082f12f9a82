// Launch function of the TrilinearSample CUDA kernel. No TensorRT types: the plugin (and any other
// caller, e.g. a ctypes harness over device pointers) passes raw device pointers and a shape.
#pragma once

#include <cuda_runtime_api.h>

#include "trilinear_sample_math.cuh"

namespace kpn
{

// video [B,C,T,H,W], offsets [B,S,3,H,W] (dt,dy,dx relative), out [B,C,S,H,W], all of `dtype`,
// contiguous, on the device. Enqueues on `stream`; returns a kpn::Status, and on kCudaError the
// CUDA error in *cudaError.
int32_t launchTrilinearSample(DType dtype, void const* video, void const* offsets, void* out,
    TrilinearSampleShape const& shape, cudaStream_t stream, cudaError_t* cudaError = nullptr);

} // namespace kpn

extern "C"
{
// C ABI over device pointers (dtype: 0 float32, 1 float16), for harnesses loaded with ctypes.
KPN_EXPORT int32_t kpn_trilinear_sample_cuda(int32_t dtype, void const* video, void const* offsets, void* out, int64_t batch,
    int64_t channels, int64_t time, int64_t height, int64_t width, int64_t samples, int32_t referenceFrame,
    void* stream);
}
