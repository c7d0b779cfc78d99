/* boxloss: the hand-written C kernels of the CIoU loss and of the pairwise scores.
 *
 * The aligned CIoU loss is here because its hand-written kernel is faster than the one generated from its
 * formula (benchmarks/bench_generated.py: its arctangent in a loop of its own, its detached trade-off weight
 * written out); every other aligned loss runs the kernel generated from its formula. It is tested against the
 * formula and the reference.
 *
 * Port of boxloss/backends/closed_form.py (itself the closed form of the reference in boxloss/boxes.py), with the
 * reference's conventions at the kinks: clamp_min passes no gradient at its bound, max/min split it evenly on
 * ties, a denominator at or under eps passes none. Compiled at first use by boxloss/backends/cpu.py, for float
 * and double (REAL), parallel over chunks of boxes with OpenMP (the runtime PyTorch itself loaded: the
 * library names libgomp.so.1, which resolves to the copy already in the process), on as many threads as
 * cpu.py passes (none beyond torch.get_num_threads(), one below its grain size).
 *
 * Vectorised: each chunk's boxes are copied into columns, and the main loop over them is free of calls and
 * branches (selects only), one loop per kind, with and without gradients, which the compiler turns into SIMD
 * code (8 or 16 boxes per instruction with AVX2/AVX-512). What needs a library call per box runs in a loop of
 * its own: CIoU's arctangent before the main loop.
 *
 * NaN: every max, min and clamp propagates NaN as torch.maximum/minimum/clamp_min do (a plain `a > b ? a : b`
 * silently drops it), so a NaN coordinate gives a NaN loss exactly where the reference gives one, and a box
 * whose loss is NaN gets NaN gradients: a diverging run shows up instead of training on a plausible number.
 *
 * Reduction: with `total` set, the kernel also returns scale * sum_i w_i * loss_i (w_i = W[i], or 1 without W)
 * accumulated in double, and scales each box's gradients by scale * w_i, so that a weighted mean or sum costs
 * no second pass over the boxes.
 */
#include "bl_runtime.h"  /* the weighted sum per chunk, BL_VECTOR_LOOP, the wait watch */

/* the kind codes: each kind's place in boxloss.backends.closed_form.KINDS (closed_form.KIND_CODES); the aligned
 * kernel takes K_CIOU, the pairwise scores K_IOU, K_GIOU, K_DIOU and K_CIOU */
enum { K_IOU = 0, K_IOU_DIST = 1, K_LOG = 2, K_LOG_DIST = 3, K_GIOU = 4, K_DIOU = 5, K_CIOU = 6 };
/* boxes per work item: threads take chunks as they come free (a thread the machine has descheduled holds up at
 * most one chunk), and the weighted sum is added up per chunk, then over chunks in order; a chunk's columns
 * (NAME##_cols, 18 values per box) live on the thread's stack: 36 KiB for double */
#define BL_CHUNK 256

/* The vectorised loops (BL_VECTOR_LOOP, bl_runtime.h): one function per kind, with and without gradients, each
 * the main loop inlined with those as constants. The loops of kind K (an enum name), without and with gradients: NAME##_main_K_GIOU_1 is GIoU with gradients */
#define BL_MAIN(REAL, NAME, K)                                                                                \
    static BL_VECTOR_LOOP void NAME##_main_##K##_0(NAME##_cols *S, long m, const REAL eps) {                  \
        NAME##_main(K, 0, S, m, eps);                                                                        \
    }                                                                                                        \
    static BL_VECTOR_LOOP void NAME##_main_##K##_1(NAME##_cols *S, long m, const REAL eps) {                  \
        NAME##_main(K, 1, S, m, eps);                                                                        \
    }

/* the two cases of kind K in the chunk loop's switch (kind * 2 + need), each the chunk inlined with K and need
 * constant */
#define BL_CHUNK_CASES(NAME, K)                                                                               \
    case 2 * K: acc = NAME##_chunk(K, 0, &S, P, T, W, L, GP, GT, b, m, eps, scale_r); break;                 \
    case 2 * K + 1: acc = NAME##_chunk(K, 1, &S, P, T, W, L, GP, GT, b, m, eps, scale_r); break;

