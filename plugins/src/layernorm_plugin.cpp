// TensorRT IPluginV3 "SegformerLayerNorm" (version 1): LayerNorm over the last dimension of x with affine gamma and
// beta, FP32 or FP16, linear format. The creator registers itself when the library is loaded, so preloading the
// .so (LD_PRELOAD into tritonserver, or ctypes before building) is all a user does.
// Built only where TensorRT's headers and a TensorRT runtime library are found (plugins/CMakeLists.txt).
//
// Registration checks first that the TensorRT in the process has the major version of the headers it was
// compiled against (the interfaces' layout differs across majors: a TensorRT 10 plugin inside TensorRT 11 would
// crash), and registers at most once per process, however many copies of the library are loaded.
#include <NvInferRuntime.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "layernorm_fields.h"
#include "layernorm_kernel.h"

using namespace nvinfer1;

namespace segformer {
namespace {

void report(const std::string& msg) { std::cerr << "[SegformerLayerNorm] " << msg << std::endl; }

// A refusal also goes to the registry's error recorder, TensorRT's own error reporting, when one is set.
void report_error(ErrorCode code, const std::string& msg) {
  report(msg);
  if (IPluginRegistry* registry = getPluginRegistry()) {
    if (IErrorRecorder* recorder = registry->getErrorRecorder()) recorder->reportError(code, msg.c_str());
  }
}

// What the load-time registration did (segformer_plugin_registration_status)
enum Status : int32_t { kNotRun = 0, kRegistered = 1, kAlreadyRegistered = 2, kOtherMajor = -1, kNoRegistry = -2,
                        kRegisterFailed = -3 };
int32_t g_status = kNotRun;

FieldType to_view_type(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT32: return FieldType::kFloat32;
    case PluginFieldType::kFLOAT16: return FieldType::kFloat16;
    case PluginFieldType::kFLOAT64: return FieldType::kFloat64;
    case PluginFieldType::kINT8: return FieldType::kInt8;
    case PluginFieldType::kINT16: return FieldType::kInt16;
    case PluginFieldType::kINT32: return FieldType::kInt32;
    case PluginFieldType::kINT64: return FieldType::kInt64;
    case PluginFieldType::kCHAR: return FieldType::kChar;
    default: return FieldType::kOther;
  }
}

class LayerNormPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit LayerNormPlugin(LayerNormFields fields) : fields_(fields) { refresh_serialized(); }

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override {
    auto* p = new (std::nothrow) LayerNormPlugin(fields_);
    if (p) p->channels_ = channels_;
    return p;
  }

  // IPluginV3OneCore
  AsciiChar const* getPluginName() const noexcept override { return kLayerNormName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kLayerNormVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != 3) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& /*exprBuilder*/) noexcept override {
    if (nbInputs != 3 || nbOutputs != 1) return -1;
    outputs[0] = inputs[0];
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos >= 4) return false;
    const PluginTensorDesc& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    return d.type == inOut[0].desc.type;  // gamma, beta and the output share x's type
  }
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
                          int32_t /*nbOutputs*/) noexcept override {
    if (nbInputs != 3 || in[0].desc.dims.nbDims < 1) return -1;
    const int64_t c = in[0].desc.dims.d[in[0].desc.dims.nbDims - 1];
    if (c > segformer_layernorm_max_channels()) {
      report("last dimension " + std::to_string(c) + " exceeds the kernel's maximum " +
             std::to_string(segformer_layernorm_max_channels()));
      return -1;
    }
    return 0;
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
                          DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override {
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t /*nbOutputs*/) noexcept override {
    if (nbInputs != 3 || in[0].dims.nbDims < 1) return -1;
    channels_ = in[0].dims.d[in[0].dims.nbDims - 1];
    return 0;
  }
  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                  void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override {
    const Dims& dims = inputDesc[0].dims;
    const int64_t c = dims.d[dims.nbDims - 1];
    int64_t rows = 1;
    for (int32_t i = 0; i + 1 < dims.nbDims; ++i) rows *= dims.d[i];
    const int32_t dtype = inputDesc[0].type == DataType::kHALF ? SEGFORMER_FP16 : SEGFORMER_FP32;
    const int status = segformer_layernorm(inputs[0], inputs[1], inputs[2], outputs[0], rows,
                                           static_cast<int32_t>(c), fields_.epsilon, dtype, stream);
    if (status != 0) {
      report(std::string("kernel launch failed: ") + cudaGetErrorString(static_cast<cudaError_t>(status)));
      return -1;
    }
    return 0;
  }
  IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    refresh_serialized();
    return &serialized_;
  }

 private:
  void refresh_serialized() {
    fields_out_.clear();
    fields_out_.emplace_back("epsilon", &fields_.epsilon, PluginFieldType::kFLOAT32, 1);
    serialized_.nbFields = static_cast<int32_t>(fields_out_.size());
    serialized_.fields = fields_out_.data();
  }

  LayerNormFields fields_;
  int64_t channels_ = 0;
  std::vector<PluginField> fields_out_;
  PluginFieldCollection serialized_{};
};

