#include "layernorm_fields.h"

#include <cmath>
#include <cstring>

namespace segformer {
namespace {

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  float value;
  if (exp == 0) {
    value = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    value = mant ? NAN : INFINITY;
  } else {
    value = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -value : value;
}

bool read_epsilon(const FieldView& f, float& eps, std::string& error) {
  if (f.length != 1 || f.data == nullptr) {
    error = "SegformerLayerNorm field 'epsilon' must hold exactly one value, got " + std::to_string(f.length);
    return false;
  }
  switch (f.type) {
    case FieldType::kFloat32: std::memcpy(&eps, f.data, sizeof(float)); break;
    case FieldType::kFloat64: {
      double d;
      std::memcpy(&d, f.data, sizeof(double));
      eps = static_cast<float>(d);
      break;
    }
    case FieldType::kFloat16: {
      uint16_t h;
      std::memcpy(&h, f.data, sizeof(h));
      eps = half_to_float(h);
      break;
    }
    default:
      error = "SegformerLayerNorm field 'epsilon' must be a float (float32), not an integer or string";
      return false;
  }
  if (!std::isfinite(eps) || eps <= 0.f) {
    error = "SegformerLayerNorm field 'epsilon' must be finite and > 0, got " + std::to_string(eps);
    return false;
  }
  return true;
}

}  // namespace

bool parse_fields(const FieldView* fields, int32_t count, LayerNormFields& out, std::string& error) {
  LayerNormFields parsed;
  if (count < 0 || (count > 0 && fields == nullptr)) {
    error = "SegformerLayerNorm: invalid field collection";
    return false;
  }
  for (int32_t i = 0; i < count; ++i) {
    const FieldView& f = fields[i];
    const std::string name = f.name ? f.name : "";
    if (name == "epsilon") {
      if (!read_epsilon(f, parsed.epsilon, error)) return false;
    } else if (name == "plugin_version" || name == "plugin_namespace") {
      continue;
    } else {
      error = "SegformerLayerNorm: unknown field '" + name + "' (known: epsilon)";
      return false;
    }
  }
  out = parsed;
  return true;
}

std::vector<FieldView> fields_to_serialize(const LayerNormFields& fields) {
  return {FieldView{"epsilon", FieldType::kFloat32, &fields.epsilon, 1}};
}

std::vector<FieldView> declared_fields() { return {FieldView{"epsilon", FieldType::kFloat32, nullptr, 1}}; }

}  // namespace segformer
