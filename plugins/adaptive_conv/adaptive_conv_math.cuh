// AdaptiveConv arithmetic, the ONE source of it: compiled by nvcc into the CUDA kernel and by g++
// into the CPU build the tests compare against the PyTorch reference (train/ops.py, docs/ops.md).
//
//   out[b,n,c,y,x] = sum_{i,j<K} kernels[b,n,i*K+j,y,x] * frames[b,n,c,y+i-K/2,x+j-K/2]
//
// zero outside the image, accumulated in float for every storage type.
#pragma once

#include <type_traits>

#include "../common/kpn_common.h"

namespace kpn
{

struct AdaptiveConvShape
{
    int64_t batch;       // B
    int64_t frames;      // N
    int64_t channels;    // C
    int64_t height;      // H
    int64_t width;       // W
    int32_t kernelSize;  // K (odd)

    KPN_HD int64_t outputCount() const { return batch * frames * channels * height * width; }
};

// Host-side validation shared by the launch function, the CPU ABI and the plugin.
inline int32_t checkAdaptiveConvShape(AdaptiveConvShape const& s)
{
    if (s.kernelSize < 1 || s.kernelSize % 2 == 0)
    {
        return kBadAttribute;
    }
    if (s.batch < 0 || s.frames < 0 || s.channels < 0 || s.height < 0 || s.width < 0)
    {
        return kBadShape;
    }
    return kSuccess;
}

// Output element `index` (row-major over [B,N,C,H,W]) as a float.
// FixedK > 0: K known at compile time (it must equal s.kernelSize), so the tap loops unroll and a GPU
// thread issues all K*K loads before its first multiply-add. With a run-time K the kernel stayed far
// under the copy bandwidth on an H200, fp16 hardly faster than fp32 (benchmarks/results/h200/): too few
// loads in flight, not too many bytes. FixedK = 0: K from the shape.
template <int32_t FixedK, typename T>
KPN_HD float adaptiveConvElement(T const* frames, T const* kernels, AdaptiveConvShape const& s, int64_t index)
{
    int64_t const x = index % s.width;
    int64_t rest = index / s.width;
    int64_t const y = rest % s.height;
    rest /= s.height;
    int64_t const c = rest % s.channels;
    int64_t const bn = rest / s.channels;  // b * N + n

    int64_t const plane = s.height * s.width;
    int32_t const k = FixedK > 0 ? FixedK : s.kernelSize;
    int32_t const half = k / 2;
    T const* framePlane = frames + (bn * s.channels + c) * plane;
    T const* tapPlanes = kernels + bn * k * k * plane + y * s.width + x;  // tap t at tapPlanes[t * plane]

    float sum = 0.f;
    KPN_UNROLL
    for (int32_t i = 0; i < k; ++i)
    {
        int64_t const yy = y + i - half;
        if (yy < 0 || yy >= s.height)
        {
            continue;  // zero padding: the whole row of taps contributes nothing
        }
        KPN_UNROLL
        for (int32_t j = 0; j < k; ++j)
        {
            int64_t const xx = x + j - half;
            if (xx < 0 || xx >= s.width)
            {
                continue;
            }
            float const tap = toFloat(tapPlanes[(i * k + j) * plane]);
            sum += tap * toFloat(framePlane[yy * s.width + xx]);
        }
    }
    return sum;
}

template <int32_t FixedK, typename T>
KPN_HD void adaptiveConvStore(T const* frames, T const* kernels, T* out, AdaptiveConvShape const& s, int64_t index)
{
    out[index] = fromFloat<T>(adaptiveConvElement<FixedK>(frames, kernels, s, index));
}

// Calls run(std::integral_constant<int32_t, FixedK>{}) with FixedK = s.kernelSize for K = 3, 5 and 7
// (the papers' and our models' sizes), else with FixedK = 0: the one place that picks the compiled K,
// for the CUDA launch and the CPU build alike.
template <typename Run>
auto adaptiveConvDispatch(AdaptiveConvShape const& s, Run&& run)
{
    switch (s.kernelSize)
    {
    case 3: return run(std::integral_constant<int32_t, 3>{});
    case 5: return run(std::integral_constant<int32_t, 5>{});
    case 7: return run(std::integral_constant<int32_t, 7>{});
    default: return run(std::integral_constant<int32_t, 0>{});
    }
}

} // namespace kpn
