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
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// Code readers for dequantize_rows: the codes of row r in order j = 0, 1, ..., J-1.
// Byte index (n_chunks, out, jc): chunk j / jc at idx[(chunk * out + r) * jc + j % jc].
template <typename C>
struct ChunkReader {
  const C* ic;
  int64_t jj = 0, jc, step;
  ChunkReader(const C* idx, int64_t r, int64_t jc_, int64_t out) : ic(idx + r * jc_), jc(jc_), step(out * jc_) {}
  int64_t operator()() {
    const int64_t c = ic[jj];
    if (++jj == jc) {
      jj = 0;
      ic += step;
    }
    return c;
  }
};

// 4-bit index (RB, P, 16): code j of row r is nibble j & 1 of byte lane r % 16 of pair j / 2.
struct NibbleReader {
  const uint8_t* ip;
  int64_t j = 0;
  NibbleReader(const uint8_t* idx, int64_t r, int64_t P) : ip(idx + (r / 16) * P * 16 + r % 16) {}
  int64_t operator()() {
    const int64_t c = (ip[(j >> 1) * 16] >> ((j & 1) * 4)) & 15;
    ++j;
    return c;
  }
};

// w[r - r0, g*d:(g+1)*d] = scales[r] * sum_m cb[rt(r), ct(g), m, code(r, g*M + m), :] for r in [r0, r1).
// Same order as the reference (m = 0, 1, ..., then the scale), so results are bit-identical.
// make_reader(r) returns the code reader of row r.
template <int D, typename MakeReader>
void dequantize_rows(MakeReader make_reader, const float* cb, const float* scales, float* w, int64_t r0,
                     int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                     int64_t tile_groups, int64_t C_t, int nthreads) {
  const int64_t dd = D > 0 ? D : d;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = r0; r < r1; ++r) {
    const float s = scales[r];
    const float* cbr = cb + (r / tile_rows) * C_t * M * K * dd;
    float* wr = w + (r - r0) * G * dd;
    auto next_code = make_reader(r);
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

template <typename MakeReader>
void dequantize_dispatch(MakeReader make_reader, const float* cb, const float* scales, float* w, int64_t r0,
                         int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                         int64_t tile_groups, int64_t C_t, int nthreads) {
#define VQ_DQ(D) \
  dequantize_rows<D>(make_reader, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, nthreads)
  switch (d) {
    case 2: VQ_DQ(2); break;
    case 4: VQ_DQ(4); break;
    case 8: VQ_DQ(8); break;
    default: VQ_DQ(0); break;  // d <= 64 (checked by the Python launcher)
  }
#undef VQ_DQ
}

// ---- 4-bit codes (K <= 16): 16-entry tables in registers ---------------------------------------
// idx4 (RB, P, 16) uint8, RB = ceil(out / 16), P = ceil(J / 2): byte `lane` of pair p of row block
//      rb holds code(r = rb*16 + lane, j = 2p) | code(r, 2p + 1) << 4 (padding rows / codes are 0)
// cb   (R_t, C_t, M, K, d) float32, K <= 16
// x (B, in), scales (out,), y (B, out) float32; every row tile holds whole row blocks
//      (R_t == 1 or tile_rows % 16 == 0, checked by the Python launcher).
//
// A table entry T[j, b] = x[b, group(j)] . codeword k, for the 16 codewords k, is one 512-bit
// register; one row block = 16 output rows = one register of accumulators. Per code slot j and
// batch row b, one vpermps with the 16 rows' codes as indices looks the 16 rows' products up in
// T[j, b] and one add accumulates them. Tables are built per row tile for a chunk of JC slots
// (<= 32 KiB, so they stay in L1 while every row block of the tile streams its 4-bit codes).
// Walks the code slots j = g*M + m of a row in order, keeping the group g, the codebook m and the
// codebooks (M, D, 16) of g's column tile in a row tile's transposed codebooks cbT (C_t, M, D, 16)
// up to date without a division per slot.
struct SlotCursor {
  int64_t g, m, gt;  // group, codebook, group within its column tile
  const float* tile;
  int64_t M, tile_groups, book;  // book = D * 16 floats per codebook
  SlotCursor(const float* cbT, int64_t j, int64_t M_, int64_t tile_groups_, int64_t D)
      : g(j / M_), m(j % M_), gt(g % tile_groups_), tile(cbT + (g / tile_groups_) * M_ * D * 16), M(M_),
        tile_groups(tile_groups_), book(D * 16) {}
  const float* codebook() const { return tile + m * book; }  // (D, 16) of slot (g, m)
  void next() {
    if (++m == M) {
      m = 0;
      ++g;
      if (++gt == tile_groups) {
        gt = 0;
        tile += M * book;
      }
    }
  }
};

// cbT (C_t, M, D, 16) <- the row tile's codebooks cbr (C_t, M, K, D), coordinate-major, zero past K
template <int D>
inline void transpose_tile(float* cbT, const float* cbr, int64_t C_t, int64_t M, int64_t K) {
  std::fill(cbT, cbT + C_t * M * D * 16, 0.f);
  for (int64_t t = 0; t < C_t * M; ++t)
    for (int64_t k = 0; k < K; ++k)
      for (int e = 0; e < D; ++e) cbT[(t * D + e) * 16 + k] = cbr[(t * K + k) * D + e];
}

#if defined(__AVX512F__)
constexpr int64_t LUT16_TABLE_FLOATS = 8192;  // 32 KiB of tables per chunk

// a[b] += T[2p, b][code(2p)] + T[2p + 1, b][code(2p + 1)] for one slot pair p, into chains C0, C0 + 1
template <int NB, int NC, int C0>
inline void lut16_pair(__m512 (&a)[NB][NC], const uint8_t* ip, const float* t) {
  const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ip)));
  const __m512i hi = _mm512_srli_epi32(lo, 4);  // vpermps reads the low 4 bits of each index
  for (int b = 0; b < NB; ++b) {
    a[b][C0 % NC] = _mm512_add_ps(a[b][C0 % NC], _mm512_permutexvar_ps(lo, _mm512_loadu_ps(t + b * 16)));
    a[b][(C0 + 1) % NC] =
        _mm512_add_ps(a[b][(C0 + 1) % NC], _mm512_permutexvar_ps(hi, _mm512_loadu_ps(t + (NB + b) * 16)));
  }
}

