/* Pairwise rotated IoU without gradient: boxloss/rotated.py's formula (RotatedPair.iou) hand-written with
 * branches, for the one pairwise score that speed matters most for (matching, NMS, evaluation).
 *
 * The generated kernel of the same formula evaluates every clip of every edge against every plane with selects
 * (it has to: it is straight-line code); this one skips pairs whose bounding boxes are apart. The arithmetic and
 * the rules (the second box's frame, the relative angle, crossings computed once for both edges, parallel edges
 * decided by one offset, coincident edges counted once) are the formula's, in the same order; the library is
 * compiled without floating-point contraction, as the formula is evaluated. tests/core/test_rotated.py checks this
 * kernel against the formula on random, coincident, touching, tiny and nearly parallel boxes.
 *
 * Included by the generated rotated library once per type, with R, BL_ULP and SFX defined. Inputs: features
 * (cx, cy, w/2, h/2, θ in degrees, cos θ, sin θ), A row-major (batch, n, 7), B column-major (batch, 7, m). */

#define BL_ROT_FEATURES 7

static R BL_CAT(bl_rot_iou, SFX)(const R *fa, const R *fb, R eps) {
    R guard = fa[0] - fa[0];
    for (int k = 1; k < BL_ROT_FEATURES; ++k) guard = guard + (fa[k] - fa[k]);
    for (int k = 0; k < BL_ROT_FEATURES; ++k) guard = guard + (fb[k] - fb[k]);
    /* the frame of b; a's angle relative to it in [-45, 45) */
    R d = fa[4] - fb[4];
    R a1 = fa[2], b1 = fa[3];
    if (d >= (R)45) { d = d - (R)90; a1 = fa[3]; b1 = fa[2]; }
    else if (d < (R)-45) { d = d + (R)90; a1 = fa[3]; b1 = fa[2]; }
    const R a2 = fb[2], b2 = fb[3];
    const R rx = fa[0] - fb[0], ry = fa[1] - fb[1];
    R pu = rx * fb[5] - ry * fb[6];
    R pv = rx * fb[6] + ry * fb[5];
    const R spread = BL_ABS(pu) + BL_ABS(pv);
    const R half = BL_MAX(BL_MAX(BL_MAX(a1, b1), a2), b2);
    const R unit = BL_CLAMP_MIN(BL_MAX(half, spread * BL_ULP), (R)1e-30);
    pu = pu / unit;
    pv = pv / unit;
    const int smaller = a1 * b1 <= a2 * b2;
    const R rad = d * (R)0.017453292519943295;
    const R c = BL_COS(rad), s = BL_SIN(rad);
    const R ax = smaller ? (R)0 : pu, ay = smaller ? (R)0 : pv;
    const R bx = smaller ? -pu : (R)0, by = smaller ? -pv : (R)0;
    const R a = a1 / unit, b = b1 / unit, A2 = a2 / unit, B2 = b2 / unit;
    const R area_a = 4 * a * b, area_b = 4 * A2 * B2;

    static const R su[4] = {-1, 1, 1, -1}, sv[4] = {-1, -1, 1, 1};
    R p[4][2], t[4][2], len[4];
    for (int k = 0; k < 4; ++k) {
        p[k][0] = ax + su[k] * a * c + sv[k] * b * s;
        p[k][1] = ay - su[k] * a * s + sv[k] * b * c;
    }
    t[0][0] = c;  t[0][1] = -s;
    t[1][0] = s;  t[1][1] = c;
    t[2][0] = -c; t[2][1] = s;
    t[3][0] = -s; t[3][1] = -c;
    len[0] = 2 * a; len[1] = 2 * b; len[2] = 2 * a; len[3] = 2 * b;
    /* b's edge lines: axis, outward sign, coordinate, range along the edge */
    const int axis[4] = {0, 0, 1, 1};
    const R sign[4] = {1, -1, 1, -1};
    const R line[4] = {bx + A2, bx - A2, by + B2, by - B2};
    R b_lo[4] = {by - B2, by - B2, bx - A2, bx - A2};
    R b_hi[4] = {by + B2, by + B2, bx + A2, bx + A2};
    int b_out[4] = {0, 0, 0, 0};
    R sa[4];
    for (int i = 0; i < 4; ++i) {
        R lo = 0, hi = len[i];
        int a_out = 0;
        for (int j = 0; j < 4; ++j) {
            const int ax_ = axis[j], other = 1 - ax_;
            const R t_ax = t[i][ax_];
            const int par = BL_ABS(t_ax) < (R)1e-15;
            if (!par) {
                const R lam = (line[j] - p[i][ax_]) / t_ax;
                const R cross = p[i][other] + lam * t[i][other];
                const R comp = sign[j] > 0 ? t_ax : -t_ax;
                if (comp < 0) { if (lam > lo) lo = lam; }
                else if (comp > 0) { if (lam < hi) hi = lam; }
                const R n_other = ax_ == 0 ? -t_ax : t_ax;
                if (n_other > 0) { if (cross < b_hi[j]) b_hi[j] = cross; }
                else if (n_other < 0) { if (cross > b_lo[j]) b_lo[j] = cross; }
            } else {
                const R diff = p[i][ax_] - line[j];
                const R dd = sign[j] > 0 ? diff : -diff;
                const R n_axis = ax_ == 0 ? t[i][1] : -t[i][0];
                const int same = sign[j] > 0 ? n_axis > 0 : n_axis < 0;
                if (dd > 0 || (dd == 0 && !same)) a_out = 1;
                if ((same && dd <= 0) || (!same && dd >= 0)) b_out[j] = 1;
            }
        }
        const R l = a_out ? (R)0 : BL_CLAMP_MIN(hi - lo, (R)0);
        sa[i] = l * (p[i][0] * t[i][1] - p[i][1] * t[i][0]);
    }
    R sb[4];
    for (int j = 0; j < 4; ++j) {
        const R l = b_out[j] ? (R)0 : BL_CLAMP_MIN(b_hi[j] - b_lo[j], (R)0);
        sb[j] = l * (sign[j] > 0 ? line[j] : -line[j]);
    }
    R inter = (((sa[0] + sa[2]) + (sa[1] + sa[3])) + ((sb[0] + sb[2]) + (sb[1] + sb[3]))) * (R)0.5;
    inter = BL_MIN(BL_CLAMP_MIN(inter, (R)0), BL_MIN(area_a, area_b));
    const R uni = area_a + area_b - inter;
    (void)eps; /* areas are in units of the pair's largest half-side: no eps clamp (rotated._ratio) */
    return (uni > 0 ? inter / uni : (R)0) + guard;
}

