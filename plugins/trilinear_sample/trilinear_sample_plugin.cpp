#include "trilinear_sample_plugin.h"

#include <new>

#include "../common/kpn_plugin_utils.h"
#include "trilinear_sample_kernel.h"

namespace kpn
{
namespace plugin
{
namespace
{
constexpr char const* kReferenceFrameField = "reference_frame";
constexpr int32_t kNbInputs = 2;
constexpr int32_t kNbOutputs = 1;
constexpr int32_t kReferenceFromShape = -1;  // attribute absent: T // 2, as in train/ops.py
} // namespace

TrilinearSamplePlugin::TrilinearSamplePlugin(int32_t referenceFrame)
    : mReferenceFrame(referenceFrame)
    , mSerializedField(kReferenceFrameField, &mReferenceFrame, nvinfer1::PluginFieldType::kINT32, 1)
    , mSerializedFields{1, &mSerializedField}
{
}

nvinfer1::IPluginCapability* TrilinearSamplePlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* TrilinearSamplePlugin::clone() noexcept
{
    // a fresh object: its serialized-field pointers must point at its own members
    return new (std::nothrow) TrilinearSamplePlugin(mReferenceFrame);
}

char const* TrilinearSamplePlugin::getPluginName() const noexcept
{
    return kTrilinearSampleName;
}

char const* TrilinearSamplePlugin::getPluginVersion() const noexcept
{
    return kTrilinearSampleVersion;
}

char const* TrilinearSamplePlugin::getPluginNamespace() const noexcept
{
    return "";
}

int32_t TrilinearSamplePlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

int32_t TrilinearSamplePlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || !outputTypes || !inputTypes)
    {
        logError(kTrilinearSampleName, "expects 2 inputs (video, offsets) and 1 output");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t TrilinearSamplePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[0].nbDims != 5 || inputs[1].nbDims != 5)
    {
        logError(kTrilinearSampleName, "expects video [B,C,T,H,W] and offsets [B,S,3,H,W]");
        return -1;
    }
    // out [B,C,S,H,W]: B, C, H, W from the video, S from the offsets; symbolic, so dynamic shapes work
    nvinfer1::DimsExprs const& video = inputs[0];
    nvinfer1::DimsExprs const& offsets = inputs[1];
    outputs[0].nbDims = 5;
    outputs[0].d[0] = video.d[0];
    outputs[0].d[1] = video.d[1];
    outputs[0].d[2] = offsets.d[1];
    outputs[0].d[3] = video.d[3];
    outputs[0].d[4] = video.d[4];
    return 0;
}

bool TrilinearSamplePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    // fp32 or fp16, linear, one dtype for both inputs and the output
    return isSupportedIO(inOut[pos].desc) && inOut[pos].desc.type == inOut[0].desc.type;
}

int32_t TrilinearSamplePlugin::referenceFrameFor(int64_t time) const
{
    return mReferenceFrame == kReferenceFromShape ? static_cast<int32_t>(time / 2) : mReferenceFrame;
}

std::string TrilinearSamplePlugin::checkDims(nvinfer1::Dims const& video, nvinfer1::Dims const& offsets) const
{
    if (video.nbDims != 5 || offsets.nbDims != 5)
    {
        return "video and offsets must be 5-D";
    }
    if (offsets.d[2] >= 0 && offsets.d[2] != 3)
    {
        return "offsets must hold (dt, dy, dx) in dimension 2, got " + std::to_string(offsets.d[2]);
    }
    for (int32_t axis : {0, 3, 4})
    {
        if (video.d[axis] >= 0 && offsets.d[axis] >= 0 && video.d[axis] != offsets.d[axis])
        {
            return "video and offsets differ in dimension " + std::to_string(axis);
        }
    }
    int64_t const time = video.d[2];
    if (time >= 0)
    {
        int32_t const reference = referenceFrameFor(time);
        if (reference < 0 || reference >= time)
        {
            return "reference_frame " + std::to_string(reference) + " outside [0, " + std::to_string(time) + ")";
        }
    }
    return {};
}

int32_t TrilinearSamplePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError(kTrilinearSampleName, "expects 2 inputs and 1 output");
        return -1;
    }
    std::string const error = checkDims(in[0].desc.dims, in[1].desc.dims);
    if (!error.empty())
    {
        logError(kTrilinearSampleName, error);
        return -1;
    }
    return 0;
}

int32_t TrilinearSamplePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    std::string const error = checkDims(in[0].dims, in[1].dims);
    if (!error.empty())
    {
        logError(kTrilinearSampleName, error);
        return -1;
    }
    return 0;
}

int32_t TrilinearSamplePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    DType dtype;
    if (!toKernelDType(inputDesc[0].type, dtype))
    {
        logError(kTrilinearSampleName, "unsupported data type (float32 and float16 only)");
        return -1;
    }
    nvinfer1::Dims const& video = inputDesc[0].dims;
    nvinfer1::Dims const& offsets = inputDesc[1].dims;
    TrilinearSampleShape const shape{
        video.d[0], video.d[1], video.d[2], video.d[3], video.d[4], offsets.d[1], referenceFrameFor(video.d[2])};
    cudaError_t cudaStatus = cudaSuccess;
    int32_t const status
        = launchTrilinearSample(dtype, inputs[0], inputs[1], outputs[0], shape, stream, &cudaStatus);
    if (status != kSuccess)
    {
        std::string message = std::string("enqueue failed: ") + statusString(status);
        if (status == kCudaError)
        {
            message += std::string(" (") + cudaGetErrorString(cudaStatus) + ")";
        }
        logError(kTrilinearSampleName, message);
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* TrilinearSamplePlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();  // no per-context resources
}

nvinfer1::PluginFieldCollection const* TrilinearSamplePlugin::getFieldsToSerialize() noexcept
{
    return &mSerializedFields;
}

TrilinearSamplePluginCreator::TrilinearSamplePluginCreator()
    : mFieldNames{nvinfer1::PluginField(kReferenceFrameField, nullptr, nvinfer1::PluginFieldType::kINT32, 1)}
    , mFieldCollection{1, mFieldNames}
{
}

nvinfer1::IPluginV3* TrilinearSamplePluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    // Build phase: fields from the ONNX node's attributes; runtime phase: the serialized fields.
    int32_t referenceFrame = kReferenceFromShape;
    std::string error;
    if (!readIntField(fc, kReferenceFrameField, referenceFrame, error) && !error.empty())
    {
        logError(kTrilinearSampleName, error);
        return nullptr;
    }
    if (referenceFrame < kReferenceFromShape)
    {
        logError(kTrilinearSampleName, "reference_frame must be >= 0, got " + std::to_string(referenceFrame));
        return nullptr;
    }
    return new (std::nothrow) TrilinearSamplePlugin(referenceFrame);
}

nvinfer1::PluginFieldCollection const* TrilinearSamplePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* TrilinearSamplePluginCreator::getPluginName() const noexcept
{
    return kTrilinearSampleName;
}

char const* TrilinearSamplePluginCreator::getPluginVersion() const noexcept
{
    return kTrilinearSampleVersion;
}

char const* TrilinearSamplePluginCreator::getPluginNamespace() const noexcept
{
    return "";
}

} // namespace plugin
} // namespace kpn
