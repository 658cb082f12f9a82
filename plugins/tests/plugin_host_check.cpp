// Host-side checks of the plugin classes against the real TensorRT headers, without libnvinfer or a
// GPU: creator fields, serialization round trip, clone, capability interfaces, output types and
// symbolic shapes, format combinations, error paths (logged, non-zero, never abort), getCreators.
// Built and run by tests/test_plugins_build.py for each TensorRT header set.
#include <cstdio>
#include <cstring>
#include <memory>

#include <cuda_runtime_api.h>

#include "NvInferRuntime.h"

#include "../adaptive_conv/adaptive_conv_plugin.h"
#include "../common/kpn_plugin_utils.h"
#include "../trilinear_sample/trilinear_sample_plugin.h"

// libnvinfer's registry is absent here: the static registrar sees no registry and does nothing.
extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return nullptr;
}
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{
int gFailures = 0;

void expect(bool condition, char const* what)
{
    if (!condition)
    {
        std::printf("FAIL: %s\n", what);
        ++gFailures;
    }
}

// getOutputShapes only routes the input expressions: fake, never dereferenced pointers suffice.
struct RoutingOnlyExprBuilder : public nvinfer1::IExprBuilder
{
    ~RoutingOnlyExprBuilder() noexcept override = default;
};

nvinfer1::IDimensionExpr const* fakeExpr(int i)
{
    static char storage[64];
    return reinterpret_cast<nvinfer1::IDimensionExpr const*>(storage + i);
}

nvinfer1::DimsExprs exprs(int first)
{
    nvinfer1::DimsExprs e{};
    e.nbDims = 5;
    for (int i = 0; i < 5; ++i)
    {
        e.d[i] = fakeExpr(first + i);
    }
    return e;
}

nvinfer1::DynamicPluginTensorDesc desc(nvinfer1::DataType type, nvinfer1::Dims dims,
    nvinfer1::TensorFormat format = nvinfer1::TensorFormat::kLINEAR)
{
    nvinfer1::DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims = dims;
    d.min = d.opt = d.max = dims;
    return d;
}

nvinfer1::Dims dims5(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e)
{
    nvinfer1::Dims dims{};
    dims.nbDims = 5;
    int64_t const v[5] = {a, b, c, d, e};
    for (int i = 0; i < 5; ++i)
    {
        dims.d[i] = v[i];
    }
    return dims;
}

template <typename Creator>
nvinfer1::IPluginV3* create(Creator& creator, char const* field, int32_t value)
{
    nvinfer1::PluginField f(field, &value, nvinfer1::PluginFieldType::kINT32, 1);
    nvinfer1::PluginFieldCollection fc{1, &f};
    return creator.createPlugin("node", &fc, nvinfer1::TensorRTPhase::kBUILD);
}

// The serialized fields, fed back to the creator (runtime phase), give an equal plugin.
template <typename Creator>
nvinfer1::IPluginV3* roundTrip(Creator& creator, nvinfer1::IPluginV3* plugin)
{
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    return creator.createPlugin("node", runtime->getFieldsToSerialize(), nvinfer1::TensorRTPhase::kRUNTIME);
}

void checkAdaptiveConv()
{
    using namespace kpn::plugin;
    AdaptiveConvPluginCreator creator;
    expect(std::strcmp(creator.getPluginName(), "AdaptiveConv") == 0, "creator name AdaptiveConv");
    expect(std::strcmp(creator.getPluginVersion(), "1") == 0 && std::strcmp(creator.getPluginNamespace(), "") == 0,
        "AdaptiveConv version 1, namespace empty");
    nvinfer1::PluginFieldCollection const* names = creator.getFieldNames();
    expect(names->nbFields == 1 && std::strcmp(names->fields[0].name, "kernel_size") == 0, "field kernel_size");

    expect(create(creator, "kernel_size", 4) == nullptr, "even kernel_size refused");
    nvinfer1::PluginFieldCollection empty{0, nullptr};
    expect(creator.createPlugin("node", &empty, nvinfer1::TensorRTPhase::kBUILD) == nullptr, "missing kernel_size refused");

    std::unique_ptr<nvinfer1::IPluginV3> plugin(create(creator, "kernel_size", 5));
    expect(plugin != nullptr, "kernel_size 5 accepted");
    if (!plugin)
    {
        return;
    }
    std::unique_ptr<nvinfer1::IPluginV3> restored(roundTrip(creator, plugin.get()));
    auto* fields = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        restored->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))->getFieldsToSerialize();
    expect(fields->nbFields == 1 && *static_cast<int32_t const*>(fields->fields[0].data) == 5, "kernel_size round trip");
    std::unique_ptr<nvinfer1::IPluginV3> copy(plugin->clone());
    auto* copyFields = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        copy->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))->getFieldsToSerialize();
    expect(copyFields->fields[0].data != fields->fields[0].data && *static_cast<int32_t const*>(copyFields->fields[0].data) == 5,
        "clone owns its fields");

    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    expect(std::strcmp(core->getPluginName(), "AdaptiveConv") == 0, "core name");
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    expect(build->getNbOutputs() == 1, "one output");

    nvinfer1::DataType inTypes[2] = {nvinfer1::DataType::kHALF, nvinfer1::DataType::kHALF};
    nvinfer1::DataType outType = nvinfer1::DataType::kFLOAT;
    expect(build->getOutputDataTypes(&outType, 1, inTypes, 2) == 0 && outType == nvinfer1::DataType::kHALF, "output dtype = input dtype");

    nvinfer1::DimsExprs inputs[2] = {exprs(0), exprs(10)};
    nvinfer1::DimsExprs out{};
    RoutingOnlyExprBuilder builder;
    expect(build->getOutputShapes(inputs, 2, nullptr, 0, &out, 1, builder) == 0, "getOutputShapes ok");
    expect(out.nbDims == 5 && out.d[0] == fakeExpr(0) && out.d[2] == fakeExpr(2) && out.d[4] == fakeExpr(4),
        "output shape = frames' shape");

    auto const frames = dims5(1, 8, 1, -1, -1);
    auto const kernels = dims5(1, 8, 25, -1, -1);
    for (auto type : {nvinfer1::DataType::kFLOAT, nvinfer1::DataType::kHALF})
    {
        nvinfer1::DynamicPluginTensorDesc io[3] = {desc(type, frames), desc(type, kernels), desc(type, frames)};
        expect(build->supportsFormatCombination(0, io, 2, 1) && build->supportsFormatCombination(2, io, 2, 1),
            "fp32/fp16 linear supported");
        expect(build->configurePlugin(io, 2, io + 2, 1) == 0, "configure with dynamic H, W");
    }
    nvinfer1::DynamicPluginTensorDesc mixed[3] = {desc(nvinfer1::DataType::kFLOAT, frames),
        desc(nvinfer1::DataType::kHALF, kernels), desc(nvinfer1::DataType::kFLOAT, frames)};
    expect(!build->supportsFormatCombination(1, mixed, 2, 1), "mixed dtypes refused");
    nvinfer1::DynamicPluginTensorDesc ints[3] = {desc(nvinfer1::DataType::kINT32, frames),
        desc(nvinfer1::DataType::kINT32, kernels), desc(nvinfer1::DataType::kINT32, frames)};
    expect(!build->supportsFormatCombination(0, ints, 2, 1), "int32 refused");
    nvinfer1::DynamicPluginTensorDesc chw4[3] = {desc(nvinfer1::DataType::kHALF, frames, nvinfer1::TensorFormat::kCHW4),
        desc(nvinfer1::DataType::kHALF, kernels), desc(nvinfer1::DataType::kHALF, frames)};
    expect(!build->supportsFormatCombination(0, chw4, 2, 1), "non-linear format refused");
    nvinfer1::DynamicPluginTensorDesc badTaps[3] = {desc(nvinfer1::DataType::kFLOAT, frames),
        desc(nvinfer1::DataType::kFLOAT, dims5(1, 8, 9, -1, -1)), desc(nvinfer1::DataType::kFLOAT, frames)};
    std::printf("(an error line about 9 taps is expected next)\n");
    expect(build->configurePlugin(badTaps, 2, badTaps + 2, 1) != 0, "K*K mismatch refused with a status");

    // enqueue reports errors as a status: an unsupported dtype, and (on a host without a GPU or
    // driver) the failed kernel launch; it never aborts
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    nvinfer1::PluginTensorDesc in[2] = {ints[0].desc, ints[1].desc};
    float buffer[64] = {};
    void const* inputs2[2] = {buffer, buffer};
    void* outputs1[1] = {buffer};
    std::printf("(an error line about the data type is expected next)\n");
    expect(runtime->enqueue(in, in, inputs2, outputs1, nullptr, nullptr) != 0, "enqueue int32 returns an error");
    int deviceCount = 0;
    if (cudaGetDeviceCount(&deviceCount) != cudaSuccess || deviceCount == 0)
    {
        nvinfer1::PluginTensorDesc fp32[2] = {desc(nvinfer1::DataType::kFLOAT, dims5(1, 1, 1, 2, 2)).desc,
            desc(nvinfer1::DataType::kFLOAT, dims5(1, 1, 25, 2, 2)).desc};
        std::printf("(no GPU here: an error line about a CUDA error is expected next)\n");
        expect(runtime->enqueue(fp32, fp32, inputs2, outputs1, nullptr, nullptr) != 0, "failed launch returns an error");
    }
}

