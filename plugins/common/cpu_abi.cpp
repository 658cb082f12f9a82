// CPU build of the kernels' arithmetic: the SAME *_math.cuh the CUDA kernels include, compiled by
// g++ and called from the tests through ctypes (plugins/cpu_build.py). One loop over the output
// elements, each computed by the __host__ __device__ function the GPU thread runs.
//
// float16 tensors are passed as raw 16-bit storage (numpy float16) and read as __half.
#include "../adaptive_conv/adaptive_conv_math.cuh"
#include "../trilinear_sample/trilinear_sample_math.cuh"

namespace
{

template <typename T>
int32_t adaptiveConvCpu(void const* frames, void const* kernels, void* out, kpn::AdaptiveConvShape const& shape)
{
    if (int32_t status = kpn::checkAdaptiveConvShape(shape))
    {
        return status;
    }
    if (!frames || !kernels || !out)
    {
        return kpn::kNullPointer;
    }
    int64_t const count = shape.outputCount();
    kpn::adaptiveConvDispatch(shape, [&](auto fixedK) {
        for (int64_t i = 0; i < count; ++i)
        {
            kpn::adaptiveConvStore<decltype(fixedK)::value>(
                static_cast<T const*>(frames), static_cast<T const*>(kernels), static_cast<T*>(out), shape, i);
        }
    });
    return kpn::kSuccess;
}

template <typename T>
int32_t trilinearSampleCpu(void const* video, void const* offsets, void* out, kpn::TrilinearSampleShape const& shape)
{
    if (int32_t status = kpn::checkTrilinearSampleShape(shape))
    {
        return status;
    }
    if (!video || !offsets || !out)
    {
        return kpn::kNullPointer;
    }
    int64_t const count = shape.outputCount();
    for (int64_t i = 0; i < count; ++i)
    {
        kpn::trilinearSampleStore(
            static_cast<T const*>(video), static_cast<T const*>(offsets), static_cast<T*>(out), shape, i);
    }
    return kpn::kSuccess;
}

} // namespace

extern "C"
{

// frames [B,N,C,H,W], kernels [B,N,K*K,H,W] -> out [B,N,C,H,W]; returns a kpn::Status.
int32_t kpn_adaptive_conv_cpu_f32(void const* frames, void const* kernels, void* out, int64_t batch,
    int64_t frameCount, int64_t channels, int64_t height, int64_t width, int32_t kernelSize)
{
    return adaptiveConvCpu<float>(frames, kernels, out, {batch, frameCount, channels, height, width, kernelSize});
}

int32_t kpn_adaptive_conv_cpu_f16(void const* frames, void const* kernels, void* out, int64_t batch,
    int64_t frameCount, int64_t channels, int64_t height, int64_t width, int32_t kernelSize)
{
    return adaptiveConvCpu<__half>(frames, kernels, out, {batch, frameCount, channels, height, width, kernelSize});
}

// video [B,C,T,H,W], offsets [B,S,3,H,W] -> out [B,C,S,H,W]; returns a kpn::Status.
int32_t kpn_trilinear_sample_cpu_f32(void const* video, void const* offsets, void* out, int64_t batch,
    int64_t channels, int64_t time, int64_t height, int64_t width, int64_t samples, int32_t referenceFrame)
{
    return trilinearSampleCpu<float>(
        video, offsets, out, {batch, channels, time, height, width, samples, referenceFrame});
}

int32_t kpn_trilinear_sample_cpu_f16(void const* video, void const* offsets, void* out, int64_t batch,
    int64_t channels, int64_t time, int64_t height, int64_t width, int64_t samples, int32_t referenceFrame)
{
    return trilinearSampleCpu<__half>(
        video, offsets, out, {batch, channels, time, height, width, samples, referenceFrame});
}

} // extern "C"