#define DEFINE_KERNEL(REAL, NAME, ATAN2)                                                                      \
static inline REAL NAME##_sel(REAL a, REAL b) { return a > b ? (REAL)1 : (a == b ? (REAL)0.5 : (REAL)0); }     \
static inline REAL NAME##_pos(REAL a) { return a <= 0 ? (REAL)0 : a; }  /* NaN stays NaN */                \
static inline REAL NAME##_max(REAL a, REAL b) { return ((a > b) | (a != a)) ? a : b; }                         \
static inline REAL NAME##_min(REAL a, REAL b) { return ((a < b) | (a != a)) ? a : b; }                         \
/* a chunk's boxes as columns (x1, y1, x2, y2 of p, then of t), its local gradients, losses and one more value   \
 * per box (the CIoU angle difference) */                                                                     \
typedef struct { REAL in[8][BL_CHUNK], g[8][BL_CHUNK], loss[BL_CHUNK], aux[BL_CHUNK]; } NAME##_cols;          \
/* CIoU's θt − θp, one library call per box (a loop of its own, so that the main loop has none) */          \
static inline __attribute__((always_inline)) void NAME##_angles(NAME##_cols *S, long m, const REAL eps) {      \
    for (long j = 0; j < m; ++j) {                                                                            \
        REAL pwh[2] = {NAME##_pos(S->in[2][j] - S->in[0][j]), NAME##_pos(S->in[3][j] - S->in[1][j])};          \
        REAL twh[2] = {NAME##_pos(S->in[6][j] - S->in[4][j]), NAME##_pos(S->in[7][j] - S->in[5][j])};          \
        REAL okp = (pwh[0] + pwh[1]) > eps, okt = (twh[0] + twh[1]) > eps;                                    \
        /* θt − θp in one call: atan a − atan b = atan((a − b) / (1 + ab)) holds for a, b ≥ 0 */             \
        if (okp && okt) S->aux[j] = ATAN2(twh[0] * pwh[1] - pwh[0] * twh[1], twh[1] * pwh[1] + twh[0] * pwh[0]); \
        else S->aux[j] = (okt ? ATAN2(twh[0], twh[1]) : (REAL)0) - (okp ? ATAN2(pwh[0], pwh[1]) : (REAL)0);     \
    }                                                                                                        \
}                                                                                                            \
/* the losses and local gradients of a chunk's boxes: no calls and no branches (the kind and whether          \
 * gradients are needed are constants where this is inlined), so the compiler vectorizes it */               \
static inline __attribute__((always_inline)) void NAME##_main(const int kind, const int need, NAME##_cols *S,  \
                                                              long m, const REAL eps) {                      \
    const REAL four_pi2 = (REAL)(4.0 / (M_PI * M_PI));                                                         \
    _Pragma("omp simd")                                                                                      \
    for (long j = 0; j < m; ++j) {                                                                            \
        REAL plo[2] = {S->in[0][j], S->in[1][j]}, phi[2] = {S->in[2][j], S->in[3][j]};                   \
        REAL tlo[2] = {S->in[4][j], S->in[5][j]}, thi[2] = {S->in[6][j], S->in[7][j]};                   \
        REAL pwr[2], twr[2], pwh[2], twh[2], ir[2], iwh[2], cr[2] = {0, 0}, cwh[2] = {0, 0};                  \
        REAL slo[2], shi[2], sclo[2] = {0, 0}, schi[2] = {0, 0};                                              \
        for (int k = 0; k < 2; ++k) {                                                                        \
            pwr[k] = phi[k] - plo[k]; twr[k] = thi[k] - tlo[k];                                              \
            pwh[k] = NAME##_pos(pwr[k]); twh[k] = NAME##_pos(twr[k]);                                         \
            REAL lo = NAME##_max(plo[k], tlo[k]);                                                            \
            REAL hi = NAME##_min(phi[k], thi[k]);                                                            \
            slo[k] = NAME##_sel(plo[k], tlo[k]);  /* share of d max(p_lo, t_lo) going to p */                \
            shi[k] = NAME##_sel(thi[k], phi[k]);  /* share of d min(p_hi, t_hi) going to p */                \
            ir[k] = hi - lo; iwh[k] = NAME##_pos(ir[k]);                                                     \
            REAL clo = NAME##_min(plo[k], tlo[k]);                                                           \
            REAL chi = NAME##_max(phi[k], thi[k]);                                                           \
            sclo[k] = NAME##_sel(tlo[k], plo[k]);                                                            \
            schi[k] = NAME##_sel(phi[k], thi[k]);                                                            \
            cr[k] = chi - clo; cwh[k] = NAME##_pos(cr[k]);                                                   \
        }                                                                                                    \
        REAL inter = iwh[0] * iwh[1];                                                                        \
        REAL uni = pwh[0] * pwh[1] + twh[0] * twh[1] - inter;                                                \
        REAL u_ok = uni > eps, inv_u = (REAL)1 / NAME##_max(uni, eps);                                        \
        REAL iou = inter * inv_u;                                                                            \
        REAL loss = 1 - iou, g_iou = -1;                                                                     \
        REAL g_cwh[2] = {0, 0}, g_d[2] = {0, 0};                                                             \
        REAL g_pwh_c[2] = {0, 0}, g_twh_c[2] = {0, 0};                                                        \
        {  /* DIoU's centre term */                                                                          \
            REAL d[2] = {plo[0] + phi[0] - tlo[0] - thi[0], plo[1] + phi[1] - tlo[1] - thi[1]};               \
            REAL rho2 = (d[0] * d[0] + d[1] * d[1]) * (REAL)0.25;                                            \
            REAL c2 = cwh[0] * cwh[0] + cwh[1] * cwh[1];                                                     \
            REAL den = NAME##_max(c2, rho2), den_ok = den > eps, inv_den = (REAL)1 / NAME##_max(den, eps);  \
            loss += rho2 * inv_den;                                                                          \
            REAL s = NAME##_sel(c2, rho2), q = rho2 * inv_den * inv_den * den_ok;                             \
            REAL g_rho2 = inv_den * den_ok - q * (1 - s), g_c2 = -q * s;                                     \
            g_d[0] = g_rho2 * (REAL)0.5 * d[0]; g_d[1] = g_rho2 * (REAL)0.5 * d[1];                           \
            g_cwh[0] = g_c2 * 2 * cwh[0]; g_cwh[1] = g_c2 * 2 * cwh[1];                                       \
            {  /* CIoU's aspect term */                                                                      \
                REAL okp = (pwh[0] + pwh[1]) > eps, okt = (twh[0] + twh[1]) > eps;                            \
                /* θt − θp in one call: atan a − atan b = atan((a − b) / (1 + ab)) holds for a, b ≥ 0 */     \
                REAL diff = S->aux[j];  /* θt − θp, from NAME##_angles */                                     \
                REAL v = four_pi2 * diff * diff;                                                             \
                REAL alpha = v / (1 - iou + v + eps);                                                        \
                loss += alpha * v;                                                                           \
                REAL gtp = -(alpha * four_pi2 * 2) * diff * okp, gtt = (alpha * four_pi2 * 2) * diff * okt;   \
                REAL rp = okp ? (REAL)1 / (pwh[0] * pwh[0] + pwh[1] * pwh[1]) : (REAL)1;                      \
                REAL rt = okt ? (REAL)1 / (twh[0] * twh[0] + twh[1] * twh[1]) : (REAL)1;                      \
                g_pwh_c[0] = gtp * pwh[1] * rp; g_pwh_c[1] = -gtp * pwh[0] * rp;                              \
                g_twh_c[0] = gtt * twh[1] * rt; g_twh_c[1] = -gtt * twh[0] * rt;                              \
            }                                                                                                \
        }                                                                                                    \
        S->loss[j] = loss;                                                                                   \
        if (need) {                                                                                          \
        REAL g_inter = g_iou * inv_u * u_ok;                                                                 \
        REAL g_union = -(g_iou * iou * inv_u) * u_ok;                                                        \
        g_inter -= g_union;                                                                                  \
        REAL gi[2] = {g_inter * iwh[1] * (ir[0] > 0), g_inter * iwh[0] * (ir[1] > 0)};                        \
        REAL gpw[2] = {g_union * pwh[1] * (pwr[0] > 0), g_union * pwh[0] * (pwr[1] > 0)};                    \
        REAL gtw[2] = {g_union * twh[1] * (twr[0] > 0), g_union * twh[0] * (twr[1] > 0)};                    \
        for (int k = 0; k < 2; ++k) {                                                                        \
            gpw[k] += g_pwh_c[k] * (pwr[k] > 0); gtw[k] += g_twh_c[k] * (twr[k] > 0);                              \
            REAL gir = gi[k];                                                                                \
            REAL gphi = gir * shi[k] + gpw[k], gthi = gir * (1 - shi[k]) + gtw[k];                            \
            REAL gplo = -gir * slo[k] - gpw[k], gtlo = -gir * (1 - slo[k]) - gtw[k];                          \
            REAL gc = g_cwh[k] * (cr[k] > 0);                                                                \
            gphi += gc * schi[k]; gthi += gc * (1 - schi[k]);                                                 \
            gplo -= gc * sclo[k]; gtlo -= gc * (1 - sclo[k]);                                                 \
            gplo += g_d[k]; gphi += g_d[k]; gtlo -= g_d[k]; gthi -= g_d[k];                                  \
            S->g[k][j] = gplo; S->g[k + 2][j] = gphi; S->g[4 + k][j] = gtlo; S->g[6 + k][j] = gthi;          \
        }                                                                                                    \
        }                                                                                                    \
    }                                                                                                        \
}                                                                                                            \
/* the chunk's losses (the logarithms of the log losses taken here), their weighted sum, and the gradients      \
 * scaled by each box's share of it, written back as rows */                                                  \
