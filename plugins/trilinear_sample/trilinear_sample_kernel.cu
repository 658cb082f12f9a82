// TrilinearSample CUDA kernel: one thread per output element, the arithmetic in
// trilinear_sample_math.cuh (shared with the CPU build that the tests run against the PyTorch
// reference).
#include "trilinear_sample_kernel.h"
#include "trilinear_sample_math.cuh"

#include <algorithm>

namespace kpn
{
namespace
{

constexpr int32_t kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loop beyond this: no grid-size limit to reach

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    trilinearSampleKernel(T const* __restrict__ video, T const* __restrict__ offsets, T* __restrict__ out,
        TrilinearSampleShape shape, int64_t count)
{
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count; index += stride)
    {
        trilinearSampleStore(video, offsets, out, shape, index);
    }
}

template <typename T>
void launchTyped(void const* video, void const* offsets, void* out, TrilinearSampleShape const& shape, int64_t count,
    cudaStream_t stream)
{
    int64_t const blocks = std::min<int64_t>((count + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
    trilinearSampleKernel<T><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
        static_cast<T const*>(video), static_cast<T const*>(offsets), static_cast<T*>(out), shape, count);
}

} // namespace

int32_t launchTrilinearSample(DType dtype, void const* video, void const* offsets, void* out,
    TrilinearSampleShape const& shape, cudaStream_t stream, cudaError_t* cudaError)
{
    if (int32_t status = checkTrilinearSampleShape(shape))
    {
        return status;
    }
    int64_t const count = shape.outputCount();
    if (count == 0)
    {
        return kSuccess;
    }
    if (!video || !offsets || !out)
    {
        return kNullPointer;
    }
    switch (dtype)
    {
    case DType::kFloat32: launchTyped<float>(video, offsets, out, shape, count, stream); break;
    case DType::kFloat16: launchTyped<__half>(video, offsets, out, shape, count, stream); break;
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

extern "C" int32_t kpn_trilinear_sample_cuda(int32_t dtype, void const* video, void const* offsets, void* out,
    int64_t batch, int64_t channels, int64_t time, int64_t height, int64_t width, int64_t samples,
    int32_t referenceFrame, void* stream)
{
    return kpn::launchTrilinearSample(static_cast<kpn::DType>(dtype), video, offsets, out,
        {batch, channels, time, height, width, samples, referenceFrame}, static_cast<cudaStream_t>(stream));
}
