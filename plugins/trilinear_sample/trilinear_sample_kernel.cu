// TrilinearSample CUDA kernel: one thread per output element, the arithmetic in
// trilinear_sample_math.cuh (shared with the CPU build that the tests run against the PyTorch
// reference).
#include "trilinear_sample_kernel.h"
#include "trilinear_sample_math.cuh"

#include "../common/elementwise_launch.cuh"

namespace kpn
{
namespace
{

struct TrilinearSampleOp
{
    using Shape = TrilinearSampleShape;
    static int32_t check(Shape const& shape) { return checkTrilinearSampleShape(shape); }
    template <typename T>
    __device__ static void store(T const* video, T const* offsets, T* out, Shape const& shape, int64_t index)
    {
        trilinearSampleStore(video, offsets, out, shape, index);
    }
};

} // namespace

int32_t launchTrilinearSample(DType dtype, void const* video, void const* offsets, void* out,
    TrilinearSampleShape const& shape, cudaStream_t stream, cudaError_t* cudaError)
{
    return launchElementwise<TrilinearSampleOp>(dtype, video, offsets, out, shape, stream, cudaError);
}

} // namespace kpn

extern "C" int32_t kpn_trilinear_sample_cuda(int32_t dtype, void const* video, void const* offsets, void* out,
    int64_t batch, int64_t channels, int64_t time, int64_t height, int64_t width, int64_t samples,
    int32_t referenceFrame, void* stream)
{
    return kpn::launchTrilinearSample(static_cast<kpn::DType>(dtype), video, offsets, out,
        {batch, channels, time, height, width, samples, referenceFrame}, static_cast<cudaStream_t>(stream));
}
