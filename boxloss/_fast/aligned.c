/* boxloss: the aligned IoU-family losses and their local gradients in one pass over the boxes.
 *
 * Scalar port of boxloss/_fast/fused.py (itself the closed form of the reference in boxloss/boxes.py), with the
 * reference's conventions at the kinks: clamp_min passes no gradient at its bound, max/min split it evenly on
 * ties, a denominator at or under eps passes none. Compiled at first use by boxloss/_fast/cpu.py, for float
 * and double (REAL), parallel over chunks of boxes with OpenMP (the runtime PyTorch itself loaded: the
 * library names libgomp.so.1, which resolves to the copy already in the process), on as many threads as
 * cpu.py passes (none beyond torch.get_num_threads(), one below its grain size).
 *
 * NaN: every max, min and clamp propagates NaN as torch.maximum/minimum/clamp_min do (a plain `a > b ? a : b`
 * silently drops it), so a NaN coordinate gives a NaN loss exactly where the reference gives one, and a box
 * whose loss is NaN gets NaN gradients: a diverging run shows up instead of training on a plausible number.
 *
 * Reduction: with `total` set, the kernel also returns scale * sum_i w_i * loss_i (w_i = W[i], or 1 without W)
 * accumulated in double, and scales each box's gradients by scale * w_i, so that a weighted mean or sum costs
 * no second pass over the boxes.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* the kind codes: each kind's place in boxloss._fast.fused.KINDS (fused.KIND_CODES) */
enum { K_IOU = 0, K_IOU_DIST = 1, K_LOG = 2, K_LOG_DIST = 3, K_GIOU = 4, K_DIOU = 5, K_CIOU = 6 };
#define LOG_TAU 0.7  /* boxloss.boxes.LOG_IOU_LINEAR_BELOW */
/* boxes per work item: threads take chunks as they come free (a thread the machine has descheduled holds up at
 * most one chunk), and the weighted sum is added up per chunk, then over chunks in order */
#define BL_CHUNK 1024

