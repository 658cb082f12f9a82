// Shared by the kernels, their CPU build and the plugins: the host/device qualifier, storage-type
// conversions (float and __half, always computed in float), dtype tags and status codes.
// No TensorRT types here: this header is compiled by nvcc (kernels) and by g++ (CPU build, tests).
#pragma once

#include <cstdint>
#include <cuda_fp16.h>  // __half; its host conversions also work in plain g++ (CPU build)

#if defined(__CUDACC__)
#define KPN_HD __host__ __device__ __forceinline__
#else
#define KPN_HD inline
#endif

// Symbols of libkpn_plugins.so meant for callers outside it (the library builds with hidden
// visibility, so only these and the TensorRT entry points are exported).
#define KPN_EXPORT __attribute__((visibility("default")))

// Unroll the next loop in the CUDA build (g++ would warn on the pragma; the CPU build needs no unrolling).
#if defined(__CUDACC__)
#define KPN_UNROLL _Pragma("unroll")
#else
#define KPN_UNROLL
#endif

namespace kpn
{

// Storage types the ops accept; the arithmetic always runs in float.
enum class DType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
};

// Status codes returned by the launch functions and the CPU ABI (0 = success). CUDA errors are
// reported as kCudaError; the caller logs cudaGetErrorString for the detail.
enum Status : int32_t
{
    kSuccess = 0,
    kBadShape = 1,
    kBadAttribute = 2,
    kBadDType = 3,
    kNullPointer = 4,
    kCudaError = 5,
};

inline char const* statusString(int32_t status)
{
    switch (status)
    {
    case kSuccess: return "success";
    case kBadShape: return "invalid tensor shape";
    case kBadAttribute: return "invalid attribute";
    case kBadDType: return "unsupported data type (float32 and float16 only)";
    case kNullPointer: return "null tensor pointer";
    case kCudaError: return "CUDA error";
    default: return "unknown error";
    }
}

KPN_HD float toFloat(float v) { return v; }
KPN_HD float toFloat(__half v) { return __half2float(v); }

template <typename T>
KPN_HD T fromFloat(float v);
template <>
KPN_HD float fromFloat<float>(float v) { return v; }
template <>
KPN_HD __half fromFloat<__half>(float v) { return __float2half_rn(v); }

} // namespace kpn
