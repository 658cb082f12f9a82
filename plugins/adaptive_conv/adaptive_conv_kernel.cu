// AdaptiveConv CUDA kernel: one thread per output element, the arithmetic in adaptive_conv_math.cuh
// (shared with the CPU build that the tests run against the PyTorch reference).
#include "adaptive_conv_kernel.h"
#include "adaptive_conv_math.cuh"

#include <algorithm>

namespace kpn
{
namespace
{

constexpr int32_t kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loop beyond this: no grid-size limit to reach

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    adaptiveConvKernel(T const* __restrict__ frames, T const* __restrict__ kernels, T* __restrict__ out,
        AdaptiveConvShape shape, int64_t count)
{
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count; index += stride)
    {
        adaptiveConvStore(frames, kernels, out, shape, index);
    }
}

template <typename T>
void launchTyped(void const* frames, void const* kernels, void* out, AdaptiveConvShape const& shape, int64_t count,
    cudaStream_t stream)
{
    int64_t const blocks = std::min<int64_t>((count + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
    adaptiveConvKernel<T><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
        static_cast<T const*>(frames), static_cast<T const*>(kernels), static_cast<T*>(out), shape, count);
}

} // namespace

int32_t launchAdaptiveConv(DType dtype, void const* frames, void const* kernels, void* out,
    AdaptiveConvShape const& shape, cudaStream_t stream, cudaError_t* cudaError)
{
    if (int32_t status = checkAdaptiveConvShape(shape))
    {
        return status;
    }
    int64_t const count = shape.outputCount();
    if (count == 0)
    {
        return kSuccess;
    }
    if (!frames || !kernels || !out)
    {
        return kNullPointer;
    }
    switch (dtype)
    {
    case DType::kFloat32: launchTyped<float>(frames, kernels, out, shape, count, stream); break;
    case DType::kFloat16: launchTyped<__half>(frames, kernels, out, shape, count, stream); break;
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

extern "C" int32_t kpn_adaptive_conv_cuda(int32_t dtype, void const* frames, void const* kernels, void* out,
    int64_t batch, int64_t frameCount, int64_t channels, int64_t height, int64_t width, int32_t kernelSize,
    void* stream)
{
    return kpn::launchAdaptiveConv(static_cast<kpn::DType>(dtype), frames, kernels, out,
        {batch, frameCount, channels, height, width, kernelSize}, static_cast<cudaStream_t>(stream));
}