// acc_out (NB, 16) += sum over the chunk's slot pairs p of T[2p, b][code(2p)] + T[2p + 1, b][code(2p + 1)],
// T: (2 * npairs, NB, 16). Unrolled by two pairs so every chain index is a compile-time constant
// (a runtime index put the accumulators on the stack: 2.2x slower at B = 1).
template <int NB>
inline void lut16_chunk(const uint8_t* ip, const float* T, int64_t npairs, float* acc_out) {
  constexpr int NC = NB == 1 ? 4 : NB == 2 ? 2 : 1;  // chains per batch row (add latency)
  __m512 a[NB][NC];
  for (int b = 0; b < NB; ++b)
    for (int c = 0; c < NC; ++c) a[b][c] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 2 <= npairs; p += 2) {
    lut16_pair<NB, NC, 0>(a, ip + p * 16, T + p * 2 * NB * 16);
    lut16_pair<NB, NC, 2>(a, ip + (p + 1) * 16, T + (p + 1) * 2 * NB * 16);
  }
  if (p < npairs) lut16_pair<NB, NC, 0>(a, ip + p * 16, T + p * 2 * NB * 16);
  for (int b = 0; b < NB; ++b) {
    __m512 s = _mm512_loadu_ps(acc_out + b * 16);
    for (int c = 0; c < NC; ++c) s = _mm512_add_ps(s, a[b][c]);
    _mm512_storeu_ps(acc_out + b * 16, s);
  }
}

