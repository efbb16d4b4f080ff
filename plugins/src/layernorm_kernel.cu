// A group of lanes per row (a whole warp for long rows, 4-16 lanes for short ones): every lane loads its share of
// the row once (16-byte vectors where the row and pointers allow, else scalars), keeps it in registers, and the
// group reduces the mean and then the centred sum of squares with shuffles (an exact two-level reduction in FP32:
// no E[x^2] - E[x]^2 cancellation, no FP16 overflow when squaring).
#include "layernorm_kernel.h"

#include <cuda_fp16.h>

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxChannels = 2048;

// Sum over the LANES lanes of one row (LANES a power of two <= 32: xor offsets below LANES stay in the group).
template <int LANES>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
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

// VEC elements per load (16 bytes for the vector path, 1 for the scalar path); a row is handled by LANES lanes
// (32 / LANES rows per warp, so short rows such as C = 32 in FP16 still keep every lane busy), each doing at most
// PER_LANE loads. Lanes whose row is past the end compute on nothing but still take part in the shuffles.
template <typename T, int VEC, int PER_LANE, int LANES>
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
layernorm_rows(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
               T* __restrict__ y, int64_t rows, int channels, float eps) {
  using P = Packet<T, VEC>;
  constexpr int kRowsPerWarp = kWarp / LANES;
  const int lane = threadIdx.x % LANES;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * kRowsPerWarp +
                      (threadIdx.x % kWarp) / LANES;
  const bool valid = row < rows;
  const int packets = valid ? channels / VEC : 0;
  const P* xr = reinterpret_cast<const P*>(x + (valid ? row : 0) * channels);
  float v[PER_LANE][VEC];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int p = lane + i * LANES;
    if (p < packets) {
      const P pk = xr[p];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        v[i][k] = to_float(pk.v[k]);
        sum += v[i][k];
      }
    }
  }
  const float mean = group_sum<LANES>(sum) / channels;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    if (lane + i * LANES < packets) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float d = v[i][k] - mean;
        sq += d * d;
      }
    }
  }
  const float rstd = rsqrtf(group_sum<LANES>(sq) / channels + eps);
  const P* g = reinterpret_cast<const P*>(gamma);
  const P* b = reinterpret_cast<const P*>(beta);
  P* yr = reinterpret_cast<P*>(y + (valid ? row : 0) * channels);
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int p = lane + i * LANES;
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

template <typename T, int VEC, int PER_LANE, int LANES>
cudaError_t launch_rows(const T* x, const T* g, const T* b, T* y, int64_t rows, int c, float eps, cudaStream_t s) {
  constexpr int64_t kRowsPerBlock = kWarpsPerBlock * (kWarp / LANES);
  const dim3 block(kWarp * kWarpsPerBlock);
  const dim3 grid(static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
  layernorm_rows<T, VEC, PER_LANE, LANES><<<grid, block, 0, s>>>(x, g, b, y, rows, c, eps);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t launch_vec(const T* x, const T* g, const T* b, T* y, int64_t rows, int c, float eps, cudaStream_t s) {
  const int packets = c / VEC;
  if (packets <= 4) return launch_rows<T, VEC, 1, 4>(x, g, b, y, rows, c, eps, s);
  if (packets <= 8) return launch_rows<T, VEC, 1, 8>(x, g, b, y, rows, c, eps, s);
  if (packets <= 16) return launch_rows<T, VEC, 1, 16>(x, g, b, y, rows, c, eps, s);
  const int per_lane = (packets + kWarp - 1) / kWarp;
  if (per_lane <= 1) return launch_rows<T, VEC, 1, 32>(x, g, b, y, rows, c, eps, s);
  if (per_lane <= 2) return launch_rows<T, VEC, 2, 32>(x, g, b, y, rows, c, eps, s);
  if (per_lane <= 4) return launch_rows<T, VEC, 4, 32>(x, g, b, y, rows, c, eps, s);
  if (per_lane <= 8) return launch_rows<T, VEC, 8, 32>(x, g, b, y, rows, c, eps, s);
  if (per_lane <= 16) return launch_rows<T, VEC, 16, 32>(x, g, b, y, rows, c, eps, s);
  if (per_lane <= 32) return launch_rows<T, VEC, 32, 32>(x, g, b, y, rows, c, eps, s);
  if (per_lane <= 64) return launch_rows<T, VEC, 64, 32>(x, g, b, y, rows, c, eps, s);
  return cudaErrorInvalidValue;
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
  if ((rows + kWarpsPerBlock - 1) / kWarpsPerBlock > 0x7fffffff) return cudaErrorInvalidValue;  // grid.x limit
  switch (dtype) {
    case SEGFORMER_FP32: return launch<float>(x, gamma, beta, y, rows, channels, eps, stream);
    case SEGFORMER_FP16: return launch<__half>(x, gamma, beta, y, rows, channels, eps, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" int32_t segformer_layernorm_max_channels(void) { return kMaxChannels; }
