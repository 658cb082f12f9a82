// TrilinearSample arithmetic, the ONE source of it: compiled by nvcc into the CUDA kernel and by g++
// into the CPU build the tests compare against the PyTorch reference (train/ops.py, docs/ops.md).
//
//   p = (t_ref + dt, y + dy, x + dx), offsets (dt, dy, dx) relative to the output pixel
//   out[b,c,s,y,x] = sum over the 8 integer corners q of p of
//                    video[b,c,q] * (1-|p_t-q_t|) * (1-|p_y-q_y|) * (1-|p_x-q_x|)
//
// each corner outside the clip contributes zero. Positions are integer base + offset in float
// (never absolute half-precision coordinates), accumulated in float for every storage type.
#pragma once

#include <math.h>

#include "../common/kpn_common.h"

namespace kpn
{

struct TrilinearSampleShape
{
    int64_t batch;           // B
    int64_t channels;        // C
    int64_t time;            // T
    int64_t height;          // H
    int64_t width;           // W
    int64_t samples;         // S
    int32_t referenceFrame;  // t_ref in [0, T)

    KPN_HD int64_t outputCount() const { return batch * channels * samples * height * width; }
};

inline int32_t checkTrilinearSampleShape(TrilinearSampleShape const& s)
{
    if (s.batch < 0 || s.channels < 0 || s.time < 1 || s.height < 0 || s.width < 0 || s.samples < 0)
    {
        return kBadShape;
    }
    if (s.referenceFrame < 0 || s.referenceFrame >= s.time)
    {
        return kBadAttribute;
    }
    return kSuccess;
}

// One axis of the interpolation: the lower corner index and the two corner weights, with a weight
// set to zero when its corner lies outside [0, size). Returns false when both corners are outside
// (also for NaN positions), so the caller can skip the sample without converting a huge float to int.
struct AxisCorners
{
    int64_t low;
    float weightLow;
    float weightHigh;
};

KPN_HD bool axisCorners(int64_t base, float offset, int64_t size, AxisCorners& out)
{
    float const pos = static_cast<float>(base) + offset;  // integer base + relative offset, in float
    float const lowF = floorf(pos);
    if (!(lowF >= -1.f && lowF < static_cast<float>(size)))
    {
        return false;
    }
    float const frac = pos - lowF;
    out.low = static_cast<int64_t>(lowF);
    out.weightLow = out.low >= 0 ? 1.f - frac : 0.f;
    out.weightHigh = out.low + 1 < size ? frac : 0.f;
    return true;
}

// Output element `index` (row-major over [B,C,S,H,W]) as a float.
template <typename T>
KPN_HD float trilinearSampleElement(T const* video, T const* offsets, TrilinearSampleShape const& s, int64_t index)
{
    int64_t const x = index % s.width;
    int64_t rest = index / s.width;
    int64_t const y = rest % s.height;
    rest /= s.height;
    int64_t const sample = rest % s.samples;
    rest /= s.samples;
    int64_t const c = rest % s.channels;
    int64_t const b = rest / s.channels;

    int64_t const plane = s.height * s.width;
    // offsets[b, sample, 0..2, y, x] = (dt, dy, dx)
    T const* offset = offsets + ((b * s.samples + sample) * 3) * plane + y * s.width + x;
    AxisCorners t, v, h;
    if (!axisCorners(s.referenceFrame, toFloat(offset[0]), s.time, t)
        || !axisCorners(y, toFloat(offset[plane]), s.height, v)
        || !axisCorners(x, toFloat(offset[2 * plane]), s.width, h))
    {
        return 0.f;
    }

    T const* clip = video + (b * s.channels + c) * s.time * plane;
    float const wt[2] = {t.weightLow, t.weightHigh};
    float const wy[2] = {v.weightLow, v.weightHigh};
    float const wx[2] = {h.weightLow, h.weightHigh};
    float sum = 0.f;
    for (int32_t ct = 0; ct < 2; ++ct)
    {
        for (int32_t cy = 0; cy < 2; ++cy)
        {
            float const wty = wt[ct] * wy[cy];
            if (wty == 0.f)
            {
                continue;  // corner outside the clip (or exact integer position): never read it
            }
            T const* row = clip + ((t.low + ct) * s.height + (v.low + cy)) * s.width;
            for (int32_t cx = 0; cx < 2; ++cx)
            {
                if (wx[cx] != 0.f)
                {
                    sum += toFloat(row[h.low + cx]) * (wty * wx[cx]);
                }
            }
        }
    }
    return sum;
}

template <typename T>
KPN_HD void trilinearSampleStore(T const* video, T const* offsets, T* out, TrilinearSampleShape const& s, int64_t index)
{
    out[index] = fromFloat<T>(trilinearSampleElement(video, offsets, s, index));
}

} // namespace kpn