// T[jj, b] for slots j0 + jj, jj < n (n even; a slot past J gets a zero table), batch rows b0..b0+NB.
// cbT: the row tile's codebooks (C_t, M, D, 16), coordinate-major, zero past K.
template <int D, int NB>
inline void lut16_tables(const float* x, const float* cbT, float* T, int64_t b0, int64_t in, int64_t j0,
                         int64_t n, int64_t J, int64_t M, int64_t tile_groups) {
  SlotCursor s(cbT, j0, M, tile_groups, D);
  for (int64_t jj = 0; jj < n; ++jj) {
    float* t = T + jj * NB * 16;
    if (j0 + jj >= J) {
      for (int b = 0; b < NB; ++b) _mm512_storeu_ps(t + b * 16, _mm512_setzero_ps());
      continue;
    }
    __m512 cr[D];
    for (int e = 0; e < D; ++e) cr[e] = _mm512_loadu_ps(s.codebook() + e * 16);
    for (int b = 0; b < NB; ++b) {
      const float* xg = x + (b0 + b) * in + s.g * D;
      __m512 v = _mm512_mul_ps(cr[0], _mm512_set1_ps(xg[0]));
      for (int e = 1; e < D; ++e) v = _mm512_fmadd_ps(cr[e], _mm512_set1_ps(xg[e]), v);
      _mm512_storeu_ps(t + b * 16, v);
    }
    s.next();
  }
}

// Row tiles of a single row block (GPTVQ-style 16-row tiles) would pay a table per 16 rows; there
// the codebook registers are used directly: per slot, one vpermps per coordinate turns the 16
// rows' codes into their weights w[16 rows, e], and an FMA with the broadcast x[b, g*D + e] adds
// them into batch row b. Chains as in lut16_chunk.
template <int D, int NB, int R, int NC, int H>
inline void direct_slot(__m512 (&a)[R][NB][NC], const __m512i (&ix)[R], const float* c, const float* x, int64_t in) {
  for (int e = 0; e < D; ++e) {
    const __m512 cb = _mm512_loadu_ps(c + e * 16);
    __m512 w[R];
    for (int r = 0; r < R; ++r) w[r] = _mm512_permutexvar_ps(ix[r], cb);
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_set1_ps(x[b * in + e]);  // one broadcast feeds the R row blocks
      for (int r = 0; r < R; ++r) a[r][b][(H * D + e) % NC] = _mm512_fmadd_ps(w[r], xv, a[r][b][(H * D + e) % NC]);
    }
  }
}

// R row blocks (rows r0 .. r0 + 16R - 1, codes `stride` bytes apart), batch rows [b0, b0 + NB),
// codebooks cbT (C_t, M, D, 16). Two blocks share each broadcast of x: at B = 8 the loop is then
// bound by the FMAs rather than by loads.
template <int D, int NB, int R>
void lut16_direct(const float* x, const uint8_t* ip, int64_t stride, const float* cbT, const float* scales, float* y,
                  int64_t b0, int64_t out, int64_t in, int64_t J, int64_t M, int64_t tile_groups, int64_t r0) {
  constexpr int NC = R == 1 ? (NB == 1 ? (2 * D < 8 ? 2 * D : 8) : NB == 2 ? 4 : 2) : (NB == 1 ? D : NB == 2 ? 2 : 1);
  __m512 a[R][NB][NC];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b)
      for (int c = 0; c < NC; ++c) a[r][b][c] = _mm512_setzero_ps();
  const float* xb = x + b0 * in;
  SlotCursor s(cbT, 0, M, tile_groups, D);
  __m512i lo[R], hi[R];
  for (int64_t j = 0; j < J; j += 2) {
    for (int r = 0; r < R; ++r) {
      lo[r] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ip + r * stride + j * 8)));
      hi[r] = _mm512_srli_epi32(lo[r], 4);
    }
    direct_slot<D, NB, R, NC, 0>(a, lo, s.codebook(), xb + s.g * D, in);
    s.next();
    if (j + 1 < J) {
      direct_slot<D, NB, R, NC, 1>(a, hi, s.codebook(), xb + s.g * D, in);
      s.next();
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t rr = r0 + 16 * r, n = out - rr < 16 ? out - rr : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 s = _mm512_maskz_loadu_ps(mask, scales + rr);
    for (int b = 0; b < NB; ++b) {
      __m512 t = a[r][b][0];
      for (int k = 1; k < NC; ++k) t = _mm512_add_ps(t, a[r][b][k]);
      _mm512_mask_storeu_ps(y + (b0 + b) * out + rr, mask, _mm512_mul_ps(t, s));
    }
  }
}

