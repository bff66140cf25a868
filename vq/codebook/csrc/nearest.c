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
#include <math.h>
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

/* The whole k-means++ seeding loop (Arthur & Vassilvitskii 2007) over m points, in one call.
 *
 * xt: (d, mp) points, transposed, mp % VL == 0 (columns m..mp-1 are padding); wt: (d, mp)
 * per-coordinate weights or NULL; roww: (mp) per-row mass weights or NULL (padding 0).
 * closest: (mp) scratch, +inf for the real columns and 0 for the padding on entry; blocks:
 * (mp / KPP_BLOCK) scratch. u: (k) uniforms in [0, 1). picked[0] is the first centre on entry;
 * step j = 1..k-1 first lowers closest[i] = min(closest[i], sum_l w_il (x_il - c_l)^2) for the
 * centre picked at j - 1, then draws picked[j] = smallest i whose cumulative mass
 * sum closest * roww exceeds u[j] * total, through per-block sums (one pass over m/KPP_BLOCK
 * sums plus one block, instead of a pass over m). When the mass is 0 (every point sits on a
 * centre) picked[j] = floor(u[j] * m). Points run VL at a time along the columns. */
#define KPP_BLOCK 256

void vq_kpp_seed(const float *xt, const float *wt, const float *roww, int64_t m, int64_t mp,
                 int64_t d, int64_t k, const double *u, int64_t *picked, float *closest,
                 double *blocks) {
    float c[d];
    int64_t nb = (mp + KPP_BLOCK - 1) / KPP_BLOCK;
    for (int64_t j = 1; j < k; j++) {
        for (int64_t l = 0; l < d; l++) c[l] = xt[l * mp + picked[j - 1]];
        double total = 0.0;
        for (int64_t b = 0; b < nb; b++) {
            int64_t e = (b + 1) * KPP_BLOCK < mp ? (b + 1) * KPP_BLOCK : mp;
            vf acc = (vf){};
            for (int64_t i = b * KPP_BLOCK; i < e; i += VL) {
                vf s = (vf){};
                if (wt) {
                    for (int64_t l = 0; l < d; l++) {
                        vf t = loadv(xt + l * mp + i) - c[l];
                        s += loadv(wt + l * mp + i) * t * t;
                    }
                } else {
                    for (int64_t l = 0; l < d; l++) {
                        vf t = loadv(xt + l * mp + i) - c[l];
                        s += t * t;
                    }
                }
                vf old = loadv(closest + i);
                vi lt = s < old;
                vf v = (vf)(((vi)s & lt) | ((vi)old & ~lt));
                memcpy(closest + i, &v, sizeof v);
                acc += roww ? v * loadv(roww + i) : v;
            }
            double bs = 0.0;
            for (int t = 0; t < VL; t++) bs += acc[t];
            blocks[b] = bs;
            total += bs;
        }
        if (!(total > 0.0) || !isfinite(total)) {
            int64_t i = (int64_t)(u[j] * (double)m);
            picked[j] = i < m ? i : m - 1;
            continue;
        }
        double target = u[j] * total, run = 0.0;
        int64_t b = 0;
        while (b < nb - 1 && run + blocks[b] <= target) run += blocks[b++];
        /* inside block b: the running sum in double; rounding against the block's float-lane
         * sum can leave target unreached, then the block's last point with mass is taken */
        int64_t s0 = b * KPP_BLOCK, e = (b + 1) * KPP_BLOCK < m ? (b + 1) * KPP_BLOCK : m, pick = -1;
        for (int64_t i = s0; i < e; i++) {
            double v = roww ? (double)closest[i] * roww[i] : (double)closest[i];
            if (v > 0.0) pick = i;
            run += v;
            if (run > target && v > 0.0) break;
        }
        if (pick < 0) { /* rounding put target past a block of zero mass: first point with mass */
            for (int64_t i = 0; i < m && pick < 0; i++)
                if ((roww ? (double)closest[i] * roww[i] : (double)closest[i]) > 0.0) pick = i;
        }
        picked[j] = pick;
    }
}
