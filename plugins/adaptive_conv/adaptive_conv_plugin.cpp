#include "adaptive_conv_plugin.h"

#include <new>

#include "../common/kpn_plugin_utils.h"
#include "adaptive_conv_kernel.h"

namespace kpn
{
namespace plugin
{
namespace
{
constexpr char const* kKernelSizeField = "kernel_size";
constexpr int32_t kNbInputs = 2;
constexpr int32_t kNbOutputs = 1;
} // namespace

AdaptiveConvPlugin::AdaptiveConvPlugin(int32_t kernelSize)
    : mKernelSize(kernelSize)
    , mSerializedField(kKernelSizeField, &mKernelSize, nvinfer1::PluginFieldType::kINT32, 1)
    , mSerializedFields{1, &mSerializedField}
{
}

nvinfer1::IPluginCapability* AdaptiveConvPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* AdaptiveConvPlugin::clone() noexcept
{
    // a fresh object: its serialized-field pointers must point at its own members
    return new (std::nothrow) AdaptiveConvPlugin(mKernelSize);
}

char const* AdaptiveConvPlugin::getPluginName() const noexcept
{
    return kAdaptiveConvName;
}

char const* AdaptiveConvPlugin::getPluginVersion() const noexcept
{
    return kAdaptiveConvVersion;
}

char const* AdaptiveConvPlugin::getPluginNamespace() const noexcept
{
    return "";
}

int32_t AdaptiveConvPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

int32_t AdaptiveConvPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || !outputTypes || !inputTypes)
    {
        logError(kAdaptiveConvName, "expects 2 inputs (frames, kernels) and 1 output");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t AdaptiveConvPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[0].nbDims != 5 || inputs[1].nbDims != 5)
    {
        logError(kAdaptiveConvName, "expects frames [B,N,C,H,W] and kernels [B,N,K*K,H,W]");
        return -1;
    }
    // out [B,N,C,H,W] = frames' shape, symbolic: every dimension may be dynamic
    outputs[0] = inputs[0];
    return 0;
}

bool AdaptiveConvPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    // fp32 or fp16, linear, one dtype for both inputs and the output
    return isSupportedIO(inOut[pos].desc) && inOut[pos].desc.type == inOut[0].desc.type;
}

std::string AdaptiveConvPlugin::checkDims(nvinfer1::Dims const& frames, nvinfer1::Dims const& kernels) const
{
    if (mKernelSize < 1 || mKernelSize % 2 == 0)
    {
        return "kernel_size must be odd and positive, got " + std::to_string(mKernelSize);
    }
    if (frames.nbDims != 5 || kernels.nbDims != 5)
    {
        return "frames and kernels must be 5-D";
    }
    int64_t const taps = static_cast<int64_t>(mKernelSize) * mKernelSize;
    if (kernels.d[2] >= 0 && kernels.d[2] != taps)
    {
        return "kernels have " + std::to_string(kernels.d[2]) + " taps, kernel_size " + std::to_string(mKernelSize)
            + " needs " + std::to_string(taps);
    }
    for (int32_t axis : {0, 1, 3, 4})
    {
        if (frames.d[axis] >= 0 && kernels.d[axis] >= 0 && frames.d[axis] != kernels.d[axis])
        {
            return "frames and kernels differ in dimension " + std::to_string(axis);
        }
    }
    return {};
}

int32_t AdaptiveConvPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError(kAdaptiveConvName, "expects 2 inputs and 1 output");
        return -1;
    }
    std::string const error = checkDims(in[0].desc.dims, in[1].desc.dims);
    if (!error.empty())
    {
        logError(kAdaptiveConvName, error);
        return -1;
    }
    return 0;
}

int32_t AdaptiveConvPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    std::string const error = checkDims(in[0].dims, in[1].dims);
    if (!error.empty())
    {
        logError(kAdaptiveConvName, error);
        return -1;
    }
    return 0;
}

int32_t AdaptiveConvPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    DType dtype;
    if (!toKernelDType(inputDesc[0].type, dtype))
    {
        logError(kAdaptiveConvName, "unsupported data type (float32 and float16 only)");
        return -1;
    }
    nvinfer1::Dims const& d = inputDesc[0].dims;
    AdaptiveConvShape const shape{d.d[0], d.d[1], d.d[2], d.d[3], d.d[4], mKernelSize};
    cudaError_t cudaStatus = cudaSuccess;
    int32_t const status = launchAdaptiveConv(dtype, inputs[0], inputs[1], outputs[0], shape, stream, &cudaStatus);
    if (status != kSuccess)
    {
        std::string message = std::string("enqueue failed: ") + statusString(status);
        if (status == kCudaError)
        {
            message += std::string(" (") + cudaGetErrorString(cudaStatus) + ")";
        }
        logError(kAdaptiveConvName, message);
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* AdaptiveConvPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();  // no per-context resources
}

nvinfer1::PluginFieldCollection const* AdaptiveConvPlugin::getFieldsToSerialize() noexcept
{
    return &mSerializedFields;
}

AdaptiveConvPluginCreator::AdaptiveConvPluginCreator()
    : mFieldNames{nvinfer1::PluginField(kKernelSizeField, nullptr, nvinfer1::PluginFieldType::kINT32, 1)}
    , mFieldCollection{1, mFieldNames}
{
}

nvinfer1::IPluginV3* AdaptiveConvPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    // Build phase: fields from the ONNX node's attributes (the parser drops plugin_version and
    // plugin_namespace); runtime phase: the fields getFieldsToSerialize wrote. Same handling.
    int32_t kernelSize = 0;
    std::string error;
    if (!readIntField(fc, kKernelSizeField, kernelSize, error))
    {
        logError(kAdaptiveConvName, error.empty() ? "missing field kernel_size" : error);
        return nullptr;
    }
    if (kernelSize < 1 || kernelSize % 2 == 0)
    {
        logError(kAdaptiveConvName, "kernel_size must be odd and positive, got " + std::to_string(kernelSize));
        return nullptr;
    }
    return new (std::nothrow) AdaptiveConvPlugin(kernelSize);
}

nvinfer1::PluginFieldCollection const* AdaptiveConvPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* AdaptiveConvPluginCreator::getPluginName() const noexcept
{
    return kAdaptiveConvName;
}

char const* AdaptiveConvPluginCreator::getPluginVersion() const noexcept
{
    return kAdaptiveConvVersion;
}

char const* AdaptiveConvPluginCreator::getPluginNamespace() const noexcept
{
    return "";
}

} // namespace plugin
} // namespace kpn
