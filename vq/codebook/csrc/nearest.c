/* Fused nearest-centroid search for the CPU: distance + argmin in registers, no n x k matrix.
 *
 * dist(i, j) = sum_l w_il (x_il - c_jl)^2 is computed as
 *     sum_l w_il c_jl^2 - 2 sum_l w_il x_il c_jl        (+ sum_l w_il x_il^2 added at the end)
 * with w = 1 and sum_l c_jl^2 precomputed when there are no weights.
 *
 * Micro-kernel: TILE_P points x VL centroids held in vector registers across the whole d loop
 * (GCC/Clang vector extensions, so it builds for AVX-512, AVX2 or NEON alike); a running
 * per-lane minimum and its index stay in registers too. Centroids come transposed and padded,
 * (d, kp) with kp % VL == 0, padding columns having a huge norm so they never win.
 * Ties resolve to the smallest index, like torch.argmin. Built by vq/codebook/_native.py.
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#define VL 16
#define TILE_P 6
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

static inline vf loadv(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

static void finish(vf bv, vi bi, float row_const, int64_t *idx, float *dist) {
    float best = FLT_MAX;
    int32_t arg = 0x7fffffff;
    for (int t = 0; t < VL; t++)
        if (bv[t] < best || (bv[t] == best && bi[t] < arg)) { best = bv[t]; arg = bi[t]; }
    float v = best + row_const;
    *idx = arg;
    *dist = v > 0.0f ? v : 0.0f;
}

/* x: (n, d); w: (n, d) or NULL; ct: (d, kp); ct2: (d, kp) squares (weighted only);
 * cn: (kp) squared norms (unweighted only). */
void vq_nearest(const float *x, const float *w, const float *ct, const float *ct2, const float *cn,
                int64_t n, int64_t d, int64_t kp, int64_t *idx, float *dist) {
    vi iota;
    for (int t = 0; t < VL; t++) iota[t] = t;
    /* per-point coefficients, computed once per tile: a = -2 w x, b = w (C99 VLA, 8 d floats) */
    float a[TILE_P][d], b[TILE_P][d];
    for (int64_t i0 = 0; i0 < n; i0 += TILE_P) {
        int np = n - i0 < TILE_P ? (int)(n - i0) : TILE_P;
        for (int p = 0; p < TILE_P; p++)
            for (int64_t l = 0; l < d; l++) {
                float xi = p < np ? x[(i0 + p) * d + l] : 0.0f;
                float wi = (w && p < np) ? w[(i0 + p) * d + l] : 1.0f;
                a[p][l] = -2.0f * wi * xi;
                b[p][l] = wi;
            }
        vf bv[TILE_P];
        vi bi[TILE_P];
        for (int p = 0; p < TILE_P; p++) { bv[p] = (vf){} + FLT_MAX; bi[p] = (vi){}; }
        for (int64_t j0 = 0; j0 < kp; j0 += VL) {
            vf r[TILE_P];
            if (w == 0) {
                vf c0 = loadv(cn + j0);
                for (int p = 0; p < TILE_P; p++) r[p] = c0;
                for (int64_t l = 0; l < d; l++) {
                    vf c = loadv(ct + l * kp + j0);
                    for (int p = 0; p < TILE_P; p++) r[p] += a[p][l] * c;
                }
            } else {
                for (int p = 0; p < TILE_P; p++) r[p] = (vf){};
                for (int64_t l = 0; l < d; l++) {
                    vf c = loadv(ct + l * kp + j0);
                    vf c2 = loadv(ct2 + l * kp + j0);
                    for (int p = 0; p < TILE_P; p++) r[p] += b[p][l] * c2 + a[p][l] * c;
                }
            }
            vi jv = iota + (int32_t)j0;
            for (int p = 0; p < TILE_P; p++) {
                vi m = r[p] < bv[p];
                bv[p] = (vf)(((vi)r[p] & m) | ((vi)bv[p] & ~m)); /* select, bitwise */
                bi[p] = (jv & m) | (bi[p] & ~m);
            }
        }
        for (int p = 0; p < np; p++) {
            const float *xi = x + (i0 + p) * d;
            float rc = 0.0f;
            for (int64_t l = 0; l < d; l++) rc += (w ? w[(i0 + p) * d + l] : 1.0f) * xi[l] * xi[l];
            finish(bv[p], bi[p], rc, idx + i0 + p, dist + i0 + p);
        }
    }
}

/* One k-means++ step (Arthur & Vassilvitskii 2007), single-threaded:
 *   closest[i] = min(closest[i], sum_l w_il (x_il - c_l)^2)      (w = 1 when NULL)
 * and return sum_i closest[i] * roww[i] (roww = 1 when NULL), the D^2 sampling mass. */
double vq_kpp_update(const float *x, const float *w, const float *c, const float *roww,
                     float *closest, int64_t n, int64_t d) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        float s = 0.0f;
        if (w) {
            const float *wi = w + i * d;
            for (int64_t l = 0; l < d; l++) { float t = xi[l] - c[l]; s += wi[l] * t * t; }
        } else {
            for (int64_t l = 0; l < d; l++) { float t = xi[l] - c[l]; s += t * t; }
        }
        float v = s < closest[i] ? s : closest[i];
        closest[i] = v;
        total += roww ? (double)v * roww[i] : (double)v;
    }
    return total;
}

/* Smallest i with sum_{j <= i} closest[j] * roww[j] > target (the D^2 sample), or n - 1. */
int64_t vq_kpp_sample(const float *closest, const float *roww, int64_t n, double target) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        acc += roww ? (double)closest[i] * roww[i] : (double)closest[i];
        if (acc > target) return i;
    }
    return n - 1;
}