BL_MAIN(REAL, NAME, K_CIOU)                                                                                  \
static inline __attribute__((always_inline)) double NAME##_finish(                                             \
        const int kind, const NAME##_cols *S, long begin, long m, const REAL *W, REAL *L, REAL *GP, REAL *GT,    \
        const REAL scale_r) {                                                                                 \
    double acc = 0;                                                                                          \
    for (long j = 0; j < m; ++j) {                                                                            \
        const long i = begin + j;                                                                            \
        REAL loss = S->loss[j];                                                                              \
        const REAL f = (W ? W[i] : (REAL)1) * scale_r;  /* this box's share of the reduced loss */           \
        if (L) L[i] = loss;                                                                                  \
        acc += (double)f * (double)loss;                                                                     \
        const int bad = loss != loss;  /* NaN out */                                                         \
        if (GP) for (int k = 0; k < 4; ++k) GP[4 * i + k] = f * (bad ? loss : S->g[k][j]);                   \
        if (GT) for (int k = 0; k < 4; ++k) GT[4 * i + k] = f * (bad ? loss : S->g[4 + k][j]);               \
    }                                                                                                        \
    return acc;                                                                                              \
}                                                                                                            \
static inline __attribute__((always_inline)) double NAME##_chunk(                                              \
        const int kind, const int need, NAME##_cols *S, const REAL *P, const REAL *T, const REAL *W, REAL *L,    \
        REAL *GP, REAL *GT, long begin, long m, const REAL eps, const REAL scale_r) {                          \
    for (long j = 0; j < m; ++j)                                                                             \
        for (int k = 0; k < 4; ++k) { S->in[k][j] = P[4 * (begin + j) + k]; S->in[4 + k][j] = T[4 * (begin + j) + k]; } \
    NAME##_angles(S, m, eps);                                                                                \
    if (need) NAME##_main_K_CIOU_1(S, m, eps); else NAME##_main_K_CIOU_0(S, m, eps);                         \
    return NAME##_finish(kind, S, begin, m, W, L, GP, GT, scale_r);                                          \
}                                                                                                            \
void NAME(int kind, const REAL *P, const REAL *T, const REAL *W, REAL *L, REAL *GP, REAL *GT, long n,          \
          double eps_d, double scale, double *total, int threads) {                                           \
    const REAL eps = (REAL)eps_d, scale_r = (REAL)scale;                                                     \
    const int need = (GP != NULL) || (GT != NULL);                                                           \
    const long chunks = (n + BL_CHUNK - 1) / BL_CHUNK;                                                         \
    double *partial = bl_partials(total, chunks, &threads);                                                  \
    double acc1 = 0;                                                                                         \
    (void)threads;                                                                                           \
    BL_WATCH_START;                                                                                          \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                                   \
    for (long c = 0; c < chunks; ++c) {                                                                      \
        NAME##_cols S;                                                                                       \
        const long b = c * BL_CHUNK, m = (c + 1) * BL_CHUNK < n ? BL_CHUNK : n - b;                          \
        double acc;                                                                                          \
        switch (kind * 2 + need) {  /* each kind, with and without gradients, as its own loop */             \
            BL_CHUNK_CASES(NAME, K_CIOU)                                                                     \
            default: acc = NAME##_chunk(K_CIOU, 1, &S, P, T, W, L, GP, GT, b, m, eps, scale_r); break;        \
        }                                                                                                    \
        if (partial) partial[c] = acc; else if (total) acc1 += acc;  /* (then one thread) */                 \
        BL_CHUNK_DONE;                                                                                       \
    }                                                                                                        \
    BL_WATCH_END;                                                                                            \
    bl_total(total, partial, chunks, acc1);                                                                  \
}

