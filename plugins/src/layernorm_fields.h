// The plugin's fields (its ONNX attributes and what an engine stores), parsed and written without TensorRT so
// that the rules are unit-tested on any machine. The TensorRT plugin adapts PluginField <-> FieldView.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace segformer {

constexpr char kLayerNormName[] = "SegformerLayerNorm";  // the ONNX op type the graph pass writes
constexpr char kLayerNormVersion[] = "1";

enum class FieldType { kFloat32, kFloat16, kFloat64, kInt8, kInt16, kInt32, kInt64, kChar, kOther };

struct FieldView {
  const char* name;
  FieldType type;
  const void* data;
  int32_t length;
};

struct LayerNormFields {
  float epsilon = 1e-5f;
};

// Reads the fields a creator is given. Known: "epsilon" (one float32, or float64/float16 converted; finite, > 0).
// "plugin_version"/"plugin_namespace" (ONNX parser bookkeeping) are ignored. Anything else is an error, written to
// `error` with what was expected. Missing epsilon keeps the default 1e-5.
bool parse_fields(const FieldView* fields, int32_t count, LayerNormFields& out, std::string& error);

// The fields an engine stores for this plugin (views into `fields`, valid while it lives).
std::vector<FieldView> fields_to_serialize(const LayerNormFields& fields);

// The field names a creator declares.
std::vector<FieldView> declared_fields();

}  // namespace segformer
