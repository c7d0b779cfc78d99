/* Pairwise rotated IoU without gradient: boxloss/rotated.py's formula (RotatedPair.iou) hand-written with
 * branches, for the one pairwise score that speed matters most for (matching, NMS, evaluation).
 *
 * The generated kernel of the same formula evaluates every clip of every edge against every plane with selects
 * (it has to: it is straight-line code); this one skips what cannot contribute: pairs whose bounding boxes are
 * apart, and edge/plane pairs with both ends inside. The arithmetic and the rules (frame, 64-ulp snapping,
 * coincident edges counted once) are the formula's, in the same order; tests/test_rotated.py checks this kernel
 * against the formula on random, coincident, touching and tiny boxes.
 *
 * Included by the generated rotated library once per type, with R, BL_ULP and SFX defined. Inputs: features
 * (cx, cy, w/2, h/2, cos, sin), A row-major (batch, n, 6), B column-major (batch, 6, m). */

static void BL_CAT(bl_rot_frame, SFX)(const R *f, R ox, R oy, R unit, R *out) {
    out[0] = (f[0] - ox) / unit;
    out[1] = (f[1] - oy) / unit;
    out[2] = f[2] / unit;
    out[3] = f[3] / unit;
    out[4] = f[4];
    out[5] = f[5];
}

/* signed distances of box x's corners to box o's edge lines (+u, -u, +v, -v), and the frame dot products */
static void BL_CAT(bl_rot_table, SFX)(const R *x, const R *o, R d[4][4], R dots[4]) {
    static const R su[4] = {-1, 1, 1, -1}, sv[4] = {-1, -1, 1, 1};
    const R rx = x[0] - o[0], ry = x[1] - o[1];
    const R pu = rx * o[4] - ry * o[5], pv = rx * o[5] + ry * o[4];
    const R uu = x[4] * o[4] + x[5] * o[5], uv = x[5] * o[4] - x[4] * o[5];
    const R vu = x[4] * o[5] - x[5] * o[4], vv = x[5] * o[5] + x[4] * o[4];
    for (int k = 0; k < 4; ++k) {
        const R proj_u = pu + su[k] * x[2] * uu + sv[k] * x[3] * uv;
        const R proj_v = pv + su[k] * x[2] * vu + sv[k] * x[3] * vv;
        d[k][0] = proj_u - o[2];
        d[k][1] = -proj_u - o[2];
        d[k][2] = proj_v - o[3];
        d[k][3] = -proj_v - o[3];
    }
    dots[0] = uu; dots[1] = uv; dots[2] = vu; dots[3] = vv;
}

/* outward normal of edge k (-v, +u, +v, -u) dotted with the other box's plane j (+u, -u, +v, -v) */
static R BL_CAT(bl_rot_normal, SFX)(const R dots[4], int k, int j) {
    const R uu = dots[0], uv = dots[1], vu = dots[2], vv = dots[3];
    const R normal[4][4] = {{-uv, uv, -vv, vv}, {uu, -uu, vu, -vu}, {uv, -uv, vv, -vv}, {-uu, uu, -vu, vu}};
    return normal[k][j];
}

/* 1/2 sum over box x's edges of (hi - lo) * (P x E): its boundary's share of the intersection's area */
static R BL_CAT(bl_rot_edges, SFX)(const R *x, R d[4][4], const R dots[4], R tol, int first) {
    static const R su[4] = {-1, 1, 1, -1}, sv[4] = {-1, -1, 1, 1};
    R px[4], py[4];
    for (int k = 0; k < 4; ++k) {
        px[k] = x[0] + su[k] * x[2] * x[4] + sv[k] * x[3] * x[5];
        py[k] = x[1] - su[k] * x[2] * x[5] + sv[k] * x[3] * x[4];
        for (int j = 0; j < 4; ++j)
            if (BL_ABS(d[k][j]) <= tol) d[k][j] = 0;
    }
    R total = 0;
    for (int k = 0; k < 4; ++k) {
        const int k1 = (k + 1) & 3;
        R lo = 0, hi = 1;
        int empty = 0;
        for (int j = 0; j < 4; ++j) {
            const R d0 = d[k][j], d1 = d[k1][j];
            const int out0 = d0 > 0, out1 = d1 > 0;
            if (out0 && out1) { empty = 1; break; }
            if (!out0 && !out1) {
                if (d0 == 0 && d1 == 0 && (!first || !(BL_CAT(bl_rot_normal, SFX)(dots, k, j) > 0))) {
                    empty = 1;
                    break;
                }
                continue;
            }
            const R t = d0 / (d0 - d1);
            if (out0) { if (t > lo) lo = t; }
            else if (t < hi) hi = t;
        }
        if (empty || !(hi > lo)) continue;
        total += (hi - lo) * (px[k] * (py[k1] - py[k]) - py[k] * (px[k1] - px[k]));
    }
    return total * (R)0.5;
}

