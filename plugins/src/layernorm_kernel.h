// LayerNorm over the last dimension for SegFormer: FP32 or FP16 I/O, FP32 accumulation, one read of the input.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum SegformerDType { SEGFORMER_FP32 = 0, SEGFORMER_FP16 = 1 };

// y[r, :] = (x[r, :] - mean_r) / sqrt(var_r + eps) * gamma + beta for every row r < rows.
// x, y: [rows, channels]; gamma, beta: [channels], all of `dtype`. Channels 1..2048 (SegFormer uses 32..512).
// Returns a cudaError_t value (0 on success); invalid arguments give cudaErrorInvalidValue.
int segformer_layernorm(const void* x, const void* gamma, const void* beta, void* y, int64_t rows,
                        int32_t channels, float eps, int32_t dtype, cudaStream_t stream);

// The largest channel count the kernels take.
int32_t segformer_layernorm_max_channels(void);

#ifdef __cplusplus
}
#endif