class LayerNormPluginCreator : public IPluginCreatorV3One {
 public:
  LayerNormPluginCreator() {
    declared_.emplace_back("epsilon", nullptr, PluginFieldType::kFLOAT32, 1);
    names_.nbFields = static_cast<int32_t>(declared_.size());
    names_.fields = declared_.data();
  }
  AsciiChar const* getPluginName() const noexcept override { return kLayerNormName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kLayerNormVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return ""; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &names_; }
  IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc,
                          TensorRTPhase /*phase*/) noexcept override {
    std::vector<FieldView> views;
    if (fc != nullptr) {
      for (int32_t i = 0; i < fc->nbFields; ++i) {
        const PluginField& f = fc->fields[i];
        views.push_back(FieldView{f.name, to_view_type(f.type), f.data, f.length});
      }
    }
    LayerNormFields fields;
    std::string error;
    if (!parse_fields(views.data(), static_cast<int32_t>(views.size()), fields, error)) {
      report_error(ErrorCode::kINVALID_ARGUMENT, error);
      return nullptr;
    }
    return new (std::nothrow) LayerNormPlugin(fields);
  }

 private:
  std::vector<PluginField> declared_;
  PluginFieldCollection names_{};
};

// Registration at load time: what makes LD_PRELOAD (or a ctypes load) enough.
struct Registrar {
  Registrar() {
    const int32_t runtime = getInferLibVersion();  // a plain C function: safe to call across majors
    if (runtime / 10000 != NV_TENSORRT_MAJOR) {
      report("not registered: built against TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "." +
             std::to_string(NV_TENSORRT_MINOR) + " headers, but this process runs TensorRT " +
             std::to_string(runtime / 10000) + "." + std::to_string(runtime / 100 % 100) +
             "; rebuild the plugin against that TensorRT (make plugins TENSORRT_ROOT=...)");
      g_status = kOtherMajor;
      return;
    }
    static LayerNormPluginCreator creator;
    IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) {
      report("no plugin registry in this TensorRT");
      g_status = kNoRegistry;
      return;
    }
    if (registry->getCreator(kLayerNormName, kLayerNormVersion, "") != nullptr) {
      g_status = kAlreadyRegistered;  // another copy of this library was loaded first
      return;
    }
    if (!registry->registerCreator(creator, "")) {
      report("could not register the creator");
      g_status = kRegisterFailed;
      return;
    }
    g_status = kRegistered;
    report(std::string("registered ") + kLayerNormName + " v" + kLayerNormVersion + " (TensorRT " +
           std::to_string(runtime / 10000) + "." + std::to_string(runtime / 100 % 100) + "." +
           std::to_string(runtime % 100) + ")");
  }
};
const Registrar registrar;

}  // namespace
}  // namespace segformer

// 1 registered, 2 already registered by another copy, -1 other TensorRT major, -2 no registry, -3 refused.
extern "C" __attribute__((visibility("default"))) int32_t segformer_plugin_registration_status() {
  return segformer::g_status;
}