static R BL_CAT(bl_rot_iou, SFX)(const R *fa, const R *fb, R eps) {
    const R guard = (fa[0] - fa[0]) + (fa[1] - fa[1]) + (fa[2] - fa[2]) + (fa[3] - fa[3]) + (fa[4] - fa[4])
                    + (fa[5] - fa[5]) + (fb[0] - fb[0]) + (fb[1] - fb[1]) + (fb[2] - fb[2]) + (fb[3] - fb[3])
                    + (fb[4] - fb[4]) + (fb[5] - fb[5]);
    const int smaller = fa[2] * fa[3] <= fb[2] * fb[3];
    const R ox = smaller ? fa[0] : fb[0], oy = smaller ? fa[1] : fb[1];
    const R spread = BL_ABS(fa[0] - fb[0]) + BL_ABS(fa[1] - fb[1]);
    R unit = BL_MAX(BL_MAX(fa[2], fa[3]), BL_MAX(fb[2], fb[3]));
    unit = BL_MAX(unit, spread * BL_ULP);
    unit = BL_CLAMP_MIN(unit, (R)1e-30);
    R a[6], b[6], dab[4][4], dba[4][4], dots_ab[4], dots_ba[4];
    BL_CAT(bl_rot_frame, SFX)(fa, ox, oy, unit, a);
    BL_CAT(bl_rot_frame, SFX)(fb, ox, oy, unit, b);
    const R tol = (1 + BL_ABS(a[0]) + BL_ABS(a[1]) + BL_ABS(b[0]) + BL_ABS(b[1])) * (64 * BL_ULP);
    BL_CAT(bl_rot_table, SFX)(a, b, dab, dots_ab);
    BL_CAT(bl_rot_table, SFX)(b, a, dba, dots_ba);
    const R area_a = 4 * a[2] * a[3], area_b = 4 * b[2] * b[3];
    R inter = BL_CAT(bl_rot_edges, SFX)(a, dab, dots_ab, tol, 1) + BL_CAT(bl_rot_edges, SFX)(b, dba, dots_ba, tol, 0);
    inter = BL_MIN(BL_CLAMP_MIN(inter, (R)0), BL_MIN(area_a, area_b));
    const R uni = area_a + area_b - inter;
    return inter / BL_CLAMP_MIN(uni, eps) + guard;
}

void BL_CAT(boxloss_rotated_iou_pairwise, SFX)(const R *restrict A, const R *restrict B, R *restrict O, long batch,
                                               long n, long m, double eps_d, int threads) {
    const R eps = (R)eps_d;
    (void)threads;
    _Pragma("omp parallel for schedule(dynamic, 4) num_threads(threads) collapse(2)")
    for (long s = 0; s < batch; ++s)
    for (long i = 0; i < n; ++i) {
        const R *a = A + (s * n + i) * 6;
        const R *bt = B + s * 6 * m;
        R *o = O + (s * n + i) * m;
        const R exa = a[2] * BL_ABS(a[4]) + a[3] * BL_ABS(a[5]), eya = a[2] * BL_ABS(a[5]) + a[3] * BL_ABS(a[4]);
        for (long j = 0; j < m; ++j) {
            R b[6];
            for (int k = 0; k < 6; ++k) b[k] = bt[k * m + j];
            const R exb = b[2] * BL_ABS(b[4]) + b[3] * BL_ABS(b[5]), eyb = b[2] * BL_ABS(b[5]) + b[3] * BL_ABS(b[4]);
            if (BL_ABS(a[0] - b[0]) > exa + exb || BL_ABS(a[1] - b[1]) > eya + eyb) { o[j] = 0; continue; }
            o[j] = BL_CAT(bl_rot_iou, SFX)(a, b, eps);
        }
    }
}
