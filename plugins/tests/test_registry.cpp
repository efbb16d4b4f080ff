// The plugin library through TensorRT's own plugin registry (the lean runtime stands in for libnvinfer: a real
// registry that loads without a GPU). Run by ctest:
//   test_registry <libnvinfer_lean.so.10> <libsegformer_plugins.so> <scratch dir>
// Checks: the creator is found by name/version/namespace; createPlugin from a PluginFieldCollection; bad fields
// refused through the registry's error recorder; clone; serialize and re-create; output types and shapes (through
// a small IExprBuilder); supportsFormatCombination for FP32/FP16 linear; getNbOutputs; and a second copy of the
// library (another path) does not register a second creator.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {
int failures = 0;
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

class Recorder : public IErrorRecorder {
 public:
  int32_t getNbErrors() const noexcept override { return static_cast<int32_t>(errors_.size()); }
  ErrorCode getErrorCode(int32_t i) const noexcept override { return codes_.at(i); }
  ErrorDesc getErrorDesc(int32_t i) const noexcept override { return errors_.at(i).c_str(); }
  bool hasOverflowed() const noexcept override { return false; }
  void clear() noexcept override { errors_.clear(); codes_.clear(); }
  bool reportError(ErrorCode code, ErrorDesc desc) noexcept override {
    codes_.push_back(code);
    errors_.emplace_back(desc ? desc : "");
    return true;
  }
  RefCount incRefCount() noexcept override { return ++refs_; }
  RefCount decRefCount() noexcept override { return --refs_; }

 private:
  std::vector<std::string> errors_;
  std::vector<ErrorCode> codes_;
  RefCount refs_ = 0;
};

// Symbolic and constant dimensions for getOutputShapes, as a builder would hand them to a plugin.
class DimImpl : public apiv::VDimensionExpr {
 public:
  DimImpl(bool constant, int64_t value) : constant_(constant), value_(value) {}
  bool isConstant() const override { return constant_; }
  int64_t getConstantValue() const override { return constant_ ? value_ : -1; }
  bool isSizeTensor() const override { return false; }

 private:
  bool constant_;
  int64_t value_;
};
class Dim : public IDimensionExpr {
 public:
  Dim(bool constant, int64_t value) : impl_(constant, value) { mImpl = &impl_; }

 private:
  DimImpl impl_;
};
class BuilderImpl : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t v) override { return keep(new Dim(true, v)); }
  IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override {
    return keep(new Dim(false, -1));
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return keep(new Dim(false, -1));
  }
  ~BuilderImpl() override {
    for (auto* d : owned_) delete d;
  }

 private:
  IDimensionExpr const* keep(Dim* d) {
    owned_.push_back(d);
    return d;
  }
  std::vector<Dim*> owned_;
};
class TestExprBuilder : public IExprBuilder {
 public:
  TestExprBuilder() { mImpl = &impl_; }

 private:
  BuilderImpl impl_;
};

