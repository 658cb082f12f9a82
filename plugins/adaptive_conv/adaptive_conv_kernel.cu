// AdaptiveConv CUDA kernel: one thread per output element, the arithmetic in adaptive_conv_math.cuh
// (shared with the CPU build that the tests run against the PyTorch reference), compiled with K as a
// constant for K = 3, 5, 7 (adaptiveConvDispatch).
#include "adaptive_conv_kernel.h"
#include "adaptive_conv_math.cuh"

#include "../common/elementwise_launch.cuh"

namespace kpn
{
namespace
{

template <int32_t FixedK>
struct AdaptiveConvOp
{
    using Shape = AdaptiveConvShape;
    static int32_t check(Shape const& shape) { return checkAdaptiveConvShape(shape); }
    template <typename T>
    __device__ static void store(T const* frames, T const* kernels, T* out, Shape const& shape, int64_t index)
    {
        adaptiveConvStore<FixedK>(frames, kernels, out, shape, index);
    }
};

} // namespace

int32_t launchAdaptiveConv(DType dtype, void const* frames, void const* kernels, void* out,
    AdaptiveConvShape const& shape, cudaStream_t stream, cudaError_t* cudaError)
{
    return adaptiveConvDispatch(shape, [&](auto fixedK) {
        return launchElementwise<AdaptiveConvOp<decltype(fixedK)::value>>(
            dtype, frames, kernels, out, shape, stream, cudaError);
    });
}

} // namespace kpn

extern "C" int32_t kpn_adaptive_conv_cuda(int32_t dtype, void const* frames, void const* kernels, void* out,
    int64_t batch, int64_t frameCount, int64_t channels, int64_t height, int64_t width, int32_t kernelSize,
    void* stream)
{
    return kpn::launchAdaptiveConv(static_cast<kpn::DType>(dtype), frames, kernels, out,
        {batch, frameCount, channels, height, width, kernelSize}, static_cast<cudaStream_t>(stream));
}