// Row blocks [rb0, rb1) of one row tile (codebooks cbT), batch rows [b0, b0 + NB).
template <int D, int NB>
void lut16_rows(const float* x, const uint8_t* idx, const float* cbT, const float* scales, float* y, float* T,
                float* acc, int64_t rb0, int64_t rb1, int64_t b0, int64_t out, int64_t in, int64_t J, int64_t M,
                int64_t tile_groups) {
  const int64_t P = (J + 1) / 2, stride = P * 16, nblk = rb1 - rb0;
  const int64_t pairs_per_chunk = LUT16_TABLE_FLOATS / (2 * NB * 16);
  std::fill(acc, acc + nblk * NB * 16, 0.f);
  for (int64_t p0 = 0; p0 < P; p0 += pairs_per_chunk) {
    const int64_t np = p0 + pairs_per_chunk < P ? pairs_per_chunk : P - p0;
    lut16_tables<D, NB>(x, cbT, T, b0, in, 2 * p0, 2 * np, J, M, tile_groups);
    for (int64_t rb = rb0; rb < rb1; ++rb)
      lut16_chunk<NB>(idx + rb * stride + p0 * 16, T, np, acc + (rb - rb0) * NB * 16);
  }
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    const int64_t r0 = rb * 16, n = out - r0 < 16 ? out - r0 : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    const __m512 s = _mm512_maskz_loadu_ps(mask, scales + r0);
    for (int b = 0; b < NB; ++b)
      _mm512_mask_storeu_ps(y + (b0 + b) * out + r0, mask,
                            _mm512_mul_ps(_mm512_loadu_ps(acc + ((rb - rb0) * NB + b) * 16), s));
  }
}

