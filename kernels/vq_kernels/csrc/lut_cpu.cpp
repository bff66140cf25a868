// CPU LUT kernels for vq_kernels.cpu (built at first use with g++ -O3 -march=native -fopenmp,
// loaded with ctypes; no torch headers so it compiles in about a second).
//
// Layouts (all contiguous, row-major):
//   table T   (R_t, J, K, B) float32   T[rt, j, k, b] = x[b, group(j)] . codeword(rt, j, k)
//   idx       (out, J)       uint8 (K <= 256) or uint16 (K <= 65536); J = n_groups * M
//   y         (out, B)       float32   y[r, b] = sum_j T[r / tile_rows, j, idx[r, j], b]
//   codebooks (R_t, C_t, M, K, d) float32; w (rows, n_groups * d) float32 (dequantize)
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kRowBlock = 32;  // rows per parallel work item

// Sum of T[j, idx[j]] over j in [j0, j1) for one row, B == 1; 8 independent accumulators
// hide the add latency (measured ~2x over one accumulator at 4096x4096).
template <typename C>
inline float gather_row_b1(const float* T, const C* idx, int64_t j0, int64_t j1, int64_t K) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = j0;
  for (; j + 8 <= j1; j += 8) {
    for (int u = 0; u < 8; ++u) a[u] += T[(j + u) * K + idx[j + u]];
  }
  for (; j < j1; ++j) a[0] += T[j * K + idx[j]];
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Same for B columns (B <= 8): 4 accumulator sets over consecutive j.
template <typename C, int B>
inline void gather_row(const float* T, const C* idx, int64_t j0, int64_t j1, int64_t K, float* y) {
  float a[4][B];
  for (int u = 0; u < 4; ++u)
    for (int b = 0; b < B; ++b) a[u][b] = 0.f;
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    for (int u = 0; u < 4; ++u) {
      const float* t = T + ((j + u) * K + idx[j + u]) * B;
      for (int b = 0; b < B; ++b) a[u][b] += t[b];
    }
  }
  for (; j < j1; ++j) {
    const float* t = T + (j * K + idx[j]) * B;
    for (int b = 0; b < B; ++b) a[0][b] += t[b];
  }
  for (int b = 0; b < B; ++b) y[b] += (a[0][b] + a[1][b]) + (a[2][b] + a[3][b]);
}

template <typename C, int B>
void gather_sum(const float* T, const C* idx, float* y, int64_t out, int64_t J, int64_t K,
                int64_t tile_rows, int64_t jchunk, int nthreads) {
  const int64_t rt_stride = J * K * B;
  std::memset(y, 0, sizeof(float) * out * B);
  const int64_t nblocks = (out + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t r0 = blk * kRowBlock, r1 = r0 + kRowBlock < out ? r0 + kRowBlock : out;
    // chunks of j keep the touched part of the table in L2 when it is large (B > 1)
    for (int64_t j0 = 0; j0 < J; j0 += jchunk) {
      const int64_t j1 = j0 + jchunk < J ? j0 + jchunk : J;
      for (int64_t r = r0; r < r1; ++r) {
        const float* Tr = T + (r / tile_rows) * rt_stride;
        if (B == 1) {
          y[r] += gather_row_b1<C>(Tr, idx + r * J, j0, j1, K);
        } else {
          gather_row<C, B>(Tr, idx + r * J, j0, j1, K, y + r * B);
        }
      }
    }
  }
}

template <typename C>
void gather_sum_dispatch(const float* T, const C* idx, float* y, int64_t out, int64_t J, int64_t K,
                         int64_t B, int64_t tile_rows, int64_t jchunk, int nthreads) {
  switch (B) {
    case 1: gather_sum<C, 1>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 2: gather_sum<C, 2>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 3: gather_sum<C, 3>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 4: gather_sum<C, 4>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 5: gather_sum<C, 5>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 6: gather_sum<C, 6>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 7: gather_sum<C, 7>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    case 8: gather_sum<C, 8>(T, idx, y, out, J, K, tile_rows, jchunk, nthreads); break;
    default: break;  // the Python launcher only calls with 1 <= B <= 8
  }
}

// w[r, g*d:(g+1)*d] = scales[r] * sum_m cb[rt(r), ct(g), m, idx[r, g*M + m], :] for r in [r0, r1)
template <typename C>
void dequantize_rows(const C* idx, const float* cb, const float* scales, float* w, int64_t r0, int64_t r1,
                     int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows, int64_t tile_groups,
                     int64_t C_t, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = r0; r < r1; ++r) {
    const float s = scales[r];
    const float* cbr = cb + (r / tile_rows) * C_t * M * K * d;
    float* wr = w + (r - r0) * G * d;
    const C* ir = idx + r * G * M;
    for (int64_t g = 0; g < G; ++g) {
      const float* cbt = cbr + (g / tile_groups) * M * K * d;
      float acc[16];
      const float* c0 = cbt + static_cast<int64_t>(ir[g * M]) * d;
      for (int64_t e = 0; e < d; ++e) acc[e] = c0[e];
      for (int64_t m = 1; m < M; ++m) {
        const float* cm = cbt + (m * K + ir[g * M + m]) * d;
        for (int64_t e = 0; e < d; ++e) acc[e] += cm[e];
      }
      for (int64_t e = 0; e < d; ++e) wr[g * d + e] = acc[e] * s;
    }
  }
}

}  // namespace

extern "C" {

int vq_abi_version() { return 1; }

void vq_gather_sum_u8(const float* T, const uint8_t* idx, float* y, int64_t out, int64_t J, int64_t K,
                      int64_t B, int64_t tile_rows, int64_t jchunk, int nthreads) {
  gather_sum_dispatch<uint8_t>(T, idx, y, out, J, K, B, tile_rows, jchunk, nthreads);
}

void vq_gather_sum_u16(const float* T, const uint16_t* idx, float* y, int64_t out, int64_t J, int64_t K,
                       int64_t B, int64_t tile_rows, int64_t jchunk, int nthreads) {
  gather_sum_dispatch<uint16_t>(T, idx, y, out, J, K, B, tile_rows, jchunk, nthreads);
}

void vq_dequantize_u8(const uint8_t* idx, const float* cb, const float* scales, float* w, int64_t r0,
                      int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                      int64_t tile_groups, int64_t C_t, int nthreads) {
  dequantize_rows<uint8_t>(idx, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, nthreads);
}

void vq_dequantize_u16(const uint16_t* idx, const float* cb, const float* scales, float* w, int64_t r0,
                       int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                       int64_t tile_groups, int64_t C_t, int nthreads) {
  dequantize_rows<uint16_t>(idx, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, nthreads);
}

}  // extern "C"
