// One warp per row: every lane loads its share of the row once (16-byte vectors where the row and pointers allow,
// else scalars), keeps it in registers, and the warp reduces the mean and then the centred sum of squares with
// shuffles (an exact two-level reduction in FP32: no E[x^2] - E[x]^2 cancellation, no FP16 overflow when squaring).
#include "layernorm_kernel.h"

#include <cuda_fp16.h>

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxChannels = 2048;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Packet {
  T v[VEC];
};

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// VEC elements per load (16 bytes for the vector path, 1 for the scalar path); PER_LANE loads per lane at most.
template <typename T, int VEC, int PER_LANE>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
layernorm_rows(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
               T* __restrict__ y, int64_t rows, int channels, float eps) {
  using P = Packet<T, VEC>;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const int packets = channels / VEC;
  const P* xr = reinterpret_cast<const P*>(x + row * channels);
  float v[PER_LANE][VEC];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int p = lane + i * kWarp;
    if (p < packets) {
      const P pk = xr[p];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        v[i][k] = to_float(pk.v[k]);
        sum += v[i][k];
      }
    }
  }
  const float mean = warp_sum(sum) / channels;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    if (lane + i * kWarp < packets) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float d = v[i][k] - mean;
        sq += d * d;
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(sq) / channels + eps);
  const P* g = reinterpret_cast<const P*>(gamma);
  const P* b = reinterpret_cast<const P*>(beta);
  P* yr = reinterpret_cast<P*>(y + row * channels);
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int p = lane + i * kWarp;
    if (p < packets) {
      const P gp = g[p];
      const P bp = b[p];
      P out;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        out.v[k] = from_float<T>((v[i][k] - mean) * rstd * to_float(gp.v[k]) + to_float(bp.v[k]));
      yr[p] = out;
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, int VEC>
cudaError_t launch_vec(const T* x, const T* g, const T* b, T* y, int64_t rows, int c, float eps, cudaStream_t s) {
  const int per_lane = (c / VEC + kWarp - 1) / kWarp;
  const dim3 block(kWarp * kWarpsPerBlock);
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  if (per_lane <= 1) layernorm_rows<T, VEC, 1><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else if (per_lane <= 2) layernorm_rows<T, VEC, 2><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else if (per_lane <= 4) layernorm_rows<T, VEC, 4><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else if (per_lane <= 8) layernorm_rows<T, VEC, 8><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else if (per_lane <= 16) layernorm_rows<T, VEC, 16><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else if (per_lane <= 32) layernorm_rows<T, VEC, 32><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else if (per_lane <= 64) layernorm_rows<T, VEC, 64><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  else return cudaErrorInvalidValue;
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(const void* x, const void* g, const void* b, void* y, int64_t rows, int c, float eps,
                   cudaStream_t s) {
  constexpr int kVec = 16 / sizeof(T);
  const T* xt = static_cast<const T*>(x);
  const T* gt = static_cast<const T*>(g);
  const T* bt = static_cast<const T*>(b);
  T* yt = static_cast<T*>(y);
  const bool vectorised = c % kVec == 0 && aligned16(x) && aligned16(g) && aligned16(b) && aligned16(y);
  if (vectorised) return launch_vec<T, kVec>(xt, gt, bt, yt, rows, c, eps, s);
  return launch_vec<T, 1>(xt, gt, bt, yt, rows, c, eps, s);
}

}  // namespace

extern "C" int segformer_layernorm(const void* x, const void* gamma, const void* beta, void* y, int64_t rows,
                                   int32_t channels, float eps, int32_t dtype, cudaStream_t stream) {
  if (rows < 0 || channels < 1 || channels > kMaxChannels || !(eps > 0.f)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (!x || !gamma || !beta || !y) return cudaErrorInvalidValue;
  if ((rows + kWarpsPerBlock - 1) / kWarpsPerBlock > 0x7fffffff) return cudaErrorInvalidValue;
  switch (dtype) {
    case SEGFORMER_FP32: return launch<float>(x, gamma, beta, y, rows, channels, eps, stream);
    case SEGFORMER_FP16: return launch<__half>(x, gamma, beta, y, rows, channels, eps, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" int32_t segformer_layernorm_max_channels(void) { return kMaxChannels; }