// Each thread takes a contiguous range of row blocks and walks the row tiles it touches: codebooks
// of the tile transposed once, then batch tiles of up to 8 rows.
template <int D>
void lut16_linear(const float* x, const uint8_t* idx, const float* cb, const float* scales, float* y, int64_t B,
                  int64_t out, int64_t in, int64_t G, int64_t M, int64_t K, int64_t tile_rows, int64_t tile_groups,
                  int64_t C_t, int nthreads) {
  const int64_t J = G * M, RB = (out + 15) / 16;
  const int64_t tile_blocks = tile_rows >= out ? RB : tile_rows / 16;  // row blocks per codebook row tile
  if (nthreads > RB) nthreads = static_cast<int>(RB);
#pragma omp parallel num_threads(nthreads)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t lo = RB * tid / nt, hi = RB * (tid + 1) / nt;
    static thread_local std::vector<float> cbT, T, acc;
    cbT.resize(static_cast<size_t>(C_t * M * D * 16));
    T.resize(LUT16_TABLE_FLOATS);
    acc.resize(static_cast<size_t>((hi - lo) * 2 * 16 + 16));
    for (int64_t rb0 = lo; rb0 < hi;) {
      const int64_t rt = rb0 / tile_blocks;
      const int64_t rb1 = (rt + 1) * tile_blocks < hi ? (rt + 1) * tile_blocks : hi;
      transpose_tile<D>(cbT.data(), cb + rt * C_t * M * K * D, C_t, M, K);
      // batch tiles of up to 8 rows (the codes of a block stay in cache across tiles). Tables pay
      // off for 1-2 batch rows over several row blocks (4096x4096, one codebook, B = 1: 0.37 vs
      // 0.55 ms); otherwise the codebook registers are used directly (B = 8: 1.99 vs 2.06 ms, and
      // 132 vs 243 us at 576x1536 with 32-row tiles)
      for (int64_t b0 = 0; b0 < B; b0 += 8) {
        const int64_t nb = B - b0 < 8 ? B - b0 : 8;
        if (nb <= 2 && tile_blocks >= 2) {
#define VQ_ROWS(NB) \
  lut16_rows<D, NB>(x, idx, cbT.data(), scales, y, T.data(), acc.data(), rb0, rb1, b0, out, in, J, M, tile_groups)
          if (nb == 1) VQ_ROWS(1);
          else VQ_ROWS(2);
#undef VQ_ROWS
          continue;
        }
        const int64_t stride = (J + 1) / 2 * 16;
        for (int64_t rb = rb0; rb < rb1;) {
          const uint8_t* ip = idx + rb * stride;
#define VQ_ROWS(NB, R) \
  lut16_direct<D, NB, R>(x, ip, stride, cbT.data(), scales, y, b0, out, in, J, M, tile_groups, rb * 16)
#define VQ_ROWS_R(R)            \
  switch (nb) {                 \
    case 1: VQ_ROWS(1, R); break; \
    case 2: VQ_ROWS(2, R); break; \
    case 3: VQ_ROWS(3, R); break; \
    case 4: VQ_ROWS(4, R); break; \
    case 5: VQ_ROWS(5, R); break; \
    case 6: VQ_ROWS(6, R); break; \
    case 7: VQ_ROWS(7, R); break; \
    default: VQ_ROWS(8, R); break; \
  }
          if (rb + 1 < rb1) {
            VQ_ROWS_R(2)
            rb += 2;
          } else {
            VQ_ROWS_R(1)
            rb += 1;
          }
#undef VQ_ROWS_R
#undef VQ_ROWS
        }
      }
      rb0 = rb1;
    }
  }
}
// wt (in, n_cols), columns c = (rb - rb0) * 16 + lane for row blocks [rb0, rb1): the dense weight
// transposed, W[r, i] = scales[r] * sum_m cb[rt, ct, m, code(r, g*M + m), e] (i = g*D + e; the
// reference's order, so bit-identical), rows past `out` 0. One vpermps per 16 weights, stored
// contiguously: the GEMM path multiplies x by these blocks.
template <int D>
void dequantize_u4t(const uint8_t* idx, const float* cb, const float* scales, float* wt, int64_t rb0, int64_t rb1,
                    int64_t n_cols, int64_t out, int64_t G, int64_t M, int64_t K, int64_t tile_rows,
                    int64_t tile_groups, int64_t C_t, int nthreads) {
  const int64_t J = G * M, stride = (J + 1) / 2 * 16, RB = (out + 15) / 16;
  const int64_t tile_blocks = tile_rows >= out ? RB : tile_rows / 16;
#pragma omp parallel num_threads(nthreads)
  {
    static thread_local std::vector<float> cbT;
    cbT.resize(static_cast<size_t>(C_t * M * D * 16));
    int64_t cur_rt = -1;
#pragma omp for schedule(static)
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      if (rb / tile_blocks != cur_rt) {
        cur_rt = rb / tile_blocks;
        transpose_tile<D>(cbT.data(), cb + cur_rt * C_t * M * K * D, C_t, M, K);
      }
      const int64_t n = out - rb * 16 < 16 ? out - rb * 16 : 16;
      const __m512 s = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), scales + rb * 16);
      const uint8_t* ip = idx + rb * stride;
      float* col = wt + (rb - rb0) * 16;
      __m512 acc[D];
      SlotCursor slot(cbT.data(), 0, M, tile_groups, D);
      for (int64_t j = 0; j < J; ++j) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ip + (j >> 1) * 16)));
        if (j & 1) v = _mm512_srli_epi32(v, 4);
        for (int e = 0; e < D; ++e) {
          const __m512 w = _mm512_permutexvar_ps(v, _mm512_loadu_ps(slot.codebook() + e * 16));
          acc[e] = slot.m == 0 ? w : _mm512_add_ps(acc[e], w);
        }
        if (slot.m == M - 1)  // last codebook of group g: the weight is complete
          for (int e = 0; e < D; ++e) _mm512_storeu_ps(col + (slot.g * D + e) * n_cols, _mm512_mul_ps(acc[e], s));
        slot.next();
      }
    }
  }
}
#else
// portable fallback (no AVX-512): the same arithmetic one output at a time
template <int D>
void lut16_linear(const float* x, const uint8_t* idx, const float* cb, const float* scales, float* y, int64_t B,
                  int64_t out, int64_t in, int64_t G, int64_t M, int64_t K, int64_t tile_rows, int64_t tile_groups,
                  int64_t C_t, int nthreads) {
  const int64_t J = G * M, P = (J + 1) / 2;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < out; ++r)
    for (int64_t b = 0; b < B; ++b) {
      NibbleReader next_code(idx, r, P);
      const float* cbr = cb + (r / tile_rows) * C_t * M * K * D;
      float a = 0.f;
      for (int64_t j = 0; j < J; ++j) {
        const int64_t g = j / M, code = next_code();
        const float* cw = cbr + (((g / tile_groups) * M + j % M) * K + code) * D;
        for (int e = 0; e < D; ++e) a += cw[e] * x[b * in + g * D + e];
      }
      y[b * out + r] = a * scales[r];
    }
}
#endif

}  // namespace