void checkTrilinearSample()
{
    using namespace kpn::plugin;
    TrilinearSamplePluginCreator creator;
    expect(std::strcmp(creator.getPluginName(), "TrilinearSample") == 0, "creator name TrilinearSample");
    expect(std::strcmp(creator.getFieldNames()->fields[0].name, "reference_frame") == 0, "field reference_frame");

    std::unique_ptr<nvinfer1::IPluginV3> plugin(create(creator, "reference_frame", 2));
    expect(plugin != nullptr, "reference_frame 2 accepted");
    if (!plugin)
    {
        return;
    }
    std::unique_ptr<nvinfer1::IPluginV3> restored(roundTrip(creator, plugin.get()));
    auto* fields = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        restored->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))->getFieldsToSerialize();
    expect(fields->nbFields == 1 && *static_cast<int32_t const*>(fields->fields[0].data) == 2, "reference_frame round trip");

    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    nvinfer1::DimsExprs inputs[2] = {exprs(0), exprs(10)};  // video [B,C,T,H,W], offsets [B,S,3,H,W]
    nvinfer1::DimsExprs out{};
    RoutingOnlyExprBuilder builder;
    expect(build->getOutputShapes(inputs, 2, nullptr, 0, &out, 1, builder) == 0, "getOutputShapes ok");
    expect(out.nbDims == 5 && out.d[0] == fakeExpr(0) && out.d[1] == fakeExpr(1) && out.d[2] == fakeExpr(11)
            && out.d[3] == fakeExpr(3) && out.d[4] == fakeExpr(4),
        "output [B,C,S,H,W]");

    auto const video = dims5(-1, 1, 5, -1, -1);
    auto const offsets = dims5(-1, 27, 3, -1, -1);
    auto const output = dims5(-1, 1, 27, -1, -1);
    nvinfer1::DynamicPluginTensorDesc io[3] = {desc(nvinfer1::DataType::kHALF, video),
        desc(nvinfer1::DataType::kHALF, offsets), desc(nvinfer1::DataType::kHALF, output)};
    expect(build->configurePlugin(io, 2, io + 2, 1) == 0, "configure T=5, t_ref=2");

    std::unique_ptr<nvinfer1::IPluginV3> outside(create(creator, "reference_frame", 5));
    auto* outsideBuild = static_cast<nvinfer1::IPluginV3OneBuild*>(
        outside->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    std::printf("(an error line about reference_frame 5 is expected next)\n");
    expect(outsideBuild->configurePlugin(io, 2, io + 2, 1) != 0, "reference_frame >= T refused with a status");

    nvinfer1::PluginFieldCollection empty{0, nullptr};
    std::unique_ptr<nvinfer1::IPluginV3> defaulted(creator.createPlugin("node", &empty, nvinfer1::TensorRTPhase::kBUILD));
    expect(defaulted != nullptr, "reference_frame defaults to T // 2");
}

void checkEntryPoints()
{
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    expect(count == 2 && creators && creators[0] && creators[1], "getCreators returns 2 creators");
    if (count == 2)
    {
        auto* first = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[0]);
        auto* second = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[1]);
        expect(std::strcmp(first->getPluginName(), "AdaptiveConv") == 0
                && std::strcmp(second->getPluginName(), "TrilinearSample") == 0,
            "getCreators names");
        expect(std::strcmp(first->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creators are V3One");
    }
}
} // namespace

int main()
{
    checkAdaptiveConv();
    checkTrilinearSample();
    checkEntryPoints();
    std::printf(gFailures ? "%d FAILED\n" : "ALL OK\n", gFailures);
    return gFailures ? 1 : 0;
}
