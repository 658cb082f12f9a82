#include "kpn_plugin_utils.h"

#include <atomic>
#include <cstdio>
#include <cstring>

namespace kpn
{
namespace plugin
{
namespace
{
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logError(char const* pluginName, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string("kpn plugin ") + pluginName + ": " + message;
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        nvinfer1::ILogger* logger = finder ? finder->findLogger() : nullptr;
        if (logger)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
        }
        else
        {
            std::fprintf(stderr, "[E] %s\n", text.c_str());
        }
    }
    catch (...)
    {
        // logging must never throw out of a noexcept TensorRT callback
    }
}

bool toKernelDType(nvinfer1::DataType type, DType& out) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: out = DType::kFloat32; return true;
    case nvinfer1::DataType::kHALF: out = DType::kFloat16; return true;
    default: return false;
    }
}

bool isSupportedIO(nvinfer1::PluginTensorDesc const& desc) noexcept
{
    DType unused;
    return desc.format == nvinfer1::TensorFormat::kLINEAR && toKernelDType(desc.type, unused);
}

bool readIntField(nvinfer1::PluginFieldCollection const* fields, char const* name, int32_t& value, std::string& error) noexcept
{
    if (!fields)
    {
        return false;
    }
    for (int32_t i = 0; i < fields->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fields->fields[i];
        if (!field.name || std::strcmp(field.name, name) != 0)
        {
            continue;
        }
        if (field.length != 1 || !field.data)
        {
            error = std::string("field ") + name + " must hold one integer";
            return false;
        }
        if (field.type == nvinfer1::PluginFieldType::kINT32)
        {
            value = *static_cast<int32_t const*>(field.data);
            return true;
        }
        if (field.type == nvinfer1::PluginFieldType::kINT64)
        {
            int64_t const wide = *static_cast<int64_t const*>(field.data);
            if (wide < INT32_MIN || wide > INT32_MAX)
            {
                error = std::string("field ") + name + " out of int32 range";
                return false;
            }
            value = static_cast<int32_t>(wide);
            return true;
        }
        error = std::string("field ") + name + " must be kINT32 or kINT64";
        return false;
    }
    return false;
}

} // namespace plugin
} // namespace kpn
