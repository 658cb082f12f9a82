// AdaptiveConv arithmetic, the ONE source of it: compiled by nvcc into the CUDA kernel and by g++
// into the CPU build the tests compare against the PyTorch reference (train/ops.py, docs/ops.md).
//
//   out[b,n,c,y,x] = sum_{i,j<K} kernels[b,n,i*K+j,y,x] * frames[b,n,c,y+i-K/2,x+j-K/2]
//
// zero outside the image, accumulated in float for every storage type.
#pragma once

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
template <typename T>
KPN_HD float adaptiveConvElement(T const* frames, T const* kernels, AdaptiveConvShape const& s, int64_t index)
{
    int64_t const x = index % s.width;
    int64_t rest = index / s.width;
    int64_t const y = rest % s.height;
    rest /= s.height;
    int64_t const c = rest % s.channels;
    int64_t const bn = rest / s.channels;  // b * N + n

    int64_t const plane = s.height * s.width;
    int32_t const k = s.kernelSize;
    int32_t const half = k / 2;
    T const* framePlane = frames + (bn * s.channels + c) * plane;
    T const* tapPlanes = kernels + bn * k * k * plane + y * s.width + x;  // tap t at tapPlanes[t * plane]

    float sum = 0.f;
    for (int32_t i = 0; i < k; ++i)
    {
        int64_t const yy = y + i - half;
        if (yy < 0 || yy >= s.height)
        {
            continue;  // zero padding: the whole row of taps contributes nothing
        }
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

template <typename T>
KPN_HD void adaptiveConvStore(T const* frames, T const* kernels, T* out, AdaptiveConvShape const& s, int64_t index)
{
    out[index] = fromFloat<T>(adaptiveConvElement(frames, kernels, s, index));
}

} // namespace kpn
