// CPU-side checks of the plugin's field parsing and serialization (no TensorRT, no GPU needed).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "layernorm_fields.h"

using segformer::FieldType;
using segformer::FieldView;
using segformer::LayerNormFields;

static int failures = 0;
#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                       \
    }                                                                   \
  } while (0)

int main() {
  std::string err;
  LayerNormFields f;
  // defaults
  CHECK(segformer::parse_fields(nullptr, 0, f, err) && f.epsilon == 1e-5f);
  // float32 epsilon, plus the ONNX parser's bookkeeping fields
  const float eps = 1e-6f;
  const char ver[] = "1";
  FieldView ok[] = {{"plugin_version", FieldType::kChar, ver, 1}, {"epsilon", FieldType::kFloat32, &eps, 1}};
  CHECK(segformer::parse_fields(ok, 2, f, err) && f.epsilon == 1e-6f);
  // float64 and float16 are converted
  const double eps64 = 2e-5;
  FieldView f64[] = {{"epsilon", FieldType::kFloat64, &eps64, 1}};
  CHECK(segformer::parse_fields(f64, 1, f, err) && std::fabs(f.epsilon - 2e-5f) < 1e-12f);
  const uint16_t half_one_em3 = 0x1419;  // ~1.0e-3 in IEEE half
  FieldView f16[] = {{"epsilon", FieldType::kFloat16, &half_one_em3, 1}};
  CHECK(segformer::parse_fields(f16, 1, f, err) && std::fabs(f.epsilon - 1e-3f) < 1e-6f);
  // round trip through what an engine stores
  LayerNormFields src;
  src.epsilon = 3e-6f;
  auto stored = segformer::fields_to_serialize(src);
  LayerNormFields back;
  CHECK(segformer::parse_fields(stored.data(), static_cast<int32_t>(stored.size()), back, err));
  CHECK(back.epsilon == 3e-6f);
  CHECK(segformer::declared_fields().size() == 1 && std::string(segformer::declared_fields()[0].name) == "epsilon");
  // rejected: unknown name, wrong type, wrong length, non-positive or non-finite epsilon; `f` left unchanged
  f.epsilon = 7e-6f;
  const int32_t one = 1;
  FieldView unknown[] = {{"axis", FieldType::kInt32, &one, 1}};
  CHECK(!segformer::parse_fields(unknown, 1, f, err) && err.find("unknown field 'axis'") != std::string::npos);
  FieldView as_int[] = {{"epsilon", FieldType::kInt32, &one, 1}};
  CHECK(!segformer::parse_fields(as_int, 1, f, err) && err.find("float") != std::string::npos);
  const float two[] = {1e-5f, 1e-6f};
  FieldView as_two[] = {{"epsilon", FieldType::kFloat32, two, 2}};
  CHECK(!segformer::parse_fields(as_two, 1, f, err) && err.find("exactly one") != std::string::npos);
  const float zero = 0.f, inf = INFINITY;
  FieldView as_zero[] = {{"epsilon", FieldType::kFloat32, &zero, 1}};
  FieldView as_inf[] = {{"epsilon", FieldType::kFloat32, &inf, 1}};
  CHECK(!segformer::parse_fields(as_zero, 1, f, err) && !segformer::parse_fields(as_inf, 1, f, err));
  CHECK(f.epsilon == 7e-6f);
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("fields: all checks passed\n");
  return 0;
}
