// Entry points of libkpn_plugins.so.
//
// - Loaded by LD_PRELOAD, dlopen, `trtexec --staticPlugins` or Triton: the static registrar below
//   registers both creators with TensorRT's global registry (getPluginRegistry()).
// - Loaded by IPluginRegistry::loadLibrary (`trt.get_plugin_registry().load_library`, `trtexec
//   --dynamicPlugins`, Polygraphy --plugins): TensorRT calls setLoggerFinder, then getCreators and
//   registers what it returns, tied to the library handle. getCreators first withdraws the static
//   registrations of the same creator objects, so each creator is registered exactly once.
#include <array>

#include "NvInferRuntime.h"

#include "../adaptive_conv/adaptive_conv_plugin.h"
#include "../trilinear_sample/trilinear_sample_plugin.h"
#include "kpn_plugin_utils.h"

namespace kpn
{
namespace plugin
{
namespace
{

std::array<nvinfer1::IPluginCreatorInterface*, 2>& creators() noexcept
{
    // function-local statics: initialised on first use, whatever the static initialisation order
    static AdaptiveConvPluginCreator adaptiveConv;
    static TrilinearSamplePluginCreator trilinearSample;
    static std::array<nvinfer1::IPluginCreatorInterface*, 2> all{&adaptiveConv, &trilinearSample};
    return all;
}

bool gStaticRegistrationDone = false;  // some creators may have been registered: withdraw them all

struct StaticRegistrar
{
    StaticRegistrar()
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (!registry)
        {
            return;
        }
        for (nvinfer1::IPluginCreatorInterface* creator : creators())
        {
            registry->registerCreator(*creator, "");
        }
        gStaticRegistrationDone = true;
    }
};

StaticRegistrar const gStaticRegistrar;

} // namespace
} // namespace plugin
} // namespace kpn

KPN_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    kpn::plugin::setLoggerFinder(finder);
}

KPN_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    auto& all = kpn::plugin::creators();
    nvinfer1::IPluginRegistry* registry = kpn::plugin::gStaticRegistrationDone ? getPluginRegistry() : nullptr;
    if (registry)
    {
        for (nvinfer1::IPluginCreatorInterface* creator : all)
        {
            registry->deregisterCreator(*creator);  // false when that one was not registered: fine
        }
        kpn::plugin::gStaticRegistrationDone = false;
    }
    nbCreators = static_cast<int32_t>(all.size());
    return all.data();
}
