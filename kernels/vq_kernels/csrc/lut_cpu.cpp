// CPU LUT kernels for vq_kernels.cpu (built at first use with g++ -O3 -march=native -fopenmp,
// loaded with ctypes; no torch headers so it compiles in a few seconds).
//
// Layouts (all contiguous, row-major):
//   x         (B, in)              float32, B <= 8
//   idx       (n_chunks, out, jc)  uint8 (K <= 256) or uint16 (K <= 65536): codes of j = c*jc + jj,
//                                  J = n_groups * M, j = g*M + m; chunk-major so a work item
//                                  streams one contiguous block
//   codebooks (R_t, C_t, M, K, d)  float32 (B > 1);   cbT (R_t, C_t, M, d, K) the same transposed (B == 1)
//   y         (out, B)             float32: y[r, b] = sum_j x[b, g(j)] . codebooks[rt(r), ct(g), m(j), idx[r, j]]
//
// lut_linear cuts the work into items (row tile, chunk of jc consecutive j, block of rows). For
// one item a thread builds the table T[jj, k, :] = x[:, group(j)] . codeword k (jc*K*BS floats,
// BS = B rounded up to 1/2/4/8 so one table entry is one SIMD vector), then adds
// T[jj, idx[r, j], :] into a private accumulator for every row r of the block. Private
// accumulators are summed at the end, so threads never write to a shared cache line.
#include <omp.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

template <int BS>
struct Vec {
  typedef float type __attribute__((vector_size(BS * sizeof(float))));
};

// T[k] = sum_e x[e] * cwT[e, k]  (B == 1; vectorised over k)
template <int D>
inline void table_b1(const float* cwT, const float* xg, float* T, int64_t K, int64_t d) {
  const int64_t dd = D > 0 ? D : d;
  for (int64_t k = 0; k < K; ++k) T[k] = xg[0] * cwT[k];
  for (int64_t e = 1; e < dd; ++e) {
    const float xe = xg[e];
    const float* c = cwT + e * K;
    for (int64_t k = 0; k < K; ++k) T[k] += xe * c[k];
  }
}

// T[k, :] = sum_e cw[k, e] * xv[e]  (B > 1; one SIMD vector of BS batch columns per entry)
template <int BS, int D>
inline void table_bs(const float* cw, const typename Vec<BS>::type* xv, float* T, int64_t K, int64_t d) {
  typedef typename Vec<BS>::type V;
  const int64_t dd = D > 0 ? D : d;
  for (int64_t k = 0; k < K; ++k) {
    V acc = xv[0] * cw[k * dd];
    for (int64_t e = 1; e < dd; ++e) acc += xv[e] * cw[k * dd + e];
    std::memcpy(T + k * BS, &acc, sizeof(V));
  }
}