#define DEFINE_KERNEL(REAL, NAME, SQRT, ATAN2, LOG)                                                           \
static inline REAL NAME##_sel(REAL a, REAL b) { return a > b ? (REAL)1 : (a == b ? (REAL)0.5 : (REAL)0); }     \
static inline REAL NAME##_pos(REAL a) { return (a > 0 || a != a) ? a : (REAL)0; }                              \
static inline REAL NAME##_max(REAL a, REAL b) { return (a > b || a != a) ? a : b; }                            \
static inline REAL NAME##_min(REAL a, REAL b) { return (a < b || a != a) ? a : b; }                            \
void NAME(int kind, const REAL *P, const REAL *T, const REAL *W, REAL *L, REAL *GP, REAL *GT, long n,          \
          double eps_d, double scale, double *total, int threads) {                                           \
    const REAL eps = (REAL)eps_d;                                                                            \
    const REAL four_pi2 = (REAL)(4.0 / (M_PI * M_PI));                                                         \
    const int need = (GP != NULL) || (GT != NULL);                                                           \
    const int dist = (kind == K_IOU_DIST || kind == K_LOG_DIST);                                             \
    const int encl = dist || kind == K_GIOU || kind == K_DIOU || kind == K_CIOU;                              \
    const long chunks = (n + BL_CHUNK - 1) / BL_CHUNK;                                                         \
    double *partial = total ? (double *)malloc(sizeof(double) * (size_t)(chunks > 0 ? chunks : 1)) : NULL;    \
    if (total && !partial) threads = 1;  /* no memory for the partial sums: one pass, one sum */             \
    double acc1 = 0;                                                                                         \
    (void)threads;                                                                                           \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                                   \
    for (long c = 0; c < chunks; ++c) {                                                                      \
    double acc = 0;                                                                                          \
    const long end = (c + 1) * BL_CHUNK < n ? (c + 1) * BL_CHUNK : n;                                        \
    for (long i = c * BL_CHUNK; i < end; ++i) {                                                              \
        const REAL *p = P + 4 * i, *t = T + 4 * i;                                                           \
        REAL plo[2] = {p[0], p[1]}, phi[2] = {p[2], p[3]}, tlo[2] = {t[0], t[1]}, thi[2] = {t[2], t[3]};      \
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
            if (encl) {                                                                                      \
                REAL clo = NAME##_min(plo[k], tlo[k]);                                                       \
                REAL chi = NAME##_max(phi[k], thi[k]);                                                       \
                sclo[k] = NAME##_sel(tlo[k], plo[k]);                                                        \
                schi[k] = NAME##_sel(phi[k], thi[k]);                                                        \
                cr[k] = chi - clo; cwh[k] = NAME##_pos(cr[k]);                                               \
            }                                                                                                \
        }                                                                                                    \
        REAL inter = iwh[0] * iwh[1];                                                                        \
        REAL uni = pwh[0] * pwh[1] + twh[0] * twh[1] - inter;                                                \
        REAL u_ok = uni > eps, inv_u = (REAL)1 / NAME##_max(uni, eps);                                        \
        REAL iou = inter * inv_u;                                                                            \
        REAL loss, g_iou;                                                                                    \
        if (kind == K_LOG) {                                                                                 \
            REAL ic = NAME##_max(iou, eps);                                                                  \
            loss = -LOG(ic); g_iou = iou > eps ? -(REAL)1 / ic : (REAL)0;                                    \
        } else if (kind == K_LOG_DIST) {  /* Smooth-ln: -ln IoU above TAU, its tangent below */              \
            if (iou >= LOG_TAU) { loss = -LOG(iou); g_iou = -(REAL)1 / iou; }                                \
            else { loss = -LOG((REAL)LOG_TAU) + ((REAL)LOG_TAU - iou) / (REAL)LOG_TAU; g_iou = -(REAL)1 / (REAL)LOG_TAU; } \
        } else { loss = 1 - iou; g_iou = -1; }                                                               \
        REAL g_union_extra = 0, g_cwh[2] = {0, 0}, g_d[2] = {0, 0}, g_gapxy[2] = {0, 0};                      \
        REAL g_pwh_c[2] = {0, 0}, g_twh_c[2] = {0, 0};                                                        \
        if (kind == K_GIOU) {                                                                                \
            REAL ac = cwh[0] * cwh[1], c_ok = ac > eps, inv_c = (REAL)1 / NAME##_max(ac, eps);                 \
            loss += (ac - uni) * inv_c;                                                                      \
            REAL g_c = uni * inv_c * inv_c * c_ok;                                                           \
            g_union_extra = -inv_c * c_ok;                                                                   \
            g_cwh[0] = g_c * cwh[1]; g_cwh[1] = g_c * cwh[0];                                                \
        } else if (kind == K_DIOU || kind == K_CIOU) {                                                       \
            REAL d[2] = {plo[0] + phi[0] - tlo[0] - thi[0], plo[1] + phi[1] - tlo[1] - thi[1]};               \
            REAL rho2 = (d[0] * d[0] + d[1] * d[1]) * (REAL)0.25;                                            \
            REAL c2 = cwh[0] * cwh[0] + cwh[1] * cwh[1];                                                     \
            REAL den = NAME##_max(c2, rho2), den_ok = den > eps, inv_den = (REAL)1 / NAME##_max(den, eps);  \
            loss += rho2 * inv_den;                                                                          \
            REAL s = NAME##_sel(c2, rho2), q = rho2 * inv_den * inv_den * den_ok;                             \
            REAL g_rho2 = inv_den * den_ok - q * (1 - s), g_c2 = -q * s;                                     \
            g_d[0] = g_rho2 * (REAL)0.5 * d[0]; g_d[1] = g_rho2 * (REAL)0.5 * d[1];                           \
            g_cwh[0] = g_c2 * 2 * cwh[0]; g_cwh[1] = g_c2 * 2 * cwh[1];                                       \
            if (kind == K_CIOU) {                                                                            \
                REAL okp = (pwh[0] + pwh[1]) > eps, okt = (twh[0] + twh[1]) > eps;                            \
                /* θt − θp in one call: atan a − atan b = atan((a − b) / (1 + ab)) holds for a, b ≥ 0 */     \
                REAL diff;                                                                                   \
                if (okp && okt) diff = ATAN2(twh[0] * pwh[1] - pwh[0] * twh[1], twh[1] * pwh[1] + twh[0] * pwh[0]); \
                else diff = (okt ? ATAN2(twh[0], twh[1]) : (REAL)0) - (okp ? ATAN2(pwh[0], pwh[1]) : (REAL)0);   \
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
        REAL g_twh_gap[2] = {0, 0};                                                                          \
        if (dist) {  /* gap / target diagonal; / max(enclosing diagonal, gap) for a point target */          \
            REAL gx = NAME##_pos(-ir[0]), gy = NAME##_pos(-ir[1]);                                           \
            REAL g2 = gx * gx + gy * gy, gap = (g2 > 0 || g2 != g2) ? SQRT(g2) : (REAL)0;                   \
            REAL cd2 = cwh[0] * cwh[0] + cwh[1] * cwh[1], cdiag = (cd2 > 0 || cd2 != cd2) ? SQRT(cd2) : (REAL)0; \
            REAL td2 = twh[0] * twh[0] + twh[1] * twh[1], tdiag = (td2 > 0 || td2 != td2) ? SQRT(td2) : (REAL)0; \
            REAL g_gap, g_cd = 0;                                                                            \
            if (tdiag > eps) {                                                                               \
                REAL inv_t = (REAL)1 / tdiag;                                                                \
                loss += gap * inv_t;                                                                         \
                g_gap = inv_t * (gap > 0);                                                                   \
                REAL g_td = -gap * inv_t * inv_t;                                                            \
                g_twh_gap[0] = g_td * inv_t * twh[0]; g_twh_gap[1] = g_td * inv_t * twh[1];                   \
            } else {                                                                                         \
                REAL den = NAME##_max(cdiag, gap), den_ok = den > eps, inv_den = (REAL)1 / NAME##_max(den, eps);  \
                loss += gap * inv_den;                                                                       \
                REAL s = NAME##_sel(cdiag, gap), q = gap * inv_den * inv_den * den_ok;                        \
                g_gap = (inv_den * den_ok - q * (1 - s)) * (gap > 0);                                        \
                g_cd = -q * s * (cdiag > 0);                                                                 \
            }                                                                                                \
            REAL inv_gap = gap > 0 ? (REAL)1 / gap : (REAL)1, inv_cd = cdiag > 0 ? (REAL)1 / cdiag : (REAL)1;  \
            g_gapxy[0] = g_gap * inv_gap * gx * (-ir[0] > 0); g_gapxy[1] = g_gap * inv_gap * gy * (-ir[1] > 0); \
            g_cwh[0] = g_cd * inv_cd * cwh[0]; g_cwh[1] = g_cd * inv_cd * cwh[1];                             \
        }                                                                                                    \
        const REAL f = (W ? W[i] : (REAL)1) * (REAL)scale;  /* this box's share of the reduced loss */     \
        if (L) L[i] = loss;                                                                                  \
        if (total) acc += (double)f * (double)loss;                                                          \
        if (!need) continue;                                                                                 \
        REAL g_inter = g_iou * inv_u * u_ok;                                                                 \
        REAL g_union = -(g_iou * iou * inv_u) * u_ok + g_union_extra;                                        \
        g_inter -= g_union;                                                                                  \
        REAL gi[2] = {g_inter * iwh[1] * (ir[0] > 0), g_inter * iwh[0] * (ir[1] > 0)};                        \
        REAL gpw[2] = {g_union * pwh[1] * (pwr[0] > 0), g_union * pwh[0] * (pwr[1] > 0)};                    \
        REAL gtw[2] = {g_union * twh[1] * (twr[0] > 0), g_union * twh[0] * (twr[1] > 0)};                    \
        REAL gp[4], gt[4];                                                                                   \
        for (int k = 0; k < 2; ++k) {                                                                        \
            gpw[k] += g_pwh_c[k] * (pwr[k] > 0); gtw[k] += (g_twh_c[k] + g_twh_gap[k]) * (twr[k] > 0);        \
            REAL gir = gi[k] - g_gapxy[k];                                                                   \
            REAL gphi = gir * shi[k] + gpw[k], gthi = gir * (1 - shi[k]) + gtw[k];                            \
            REAL gplo = -gir * slo[k] - gpw[k], gtlo = -gir * (1 - slo[k]) - gtw[k];                          \
            if (encl) {                                                                                      \
                REAL gc = g_cwh[k] * (cr[k] > 0);                                                            \
                gphi += gc * schi[k]; gthi += gc * (1 - schi[k]);                                             \
                gplo -= gc * sclo[k]; gtlo -= gc * (1 - sclo[k]);                                             \
            }                                                                                                \
            gplo += g_d[k]; gphi += g_d[k]; gtlo -= g_d[k]; gthi -= g_d[k];                                  \
            gp[k] = gplo; gp[k + 2] = gphi; gt[k] = gtlo; gt[k + 2] = gthi;                                  \
        }                                                                                                    \
        if (loss != loss) for (int k = 0; k < 4; ++k) { gp[k] = loss; gt[k] = loss; }  /* NaN out */          \
        if (GP) for (int k = 0; k < 4; ++k) GP[4 * i + k] = f * gp[k];                                       \
        if (GT) for (int k = 0; k < 4; ++k) GT[4 * i + k] = f * gt[k];                                       \
    }                                                                                                        \
    if (partial) partial[c] = acc; else if (total) acc1 += acc;  /* (then one thread) */                     \
    }                                                                                                        \
    if (total) {  /* the chunks' sums in chunk order: the same total for every thread count and schedule */ \
        double sum = 0;                                                                                      \
        if (partial) { for (long c = 0; c < chunks; ++c) sum += partial[c]; free(partial); }                 \
        else sum = acc1;                                                                                     \
        *total = sum;                                                                                        \
    }                                                                                                        \
}

DEFINE_KERNEL(float, boxloss_aligned_f32, sqrtf, atan2f, logf)
DEFINE_KERNEL(double, boxloss_aligned_f64, sqrt, atan2, log)

/* Pairwise scores (no gradient): out[b, i, j] = score(A[b, i], B[b, j]) for kind 0 IoU, 4 GIoU, 5 DIoU,
 * 6 CIoU (values of boxes.py's kernels: clamped widths, denominators clamped at eps). One pass, written
 * straight into the output: no N×M temporaries.
 *
 * One formula (PAIR_SCORE), instantiated twice: with plain max/min (compiled to branchless maxss/minss) for
 * pairs whose eight coordinates are finite, and with the NaN-propagating ones for the rare pairs that are not,
 * so that NaN and Inf come out as from the reference without slowing down the finite pairs. */
#define PAIR_SCORE(REAL, MAX, MIN, POS, ATAN2, OUT)                                                           \
    {                                                                                                        \
        REAL aw = POS(ax2 - ax1), ah = POS(ay2 - ay1), aa = aw * ah;                                          \
        REAL bw = POS(c[2] - c[0]), bh = POS(c[3] - c[1]);                                                   \
        REAL iw = POS(MIN(ax2, c[2]) - MAX(ax1, c[0]));                                                      \
        REAL ih = POS(MIN(ay2, c[3]) - MAX(ay1, c[1]));                                                      \
        REAL inter = iw * ih, uni = aa + bw * bh - inter;                                                    \
        REAL iou = inter / MAX(uni, eps);                                                                    \
        OUT = iou;                                                                                           \
        if (kind != 0) {                                                                                     \
            REAL cw = POS(MAX(ax2, c[2]) - MIN(ax1, c[0]));                                                  \
            REAL ch = POS(MAX(ay2, c[3]) - MIN(ay1, c[1]));                                                  \
            if (kind == 4) {                                                                                 \
                REAL ac = cw * ch;                                                                           \
                OUT = iou - (ac - uni) / MAX(ac, eps);                                                       \
            } else {                                                                                         \
                REAL dx = ax1 + ax2 - c[0] - c[2], dy = ay1 + ay2 - c[1] - c[3];                              \
                REAL rho2 = (dx * dx + dy * dy) * (REAL)0.25, c2 = cw * cw + ch * ch;                         \
                OUT = iou - rho2 / MAX(MAX(c2, rho2), eps);                                                  \
                if (kind == 6) {                                                                             \
                    REAL thb = bw + bh > eps ? ATAN2(bw, bh) : (REAL)0;                                       \
                    REAL diff = thb - tha, v = four_pi2 * diff * diff;                                       \
                    OUT -= v / (1 - iou + v + eps) * v;                                                      \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

#define FAST_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FAST_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FAST_POS(a) ((a) > 0 ? (a) : 0)

#define DEFINE_PAIRWISE(REAL, NAME, SQRT, ATAN2, K)                                                           \
void NAME(int kind, const REAL *A, const REAL *B, REAL *OUT, long batch, long n, long m, double eps_d,        \
          int threads) {                                                                                      \
    const REAL eps = (REAL)eps_d;                                                                            \
    const REAL four_pi2 = (REAL)(4.0 / (M_PI * M_PI));                                                         \
    (void)threads;                                                                                           \
    const long rows = m >= 4096 ? 1 : 4096 / (m > 0 ? m : 1);  /* about 4096 pairs per work item */         \
    (void)rows;                                                                                              \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, rows) num_threads(threads)")                    \
    for (long b = 0; b < batch; ++b) {                                                                       \
        for (long i = 0; i < n; ++i) {                                                                       \
            const REAL *a = A + 4 * (b * n + i);                                                             \
            const REAL ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];                                       \
            const int a_finite = isfinite(ax1) && isfinite(ay1) && isfinite(ax2) && isfinite(ay2);          \
            const REAL aw0 = K##_pos(ax2 - ax1), ah0 = K##_pos(ay2 - ay1);                                  \
            const REAL tha = (kind == 6 && aw0 + ah0 > eps) ? ATAN2(aw0, ah0) : (REAL)0;  /* hoisted */      \
            REAL *o = OUT + (b * n + i) * m;                                                                 \
            const REAL *Bb = B + 4 * b * m;                                                                  \
            for (long j = 0; j < m; ++j) {                                                                   \
                const REAL *c = Bb + 4 * j;                                                                  \
                REAL score;                                                                                  \
                if (a_finite && isfinite(c[0] + c[1] + c[2] + c[3]))                                         \
                    PAIR_SCORE(REAL, FAST_MAX, FAST_MIN, FAST_POS, ATAN2, score)                             \
                else                                                                                         \
                    PAIR_SCORE(REAL, K##_max, K##_min, K##_pos, ATAN2, score)                                \
                o[j] = score;                                                                                \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
}

DEFINE_PAIRWISE(float, boxloss_pairwise_f32, sqrtf, atan2f, boxloss_aligned_f32)
DEFINE_PAIRWISE(double, boxloss_pairwise_f64, sqrt, atan2, boxloss_aligned_f64)