extern "C" {

int vq_abi_version() { return 2; }

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
  auto make = [=](int64_t r) { return ChunkReader<uint8_t>(idx, r, jc, out); };
  dequantize_dispatch(make, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, nthreads);
}

void vq_dequantize_u16(const uint16_t* idx, const float* cb, const float* scales, float* w, int64_t r0,
                       int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                       int64_t tile_groups, int64_t C_t, int64_t jc, int64_t out, int nthreads) {
  auto make = [=](int64_t r) { return ChunkReader<uint16_t>(idx, r, jc, out); };
  dequantize_dispatch(make, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, nthreads);
}

void vq_dequantize_u4(const uint8_t* idx, const float* cb, const float* scales, float* w, int64_t r0,
                      int64_t r1, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                      int64_t tile_groups, int64_t C_t, int nthreads) {
  const int64_t P = (G * M + 1) / 2;
  auto make = [=](int64_t r) { return NibbleReader(idx, r, P); };
  dequantize_dispatch(make, cb, scales, w, r0, r1, G, M, K, d, tile_rows, tile_groups, C_t, nthreads);
}

// W^T blocks for the 4-bit index (see dequantize_u4t); AVX-512 only: returns 0 without doing
// anything when the library was built without it (vq_lut16_vectorised() == 0)
int vq_dequantize_u4t(const uint8_t* idx, const float* cb, const float* scales, float* wt, int64_t rb0, int64_t rb1,
                      int64_t n_cols, int64_t out, int64_t G, int64_t M, int64_t K, int64_t d, int64_t tile_rows,
                      int64_t tile_groups, int64_t C_t, int nthreads) {
#if defined(__AVX512F__)
#define VQ_DQT(D) dequantize_u4t<D>(idx, cb, scales, wt, rb0, rb1, n_cols, out, G, M, K, tile_rows, tile_groups, C_t, nthreads)
  switch (d) {
    case 1: VQ_DQT(1); return 1;
    case 2: VQ_DQT(2); return 1;
    case 4: VQ_DQT(4); return 1;
    case 8: VQ_DQT(8); return 1;
    default: return 0;
  }
#undef VQ_DQT
#else
  return 0;
#endif
}

// 1 if the 4-bit kernel runs with AVX-512 here (else it runs its portable scalar loop)
int vq_lut16_vectorised() {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}

// y (B, out) = x (B, in) @ W^T for the 4-bit index. dims: out, in, G, M, K, d, tile_rows,
// tile_groups, C_t (one array: a ctypes call costs ~0.15 us per argument); d in {1, 2, 4, 8}
// (checked by the launcher)
void vq_lut16_linear(const float* x, const uint8_t* idx, const float* cb, const float* scales, float* y,
                     int64_t B, const int64_t* dims, int nthreads) {
  const int64_t out = dims[0], in = dims[1], G = dims[2], M = dims[3], K = dims[4], d = dims[5];
  const int64_t tile_rows = dims[6], tile_groups = dims[7], C_t = dims[8];
#define VQ_L16(D) lut16_linear<D>(x, idx, cb, scales, y, B, out, in, G, M, K, tile_rows, tile_groups, C_t, nthreads)
  switch (d) {
    case 1: VQ_L16(1); break;
    case 2: VQ_L16(2); break;
    case 4: VQ_L16(4); break;
    case 8: VQ_L16(8); break;
    default: break;
  }
#undef VQ_L16
}

}  // extern "C"