DEFINE_KERNEL(float, boxloss_aligned_f32, atan2f)
DEFINE_KERNEL(double, boxloss_aligned_f64, atan2)

/* Pairwise scores (no gradient): out[b, i, j] = score(A[b, i], B[b, j]) for kind 0 IoU, 4 GIoU, 5 DIoU,
 * 6 CIoU (values of boxes.py's kernels: clamped widths, denominators clamped at eps). One pass, written
 * straight into the output: no N×M temporaries.
 *
 * B comes as columns (BT: batch × 4 × m, x1 row, y1 row, x2 row, y2 row), so that the loop over a row of the
 * output reads contiguous memory and, free of calls and branches (NaN-propagating selects), is vectorised:
 * one such loop per kind. CIoU's arctangent of each column box is taken once, before (into THB). */
#define PAIR_SCORE(REAL, K, KIND, OUT)                                                                        \
    {                                                                                                        \
        const REAL bx1 = bt[j], by1 = bt[m + j], bx2 = bt[2 * m + j], by2 = bt[3 * m + j];                   \
        REAL aw = K##_pos(ax2 - ax1), ah = K##_pos(ay2 - ay1), aa = aw * ah;                                  \
        REAL bw = K##_pos(bx2 - bx1), bh = K##_pos(by2 - by1);                                               \
        REAL iw = K##_pos(K##_min(ax2, bx2) - K##_max(ax1, bx1));                                            \
        REAL ih = K##_pos(K##_min(ay2, by2) - K##_max(ay1, by1));                                            \
        REAL inter = iw * ih, uni = aa + bw * bh - inter;                                                    \
        REAL iou = inter / K##_max(uni, eps);                                                                \
        OUT = iou;                                                                                           \
        if (KIND != K_IOU) {                                                                                 \
            REAL cw = K##_pos(K##_max(ax2, bx2) - K##_min(ax1, bx1));                                        \
            REAL ch = K##_pos(K##_max(ay2, by2) - K##_min(ay1, by1));                                        \
            if (KIND == K_GIOU) {                                                                            \
                REAL ac = cw * ch;                                                                           \
                OUT = iou - (ac - uni) / K##_max(ac, eps);                                                   \
            } else {                                                                                         \
                REAL dx = ax1 + ax2 - bx1 - bx2, dy = ay1 + ay2 - by1 - by2;                                  \
                REAL rho2 = (dx * dx + dy * dy) * (REAL)0.25, c2 = cw * cw + ch * ch;                         \
                OUT = iou - rho2 / K##_max(K##_max(c2, rho2), eps);                                          \
                if (KIND == K_CIOU) {                                                                        \
                    REAL diff = thb[j] - tha, v = four_pi2 * diff * diff;                                    \
                    OUT -= v / (1 - iou + v + eps) * v;                                                      \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

#define DEFINE_PAIRWISE_ROW(REAL, NAME, K, KIND)                                                              \
static BL_VECTOR_LOOP void NAME##_row_##KIND(const REAL *a, const REAL *bt, const REAL *thb, REAL tha, REAL *o,  \
                                             long m, const REAL eps) {                                        \
    const REAL four_pi2 = (REAL)(4.0 / (M_PI * M_PI));                                                         \
    const REAL ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];                                               \
    (void)thb; (void)tha; (void)four_pi2;                                                                    \
    _Pragma("omp simd")                                                                                      \
    for (long j = 0; j < m; ++j) {                                                                           \
        REAL score;                                                                                          \
        PAIR_SCORE(REAL, K, KIND, score)                                                                     \
        o[j] = score;                                                                                        \
    }                                                                                                        \
}

#define DEFINE_PAIRWISE(REAL, NAME, ATAN2, K)                                                                 \
DEFINE_PAIRWISE_ROW(REAL, NAME, K, K_IOU)                                                                    \
DEFINE_PAIRWISE_ROW(REAL, NAME, K, K_GIOU)                                                                   \
DEFINE_PAIRWISE_ROW(REAL, NAME, K, K_DIOU)                                                                   \
DEFINE_PAIRWISE_ROW(REAL, NAME, K, K_CIOU)                                                                   \
void NAME(int kind, const REAL *A, const REAL *BT, REAL *THB, REAL *OUT, long batch, long n, long m,          \
          double eps_d, int threads) {                                                                        \
    const REAL eps = (REAL)eps_d;                                                                            \
    if (kind == K_CIOU)  /* θ of every column box, once (THB: batch × m) */                                   \
        for (long b = 0; b < batch; ++b)                                                                     \
            for (long j = 0; j < m; ++j) {                                                                   \
                const REAL *bt = BT + 4 * b * m;                                                             \
                REAL bw = K##_pos(bt[2 * m + j] - bt[j]), bh = K##_pos(bt[3 * m + j] - bt[m + j]);           \
                THB[b * m + j] = bw + bh > eps ? ATAN2(bw, bh) : (REAL)0;                                     \
            }                                                                                                \
    const long rows = m >= 4096 ? 1 : 4096 / (m > 0 ? m : 1);  /* about 4096 pairs per work item */         \
    (void)rows; (void)threads;                                                                               \
    BL_WATCH_START;                                                                                          \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, rows) num_threads(threads)")                    \
    for (long b = 0; b < batch; ++b) {                                                                       \
        for (long i = 0; i < n; ++i) {                                                                       \
            const REAL *a = A + 4 * (b * n + i), *bt = BT + 4 * b * m;                                       \
            REAL *o = OUT + (b * n + i) * m;                                                                 \
            if (kind == K_IOU) NAME##_row_K_IOU(a, bt, NULL, 0, o, m, eps);                                   \
            else if (kind == K_GIOU) NAME##_row_K_GIOU(a, bt, NULL, 0, o, m, eps);                            \
            else if (kind == K_DIOU) NAME##_row_K_DIOU(a, bt, NULL, 0, o, m, eps);                            \
            else {                                                                                           \
                const REAL aw0 = K##_pos(a[2] - a[0]), ah0 = K##_pos(a[3] - a[1]);                           \
                const REAL tha = aw0 + ah0 > eps ? ATAN2(aw0, ah0) : (REAL)0;  /* once per row */             \
                NAME##_row_K_CIOU(a, bt, THB + b * m, tha, o, m, eps);                                       \
            }                                                                                                \
            BL_CHUNK_DONE;                                                                                   \
        }                                                                                                    \
    }                                                                                                        \
    BL_WATCH_END;                                                                                            \
}

DEFINE_PAIRWISE(float, boxloss_pairwise_f32, atan2f, boxloss_aligned_f32)
DEFINE_PAIRWISE(double, boxloss_pairwise_f64, atan2, boxloss_aligned_f64)

/* The first-order backward of the aligned operators: OA = g * A and OB = g * B for the local gradients A, B
 * (n × cols; either may be NULL), g read at G[i * g_stride] for box i (g_stride 0: one scalar, the reduced
 * case; 1: one per box; any other stride: an expanded or strided gradient). The same IEEE product as
 * torch.mul, on the threads cpu.py passes (one below its grain), so that a backward of a few thousand boxes
 * opens no parallel region on a busy machine. */
#define DEFINE_SCALE(REAL, NAME)                                                                              \
void NAME(const REAL *G, long g_stride, const REAL *A, REAL *OA, const REAL *B, REAL *OB, long n, long cols, \
          int threads) {                                                                                     \
    const long chunks = (n + 4 * BL_CHUNK - 1) / (4 * BL_CHUNK);                                             \
    (void)threads;                                                                                           \
    BL_WATCH_START;                                                                                          \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                                   \
    for (long c = 0; c < chunks; ++c) {                                                                      \
        const long b = c * 4 * BL_CHUNK, e = b + 4 * BL_CHUNK < n ? b + 4 * BL_CHUNK : n;                     \
        if (g_stride == 0) {                                                                                 \
            const REAL g = G[0];                                                                             \
            if (A) for (long k = b * cols; k < e * cols; ++k) OA[k] = g * A[k];                              \
            if (B) for (long k = b * cols; k < e * cols; ++k) OB[k] = g * B[k];                              \
        } else {                                                                                             \
            for (long i = b; i < e; ++i) {                                                                   \
                const REAL g = G[i * g_stride];                                                              \
                if (A) for (long k = 0; k < cols; ++k) OA[i * cols + k] = g * A[i * cols + k];                \
                if (B) for (long k = 0; k < cols; ++k) OB[i * cols + k] = g * B[i * cols + k];                \
            }                                                                                                \
        }                                                                                                    \
        BL_CHUNK_DONE;                                                                                       \
    }                                                                                                        \
    BL_WATCH_END;                                                                                            \
}

DEFINE_SCALE(float, boxloss_scale_f32)
DEFINE_SCALE(double, boxloss_scale_f64)