int count_creators(IPluginRegistry* registry, const char* name) {
  int32_t n = 0;
  IPluginCreatorInterface* const* all = registry->getAllCreators(&n);
  int found = 0;
  for (int32_t i = 0; i < n; ++i) {
    auto* c = all[i];
    if (std::string(c->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE" &&
        std::strcmp(static_cast<IPluginCreatorV3One*>(c)->getPluginName(), name) == 0)
      ++found;
  }
  return found;
}

float epsilon_of(IPluginV3* plugin) {
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
  for (int32_t i = 0; fc && i < fc->nbFields; ++i)
    if (std::strcmp(fc->fields[i].name, "epsilon") == 0) return *static_cast<float const*>(fc->fields[i].data);
  return NAN;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: test_registry LEAN_RUNTIME PLUGIN_LIBRARY SCRATCH_DIR\n");
    return 2;
  }
  void* lean = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!lean) {
    std::fprintf(stderr, "cannot load the TensorRT runtime: %s\n", dlerror());
    return 1;
  }
  auto get_registry = reinterpret_cast<IPluginRegistry* (*)()>(dlsym(lean, "getPluginRegistry"));
  auto get_version = reinterpret_cast<int32_t (*)()>(dlsym(lean, "getInferLibVersion"));
  CHECK(get_registry != nullptr && get_version != nullptr);
  if (!get_registry || !get_version) return 1;
  IPluginRegistry* registry = get_registry();
  std::printf("TensorRT runtime %d, headers %d.%d.%d\n", get_version(), NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR,
              NV_TENSORRT_PATCH);
  Recorder recorder;
  registry->setErrorRecorder(&recorder);

  void* lib = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    std::fprintf(stderr, "cannot load the plugin: %s\n", dlerror());
    return 1;
  }
  auto status = reinterpret_cast<int32_t (*)()>(dlsym(lib, "segformer_plugin_registration_status"));
  CHECK(status != nullptr && status() == 1);

  IPluginCreatorInterface* found = registry->getCreator("SegformerLayerNorm", "1", "");
  CHECK(found != nullptr);
  if (!found) return 1;
  CHECK(std::string(found->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
  auto* creator = static_cast<IPluginCreatorV3One*>(found);
  CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);
  PluginFieldCollection const* names = creator->getFieldNames();
  CHECK(names && names->nbFields == 1 && std::strcmp(names->fields[0].name, "epsilon") == 0);

  // create from fields
  float eps = 1e-6f;
  PluginField field("epsilon", &eps, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection fc{1, &field};
  IPluginV3* plugin = creator->createPlugin("ln", &fc, TensorRTPhase::kBUILD);
  CHECK(plugin != nullptr);
  if (!plugin) return 1;
  CHECK(epsilon_of(plugin) == eps);

  // bad fields: refused, reported through TensorRT's error recorder
  const int32_t before = recorder.getNbErrors();
  float negative = -1.f;
  PluginField bad("epsilon", &negative, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection bad_fc{1, &bad};
  CHECK(creator->createPlugin("ln", &bad_fc, TensorRTPhase::kBUILD) == nullptr);
  int32_t wrong_type = 3;
  PluginField typed("epsilon", &wrong_type, PluginFieldType::kINT32, 1);
  PluginFieldCollection typed_fc{1, &typed};
  CHECK(creator->createPlugin("ln", &typed_fc, TensorRTPhase::kBUILD) == nullptr);
  CHECK(recorder.getNbErrors() == before + 2);
  if (recorder.getNbErrors() > before) {
    CHECK(recorder.getErrorCode(before) == ErrorCode::kINVALID_ARGUMENT);
    std::printf("refused as expected: %s\n", recorder.getErrorDesc(before));
  }

  // clone; serialize and re-create (what deserialization does)
  IPluginV3* copy = plugin->clone();
  CHECK(copy != nullptr && epsilon_of(copy) == eps);
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  IPluginV3* again = creator->createPlugin("ln", runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
  CHECK(again != nullptr && epsilon_of(again) == eps);

  // build interface
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  CHECK(build && core && std::strcmp(core->getPluginName(), "SegformerLayerNorm") == 0);
  CHECK(build->getNbOutputs() == 1);
  DataType in_types[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
  DataType out_type = DataType::kFLOAT;
  CHECK(build->getOutputDataTypes(&out_type, 1, in_types, 3) == 0 && out_type == DataType::kHALF);
  TestExprBuilder exprs;
  Dim batch(false, -1), tokens(false, -1), channels(true, 64), one(true, 64);
  DimsExprs x{}, g{}, b{}, out{};
  x.nbDims = 3;
  x.d[0] = &batch;
  x.d[1] = &tokens;
  x.d[2] = &channels;
  g.nbDims = b.nbDims = 1;
  g.d[0] = b.d[0] = &one;
  DimsExprs inputs[3] = {x, g, b};
  CHECK(build->getOutputShapes(inputs, 3, nullptr, 0, &out, 1, exprs) == 0);
  CHECK(out.nbDims == 3 && out.d[0] == &batch && out.d[1] == &tokens && out.d[2]->isConstant() &&
        out.d[2]->getConstantValue() == 64);
  for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
    DynamicPluginTensorDesc io[4]{};
    for (auto& d : io) {
      d.desc.type = t;
      d.desc.format = TensorFormat::kLINEAR;
    }
    for (int pos = 0; pos < 4; ++pos) CHECK(build->supportsFormatCombination(pos, io, 3, 1));
    io[0].desc.format = TensorFormat::kCHW32;
    CHECK(!build->supportsFormatCombination(0, io, 3, 1));
  }
  DynamicPluginTensorDesc mixed[4]{};
  mixed[0].desc.type = DataType::kFLOAT;
  mixed[1].desc.type = DataType::kHALF;
  CHECK(!build->supportsFormatCombination(1, mixed, 3, 1));
  DynamicPluginTensorDesc int8[4]{};
  int8[0].desc.type = DataType::kINT8;
  CHECK(!build->supportsFormatCombination(0, int8, 3, 1));

  // a second copy of the library (another path): loads, registers nothing new
  std::filesystem::path second = std::filesystem::path(argv[3]) / "libsegformer_plugins_copy.so";
  std::filesystem::copy_file(argv[2], second, std::filesystem::copy_options::overwrite_existing);
  void* lib2 = dlopen(second.c_str(), RTLD_NOW | RTLD_LOCAL);
  CHECK(lib2 != nullptr);
  if (lib2) {
    auto status2 = reinterpret_cast<int32_t (*)()>(dlsym(lib2, "segformer_plugin_registration_status"));
    CHECK(status2 != nullptr && status2() == 2);
  }
  CHECK(count_creators(registry, "SegformerLayerNorm") == 1);

  delete plugin;
  delete copy;
  delete again;
  registry->setErrorRecorder(nullptr);
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