template <typename C, int BS, int D>
void lut_linear(const float* x, const C* idx, const float* cb, float* y, int64_t B, int64_t out, int64_t in,
                int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows, int64_t tile_groups, int64_t R_t,
                int64_t C_t, int64_t jc, int64_t row_blocks, int nthreads) {
  typedef typename Vec<BS>::type V;
  const int64_t J = G * M;
  const int64_t nchunks = (J + jc - 1) / jc;
  const int64_t items = R_t * nchunks * row_blocks;
  const int64_t block_rows = (tile_rows + row_blocks - 1) / row_blocks;
  if (nthreads < 1) nthreads = 1;
  if (nthreads > items) nthreads = static_cast<int>(items);
  // scratch kept per thread across calls: a fresh 128 KiB+ std::vector is an mmap + page faults
  // each call (measured: kernel 109 -> 69 us for 576x576, B=1)
  static thread_local std::vector<float> part;
  if (part.size() < static_cast<size_t>(nthreads) * out * BS) part.resize(static_cast<size_t>(nthreads) * out * BS);
  std::fill(part.begin(), part.begin() + static_cast<size_t>(nthreads) * out * BS, 0.f);
  float* part_ptr = part.data();
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    float* yp = part_ptr + static_cast<size_t>(tid) * out * BS;
    static thread_local std::vector<float> table;
    if (table.size() < static_cast<size_t>(jc) * K * BS) table.resize(static_cast<size_t>(jc) * K * BS);
    V xv[64];  // d <= 64 (checked by the Python launcher)
    float* T = table.data();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t rt = item / (nchunks * row_blocks);
      const int64_t j0 = (item / row_blocks % nchunks) * jc, rb = item % row_blocks;
      const int64_t j1 = j0 + jc < J ? j0 + jc : J;
      int64_t r0 = rt * tile_rows + rb * block_rows;
      int64_t r1 = r0 + block_rows;
      const int64_t tile_end = (rt + 1) * tile_rows < out ? (rt + 1) * tile_rows : out;
      if (r1 > tile_end) r1 = tile_end;
      if (r0 >= r1) continue;
      // 1. table for j in [j0, j1)
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t g = j / M, m = j % M;
        const float* cw = cb + (((rt * C_t + g / tile_groups) * M + m) * K) * d;  // (K, d) or (d, K)
        float* Tj = T + (j - j0) * K * BS;
        if (BS == 1) {
          table_b1<D>(cw, x + g * d, Tj, K, d);
        } else {
          for (int64_t e = 0; e < d; ++e) {
            float v[BS] = {};
            for (int64_t b = 0; b < B; ++b) v[b] = x[b * in + g * d + e];
            std::memcpy(&xv[e], v, sizeof(V));
          }
          table_bs<BS, D>(cw, xv, Tj, K, d);
        }
      }
      // 2. gather-sum for the rows of this item
      const int64_t n = j1 - j0;
      // (out, jc) block of this chunk; computed once per item (a 64-bit division per row cost
      // 3.3 -> 1.9 ms at 4096x4096, B = 1)
      const C* chunk = idx + (j0 / jc) * out * jc;
      for (int64_t r = r0; r < r1; ++r) {
        const C* ir = chunk + r * jc;
        if (BS == 1) {
          float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 chains hide the add latency
          int64_t jj = 0;
          for (; jj + 8 <= n; jj += 8)
            for (int u = 0; u < 8; ++u) a[u] += T[(jj + u) * K + ir[jj + u]];
          for (; jj < n; ++jj) a[0] += T[jj * K + ir[jj]];
          yp[r] += ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        } else {
          V a0 = {}, a1 = {}, a2 = {}, a3 = {};
          int64_t jj = 0;
          for (; jj + 4 <= n; jj += 4) {
            V t0, t1, t2, t3;
            std::memcpy(&t0, T + ((jj + 0) * K + ir[jj + 0]) * BS, sizeof(V));
            std::memcpy(&t1, T + ((jj + 1) * K + ir[jj + 1]) * BS, sizeof(V));
            std::memcpy(&t2, T + ((jj + 2) * K + ir[jj + 2]) * BS, sizeof(V));
            std::memcpy(&t3, T + ((jj + 3) * K + ir[jj + 3]) * BS, sizeof(V));
            a0 += t0;
            a1 += t1;
            a2 += t2;
            a3 += t3;
          }
          for (; jj < n; ++jj) {
            V t0;
            std::memcpy(&t0, T + (jj * K + ir[jj]) * BS, sizeof(V));
            a0 += t0;
          }
          V acc = (a0 + a1) + (a2 + a3), cur;
          std::memcpy(&cur, yp + r * BS, sizeof(V));
          cur += acc;
          std::memcpy(yp + r * BS, &cur, sizeof(V));
        }
      }
    }
  }
  // y (out, B) = sum over threads of part (out, BS)
  for (int64_t r = 0; r < out; ++r)
    for (int64_t b = 0; b < B; ++b) {
      float s = 0.f;
      for (int t = 0; t < nthreads; ++t) s += part_ptr[(static_cast<size_t>(t) * out + r) * BS + b];
      y[r * B + b] = s;
    }
}

template <typename C, int BS>
void lut_linear_d(const float* x, const C* idx, const float* cb, float* y, int64_t B, int64_t out, int64_t in,
                  int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows, int64_t tile_groups,
                  int64_t R_t, int64_t C_t, int64_t jc, int64_t row_blocks, int nthreads) {
#define VQ_ARGS x, idx, cb, y, B, out, in, G, M, K, d, tile_rows, tile_groups, R_t, C_t, jc, row_blocks, nthreads
  switch (d) {  // compile-time d for the common vector lengths
    case 2: lut_linear<C, BS, 2>(VQ_ARGS); break;
    case 4: lut_linear<C, BS, 4>(VQ_ARGS); break;
    case 8: lut_linear<C, BS, 8>(VQ_ARGS); break;
    default: lut_linear<C, BS, 0>(VQ_ARGS); break;
  }
}

template <typename C>
void lut_linear_dispatch(const float* x, const C* idx, const float* cb, float* y, int64_t B, int64_t out,
                         int64_t in, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                         int64_t tile_groups, int64_t R_t, int64_t C_t, int64_t jc, int64_t row_blocks,
                         int nthreads) {
  if (B == 1) lut_linear_d<C, 1>(VQ_ARGS);
  else if (B == 2) lut_linear_d<C, 2>(VQ_ARGS);
  else if (B <= 4) lut_linear_d<C, 4>(VQ_ARGS);
  else if (B <= 8) lut_linear_d<C, 8>(VQ_ARGS);
#undef VQ_ARGS
}

