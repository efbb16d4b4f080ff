// Test harness: runs SegformerLayerNorm through the plugin interface, as TensorRT's runtime would: the creator from
// TensorRT's registry (found in the process with dlsym), createPlugin in the runtime phase, onShapeChange with
// PluginTensorDescs, then enqueue on a CUDA stream with device buffers. Called from Python (ctypes) by
// tests/plugins/test_layernorm.py to compare against PyTorch's LayerNorm on a GPU.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <initializer_list>

using namespace nvinfer1;

extern "C" __attribute__((visibility("default"))) int32_t segformer_harness_layernorm(
    void const* x, void const* gamma, void const* beta, void* y, int64_t rows, int32_t channels, float eps,
    int32_t fp16, void* stream) {
  auto get_registry = reinterpret_cast<IPluginRegistry* (*)()>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
  if (get_registry == nullptr) return -10;  // no TensorRT runtime in the process
  IPluginCreatorInterface* found = get_registry()->getCreator("SegformerLayerNorm", "1", "");
  if (found == nullptr) return -11;  // the plugin library is not loaded (or refused to register)
  auto* creator = static_cast<IPluginCreatorV3One*>(found);
  PluginField field("epsilon", &eps, PluginFieldType::kFLOAT32, 1);
  PluginFieldCollection fc{1, &field};
  IPluginV3* plugin = creator->createPlugin("layernorm", &fc, TensorRTPhase::kRUNTIME);
  if (plugin == nullptr) return -12;
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  const DataType type = fp16 ? DataType::kHALF : DataType::kFLOAT;
  PluginTensorDesc in[3]{}, out[1]{};
  in[0].dims.nbDims = 2;
  in[0].dims.d[0] = rows;
  in[0].dims.d[1] = channels;
  for (int i = 1; i < 3; ++i) {
    in[i].dims.nbDims = 1;
    in[i].dims.d[0] = channels;
  }
  for (auto* d : {&in[0], &in[1], &in[2], &out[0]}) {
    d->type = type;
    d->format = TensorFormat::kLINEAR;
    d->scale = 1.f;
  }
  out[0].dims = in[0].dims;
  int32_t rc = runtime->onShapeChange(in, 3, out, 1);
  if (rc == 0) {
    void const* inputs[3] = {x, gamma, beta};
    void* outputs[1] = {y};
    rc = runtime->enqueue(in, out, inputs, outputs, nullptr, static_cast<cudaStream_t>(stream));
  }
  delete plugin;
  return rc;
}
