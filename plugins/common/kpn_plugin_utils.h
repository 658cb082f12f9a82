// TensorRT-side helpers shared by the plugins: logging through TensorRT's logger (never abort),
// reading int attributes from a PluginFieldCollection, mapping TensorRT data types to kernel dtypes.
#pragma once

#include <cstdint>
#include <string>

#include "NvInferRuntime.h"

#include "kpn_common.h"

#define KPN_PLUGIN_EXPORT extern "C" KPN_EXPORT

namespace kpn
{
namespace plugin
{

// Set by setLoggerFinder() (trtexec --dynamicPlugins, IPluginRegistry::loadLibrary). Without it
// (LD_PRELOAD, --staticPlugins, plain dlopen) messages go to stderr.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

void logError(char const* pluginName, std::string const& message) noexcept;

// kFLOAT -> kFloat32, kHALF -> kFloat16; false for anything else.
bool toKernelDType(nvinfer1::DataType type, DType& out) noexcept;

bool isSupportedIO(nvinfer1::PluginTensorDesc const& desc) noexcept;

// The int field `name` of `fields` (kINT32 or kINT64, length 1) into `value`; returns false when
// the field is absent (value untouched). Sets `error` for a field of the wrong type or length.
bool readIntField(nvinfer1::PluginFieldCollection const* fields, char const* name, int32_t& value, std::string& error) noexcept;

} // namespace plugin
} // namespace kpn