void BL_CAT(boxloss_rotated_iou_pairwise, SFX)(const R *restrict A, const R *restrict B, R *restrict O, long batch,
                                               long n, long m, double eps_d, int threads) {
    const R eps = (R)eps_d;
    (void)threads;
    BL_WATCH_START;
    _Pragma("omp parallel for schedule(dynamic, 4) num_threads(threads) collapse(2)")
    for (long s = 0; s < batch; ++s)
    for (long i = 0; i < n; ++i) {
        const R *a = A + (s * n + i) * BL_ROT_FEATURES;
        const R *bt = B + s * BL_ROT_FEATURES * m;
        R *o = O + (s * n + i) * m;
        const R exa = a[2] * BL_ABS(a[5]) + a[3] * BL_ABS(a[6]), eya = a[2] * BL_ABS(a[6]) + a[3] * BL_ABS(a[5]);
        R ga = (R)0;  /* 0, or NaN when a feature of the row box is NaN or infinite */
        for (int k = 0; k < BL_ROT_FEATURES; ++k) ga = ga + (a[k] - a[k]);
        for (long j = 0; j < m; ++j) {
            R b[BL_ROT_FEATURES];
            for (int k = 0; k < BL_ROT_FEATURES; ++k) b[k] = bt[k * m + j];
            const R exb = b[2] * BL_ABS(b[5]) + b[3] * BL_ABS(b[6]), eyb = b[2] * BL_ABS(b[6]) + b[3] * BL_ABS(b[5]);
            if (BL_ABS(a[0] - b[0]) > exa + exb || BL_ABS(a[1] - b[1]) > eya + eyb) {
                /* apart: 0, or NaN when a feature is NaN or infinite (as bl_rot_iou's guard, and the reference).
                 * Of the column box only features 0, 1 and 4 can be: a NaN or infinity in the others makes both
                 * tests above false, and the pair goes to bl_rot_iou */
                o[j] = ga + (b[0] - b[0]) + (b[1] - b[1]) + (b[4] - b[4]);
                continue;
            }
            o[j] = BL_CAT(bl_rot_iou, SFX)(a, b, eps);
        }
        BL_CHUNK_DONE;
    }
    BL_WATCH_END;
}