// w[r - r0, g*d:(g+1)*d] = scales[r] * sum_m cb[rt(r), ct(g), m, idx[r, g*M + m], :] for r in [r0, r1).
// Same order as the reference (m = 0, 1, ..., then the scale), so results are bit-identical.
template <typename C, int D>
void dequantize_rows(const C* idx, const float* cb, const float* scales, float* w, int64_t r0, int64_t r1,
                     int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows, int64_t tile_groups,
                     int64_t C_t, int64_t jc, int64_t out, int nthreads) {
  const int64_t dd = D > 0 ? D : d;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = r0; r < r1; ++r) {
    const float s = scales[r];
    const float* cbr = cb + (r / tile_rows) * C_t * M * K * dd;
    float* wr = w + (r - r0) * G * dd;
    // codes of row r, j = g*M + m: chunk j / jc at idx[(chunk * out + r) * jc + j % jc]
    const C* ic = idx + r * jc;
    int64_t jj = 0;
    auto next_code = [&]() -> int64_t {
      const int64_t c = ic[jj];
      if (++jj == jc) {
        jj = 0;
        ic += out * jc;
      }
      return c;
    };
    for (int64_t g0 = 0, ct = 0; g0 < G; g0 += tile_groups, ++ct) {  // no integer division per group
      const float* cbt = cbr + ct * M * K * dd;
      const int64_t g1 = g0 + tile_groups < G ? g0 + tile_groups : G;
      for (int64_t g = g0; g < g1; ++g) {
        float* __restrict__ out = wr + g * dd;
        const float* __restrict__ c0 = cbt + next_code() * dd;
        if (M == 1) {
          for (int64_t e = 0; e < dd; ++e) out[e] = c0[e] * s;
        } else {
          float acc[D > 0 ? D : 64];
          for (int64_t e = 0; e < dd; ++e) acc[e] = c0[e];
          for (int64_t m = 1; m < M; ++m) {
            const float* __restrict__ cm = cbt + (m * K + next_code()) * dd;
            for (int64_t e = 0; e < dd; ++e) acc[e] += cm[e];
          }
          for (int64_t e = 0; e < dd; ++e) out[e] = acc[e] * s;
        }
      }
    }
  }
}

template <typename C>
void dequantize_dispatch(const C* idx, const float* cb, const float* scales, float* w, int64_t r0, int64_t r1,
                         int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows, int64_t tile_groups,
                         int64_t C_t, int64_t jc, int64_t out, int nthreads) {
#define VQ_DQ(D) \
  dequantize_rows<C, D>(idx, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, jc, out, nthreads)
  switch (d) {
    case 2: VQ_DQ(2); break;
    case 4: VQ_DQ(4); break;
    case 8: VQ_DQ(8); break;
    default: VQ_DQ(0); break;  // d <= 64 (checked by the Python launcher)
  }
#undef VQ_DQ
}

}  // namespace

extern "C" {

int vq_abi_version() { return 1; }

void vq_lut_linear_u8(const float* x, const uint8_t* idx, const float* cb, float* y, int64_t B, int64_t out,
                      int64_t in, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                      int64_t tile_groups, int64_t R_t, int64_t C_t, int64_t jc, int64_t row_blocks,
                      int nthreads) {
  lut_linear_dispatch<uint8_t>(x, idx, cb, y, B, out, in, G, M, K, d, tile_rows, tile_groups, R_t, C_t, jc,
                               row_blocks, nthreads);
}

void vq_lut_linear_u16(const float* x, const uint16_t* idx, const float* cb, float* y, int64_t B, int64_t out,
                       int64_t in, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                       int64_t tile_groups, int64_t R_t, int64_t C_t, int64_t jc, int64_t row_blocks,
                       int nthreads) {
  lut_linear_dispatch<uint16_t>(x, idx, cb, y, B, out, in, G, M, K, d, tile_rows, tile_groups, R_t, C_t, jc,
                                row_blocks, nthreads);
}

void vq_dequantize_u8(const uint8_t* idx, const float* cb, const float* scales, float* w, int64_t r0,
                      int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                      int64_t tile_groups, int64_t C_t, int64_t jc, int64_t out, int nthreads) {
  dequantize_dispatch<uint8_t>(idx, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, jc, out, nthreads);
}

void vq_dequantize_u16(const uint16_t* idx, const float* cb, const float* scales, float* w, int64_t r0,
                      int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                      int64_t tile_groups, int64_t C_t, int64_t jc, int64_t out, int nthreads) {
  dequantize_dispatch<uint16_t>(idx, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, jc, out, nthreads);
}

}  // extern "C"
