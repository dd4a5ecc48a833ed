/* phosphene.edge._kernel: the per-patch work of the int8 decision path in one call each.
 *
 * quantise(x, center, inv, q, out) -> bool
 *     x (n*C float32 uV) -> out (n*C int8): the normaliser's (x - center) * inv, its +-clip
 *     (only when q[6] != 0), then the model's input quantisation x / scale + zero_point,
 *     clipped to [lo, hi] and rounded half to even. The same float32 operations in the same
 *     order as EdgeNormaliser._quantised's numpy ufuncs, element by element, so the bytes are
 *     the same (IEEE-754 add, subtract, multiply and divide are correctly rounded; this file
 *     is compiled without contraction into fused multiply-adds, see setup.py).
 *     center and inv hold C values (one row, broadcast) or n*C (per row).
 *     q = float32 [scale, zero_point, lo, hi, zclip_lo, zclip_hi, use_zclip].
 *     Returns False, writing nothing, when x holds a NaN (the caller stores the block as lost).
 *
 * has_nan(x) -> bool
 *     Any NaN in a float32 buffer.
 *
 * dot_int8(codes, w) -> float
 *     sum(codes[i] * w[i]) in double: the probe on the int8 output codes (codes int8, w float64).
 *
 * Buffers are taken through the buffer protocol (numpy arrays, C-contiguous); a wrong type or
 * size raises TypeError / ValueError, never reads out of bounds. The pure-numpy path in
 * edge/normaliser.py is the reference and the fallback when this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF

static const float ROUND_MAGIC = 12582912.0f;  /* 1.5 * 2^23 */

static int
get_buffer(PyObject *obj, Py_buffer *view, const char *fmt, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (f[0] == '=' || f[0] == '<' || f[0] == '@')
        f++;
    /* int64: numpy says 'l' where long is 64 bits, 'q' elsewhere */
    int same = strcmp(f, fmt) == 0
               || (strcmp(fmt, "q") == 0 && strcmp(f, "l") == 0 && view->itemsize == 8);
    if (!same) {
        PyErr_Format(PyExc_TypeError, "%s: expected a buffer of format '%s', got '%s'",
                     name, fmt, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static int
any_nan(const float *x, Py_ssize_t n)
{
    int found = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        found |= (x[i] != x[i]);
    return found;
}

/* The arithmetic of quantise(), rows of nc values (nc == n: one row). On x86-64 an AVX2
 * clone is picked at load time where the CPU has it (same IEEE operations, 8 lanes). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void
quantise_rows(const float *restrict xs, const float *restrict cs, const float *restrict vs,
              const float *restrict qs, signed char *restrict out, Py_ssize_t n, Py_ssize_t nc)
{
    const float scale = qs[0], zp = qs[1], lo = qs[2], hi = qs[3], zlo = qs[4], zhi = qs[5];
    const int use_zclip = qs[6] != 0.0f;
    for (Py_ssize_t base = 0; base < n; base += nc) {  /* rows of nc (nc == n: one row) */
        const float *xr = xs + base;
        signed char *orow = out + base;
        for (Py_ssize_t j = 0; j < nc; j++) {
            float b = (xr[j] - cs[j]) * vs[j];
            if (use_zclip)
                b = b < zlo ? zlo : (b > zhi ? zhi : b);
            b = b / scale + zp;
            b = b < lo ? lo : (b > hi ? hi : b);
            b = b == b ? b : 0.0f;  /* NaN (non-finite statistics): 0, as numpy's cast gives on x86,
                                     * without the undefined float -> int conversion */
            /* round half to even: lo and hi are whole numbers within +-2^22, where adding and
             * subtracting 1.5 * 2^23 rounds to the nearest integer, ties to even, exactly */
            b = (b + ROUND_MAGIC) - ROUND_MAGIC;
            orow[j] = (signed char)b;
        }
    }
}

static PyObject *
k_quantise(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "quantise(x, center, inv, q, out) takes 5 arguments");
        return NULL;
    }
    Py_buffer x, c, v, q, o;
    if (get_buffer(args[0], &x, "f", 0, "x") < 0)
        return NULL;
    if (get_buffer(args[1], &c, "f", 0, "center") < 0)
        goto fail_x;
    if (get_buffer(args[2], &v, "f", 0, "inv") < 0)
        goto fail_c;
    if (get_buffer(args[3], &q, "f", 0, "q") < 0)
        goto fail_v;
    if (get_buffer(args[4], &o, "b", 1, "out") < 0)
        goto fail_q;

    Py_ssize_t n = x.len / (Py_ssize_t)sizeof(float);
    Py_ssize_t nc = c.len / (Py_ssize_t)sizeof(float);
    if (o.len != n || v.len != c.len || q.len != 7 * (Py_ssize_t)sizeof(float) || nc == 0
        || (nc != n && (x.ndim < 1 || x.shape[x.ndim - 1] != nc))) {
        PyErr_SetString(PyExc_ValueError,
                        "quantise: out must match x, center and inv be one row of x or all of it, "
                        "q 7 values");
        goto fail_o;
    }
    const float *xs = (const float *)x.buf, *cs = (const float *)c.buf, *vs = (const float *)v.buf;
    const float *qs = (const float *)q.buf;
    signed char *out = (signed char *)o.buf;
    if (any_nan(xs, n)) {
        PyBuffer_Release(&o); PyBuffer_Release(&q); PyBuffer_Release(&v);
        PyBuffer_Release(&c); PyBuffer_Release(&x);
        Py_RETURN_FALSE;
    }
    quantise_rows(xs, cs, vs, qs, out, n, nc);
    PyBuffer_Release(&o); PyBuffer_Release(&q); PyBuffer_Release(&v);
    PyBuffer_Release(&c); PyBuffer_Release(&x);
    Py_RETURN_TRUE;

fail_o:
    PyBuffer_Release(&o);
fail_q:
    PyBuffer_Release(&q);
fail_v:
    PyBuffer_Release(&v);
fail_c:
    PyBuffer_Release(&c);
fail_x:
    PyBuffer_Release(&x);
    return NULL;
}

static PyObject *
k_has_nan(PyObject *self, PyObject *arg)
{
    Py_buffer x;
    if (get_buffer(arg, &x, "f", 0, "x") < 0)
        return NULL;
    int found = any_nan((const float *)x.buf, x.len / (Py_ssize_t)sizeof(float));
    PyBuffer_Release(&x);
    return PyBool_FromLong(found);
}

static PyObject *
k_dot_int8(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "dot_int8(codes, w) takes 2 arguments");
        return NULL;
    }
    Py_buffer a, w;
    if (get_buffer(args[0], &a, "b", 0, "codes") < 0)
        return NULL;
    if (get_buffer(args[1], &w, "d", 0, "w") < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    Py_ssize_t n = a.len;
    if (w.len != n * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(&a); PyBuffer_Release(&w);
        PyErr_SetString(PyExc_ValueError, "dot_int8: codes and w differ in length");
        return NULL;
    }
    const signed char *as = (const signed char *)a.buf;
    const double *ws = (const double *)w.buf;
    double z = 0.0;
    for (Py_ssize_t i = 0; i < n; i++)
        z += (double)as[i] * ws[i];
    PyBuffer_Release(&a); PyBuffer_Release(&w);
    return PyFloat_FromDouble(z);
}

/* ---- the statistics refresh: median and MAD of sorted rows plus a few new values ----- */

#define MERGE_MAX_RECENT 256
#define N_BANDS 3

/* One channel's sorted row. `band` holds copies of three short runs of it (made by bands()
 * in idle time, where the merge is expected to read): a read there stays in a few cache
 * lines instead of touching the whole row, which another core sorted. Any other index is
 * read from the row itself, so where the bands sit changes the time, never the result. */
typedef struct {
    const float *row;
    Py_ssize_t n;
    const float *band;  /* N_BANDS x stride, or NULL */
    const long long *start;  /* N_BANDS first indices */
    Py_ssize_t width;  /* values of each band that hold the row: min(stride, n) */
    Py_ssize_t stride;  /* the band array's last dimension */
} Row;

static inline float
at(const Row *r, Py_ssize_t i)
{
    if (r->band != NULL) {
        for (int b = 0; b < N_BANDS; b++) {
            size_t off = (size_t)i - (size_t)r->start[b];  /* unsigned: no overflow for any start */
            if (off < (size_t)r->width)
                return r->band[b * r->stride + (Py_ssize_t)off];
        }
    }
    return r->row[i];
}

static void
sort_small(float *v, Py_ssize_t m)  /* insertion sort: m is a handful of values */
{
    for (Py_ssize_t i = 1; i < m; i++) {
        float t = v[i];
        Py_ssize_t j = i;
        for (; j > 0 && v[j - 1] > t; j--)
            v[j] = v[j - 1];
        v[j] = t;
    }
}

/* The values of ranks k and k + 1 of the row together with sorted e (m), k + 1 < n + m:
 * every row[i] with i < k - m ranks below k, so both lie within a merge from
 * row[max(0, k - m)] and e[0] of at most m + 2 steps. */
static void
two_ranks(const Row *s, const float *e, Py_ssize_t m, Py_ssize_t k, float *at_k, float *at_k1)
{
    Py_ssize_t lo = k - m > 0 ? k - m : 0, i = lo, j = 0;
    for (Py_ssize_t r = lo; r <= k + 1; r++) {
        float v;
        if (j >= m || (i < s->n && at(s, i) <= e[j]))
            v = at(s, i++);
        else
            v = e[j++];
        if (r == k)
            *at_k = v;
        else
            *at_k1 = v;
    }
}

/* The same for distances to c, the median of the row and the m values (ranks r1, r2 =
 * r1 or r1 + 1 of them). Split the row at p, row[p - 1] <= c <= row[p]: it gives two
 * non-decreasing runs of distances, c - row[p - 1 - t] and row[p + t] - c, each exactly
 * |row - c| in float32 (x - y == -(y - x) under round to nearest; a value equal to c is 0
 * on either side). Every row[i] with i < r1 - m is <= c and every one with i > r2 is >= c,
 * so p can be found within [r1 - m, r2 + 1]. e holds the m new distances, sorted. The
 * first lo = max(0, k - m) of the two runs' union are found by a search from `guess`
 * (bands(): where the split lay without the new values), then m + 2 merge steps give
 * ranks k and k + 1. */
static void
two_distance_ranks(const Row *s, float c, Py_ssize_t r1, Py_ssize_t r2, const float *e,
                   Py_ssize_t m, Py_ssize_t k, Py_ssize_t guess, float *at_k, float *at_k1)
{
    const Py_ssize_t n = s->n;
    Py_ssize_t p = r1 - m > 0 ? r1 - m : 0, hi = r2 + 1 < n ? r2 + 1 : n;
    while (p < hi) {  /* the first row value >= c in [r1 - m, r2 + 1), else r2 + 1 */
        Py_ssize_t mid = p + (hi - p) / 2;
        if (at(s, mid) < c)
            p = mid + 1;
        else
            hi = mid;
    }
    const Py_ssize_t nl = p, nr = n - p;
#define DL(t) (c - at(s, p - 1 - (t)))
#define DR(t) (at(s, p + (t)) - c)
#define TAKES_LEFT(a) (DL(a) < DR(lo - (a) - 1))  /* the split needs more than a from the left */
    const Py_ssize_t lo = k - m > 0 ? k - m : 0;
    Py_ssize_t a_lo = lo - nr > 0 ? lo - nr : 0, a_hi = lo < nl ? lo : nl;
    /* the smallest a in [a_lo, a_hi] with not TAKES_LEFT(a) (a_hi if none): bracket it by
     * doubling steps from the guess, then bisect */
    Py_ssize_t g = guess < a_lo ? a_lo : (guess > a_hi ? a_hi : guess);
    if (g < a_hi && TAKES_LEFT(g)) {
        Py_ssize_t step = 1, left = g + 1;
        for (;;) {
            Py_ssize_t x = left + step - 1;
            if (x >= a_hi) { a_lo = left; break; }
            if (!TAKES_LEFT(x)) { a_lo = left; a_hi = x; break; }
            left = x + 1;
            step *= 2;
        }
    } else {
        Py_ssize_t step = 1, right = g;  /* the answer is <= right */
        for (;;) {
            Py_ssize_t x = right - step;
            if (x < a_lo) { a_hi = right; break; }
            if (TAKES_LEFT(x)) { a_lo = x + 1; a_hi = right; break; }
            right = x;
            step *= 2;
        }
    }
    Py_ssize_t a = a_lo, a_end = a_hi;
    while (a < a_end) {
        Py_ssize_t mid = a + (a_end - a) / 2;
        if (TAKES_LEFT(mid))
            a = mid + 1;
        else
            a_end = mid;
    }
    Py_ssize_t i = a, j = lo - a, q = 0;
    for (Py_ssize_t r = lo; r <= k + 1; r++) {
        float best = 0.0f;
        int which = -1;
        if (i < nl) { best = DL(i); which = 0; }
        if (j < nr && (which < 0 || DR(j) < best)) { best = DR(j); which = 1; }
        if (q < m && (which < 0 || e[q] < best)) { best = e[q]; which = 2; }
        if (which == 0) i++; else if (which == 1) j++; else q++;
        if (r == k)
            *at_k = best;
        else if (r == k + 1)
            *at_k1 = best;
    }
#undef TAKES_LEFT
#undef DL
#undef DR
}

/* median and MAD of one channel: row plus m values ev (sorted here); dv: scratch of m */
static void
channel_stats(const Row *s, float *ev, float *dv, Py_ssize_t m, Py_ssize_t guess,
              float *center, float *mad)
{
    const Py_ssize_t N = s->n + m, r1 = (N - 1) / 2, r2 = N / 2;
    sort_small(ev, m);
    float v1 = 0.0f, v2 = 0.0f;
    two_ranks(s, ev, m, r1, &v1, &v2);
    /* np.median: the mean of the middle value(s), summed from +0.0 as numpy sums (so never -0.0) */
    const float c = r1 == r2 ? 0.0f + v1 : ((0.0f + v1) + v2) / 2.0f;
    for (Py_ssize_t t = 0; t < m; t++)
        dv[t] = fabsf(ev[t] - c);
    sort_small(dv, m);
    two_distance_ranks(s, c, r1, r2, dv, m, r1, guess, &v1, &v2);
    *center = c;
    *mad = r1 == r2 ? 0.0f + v1 : ((0.0f + v1) + v2) / 2.0f;
}

static Py_ssize_t
clamp_start(Py_ssize_t centre, Py_ssize_t width, Py_ssize_t n)
{
    Py_ssize_t start = centre - width / 2;
    if (start > n - width)
        start = n - width;
    return start < 0 ? 0 : start;
}

/* bands(rows, m, band, start) -> None, in idle time: for each channel, the row's statistics
 * without the m values still to come give where merge_stats will read: around the median
 * and around the two ends of the MAD's run. band (C, 3, width float32) receives copies of
 * the row there, start (C, 4 int64) their first indices and the split's guess. */
static PyObject *
k_bands(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "bands(rows, m, band, start) takes 4 arguments");
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[1]);
    if (m == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer r, b, st;
    if (get_buffer(args[0], &r, "f", 0, "rows") < 0)
        return NULL;
    if (get_buffer(args[2], &b, "f", 1, "band") < 0) {
        PyBuffer_Release(&r);
        return NULL;
    }
    if (get_buffer(args[3], &st, "q", 1, "start") < 0) {
        PyBuffer_Release(&b); PyBuffer_Release(&r);
        return NULL;
    }
    PyObject *result = NULL;
    if (r.ndim != 2 || b.ndim != 3 || st.ndim != 2 || r.shape[1] < 2 || m < 0 || m > MERGE_MAX_RECENT
        || b.shape[0] != r.shape[0] || b.shape[1] != N_BANDS || st.shape[0] != r.shape[0]
        || st.shape[1] != N_BANDS + 1 || b.shape[2] < 1) {
        PyErr_SetString(PyExc_ValueError, "bands: rows (C, n >= 2), 0 <= m <= 256, band (C, 3, width), "
                        "start (C, 4)");
        goto done;
    }
    const Py_ssize_t C = r.shape[0], n = r.shape[1], W = b.shape[2] < n ? b.shape[2] : n;
    const Py_ssize_t N = n + m, r1 = (N - 1) / 2;
    const float *rows = (const float *)r.buf;
    float *band = (float *)b.buf;
    long long *start = (long long *)st.buf;
    for (Py_ssize_t ch = 0; ch < C; ch++) {
        const Row s = {rows + ch * n, n, NULL, NULL, 0, 0};
        float center = 0.0f, mad = 0.0f;
        channel_stats(&s, NULL, NULL, 0, (n - 1) / 2 / 2, &center, &mad);
        /* the MAD run's two ends in the row: the first value >= center - mad, the last <= center + mad */
        Py_ssize_t lo_end = 0, hi_end = n, x = n;
        while (lo_end < x) {
            Py_ssize_t mid = lo_end + (x - lo_end) / 2;
            if (s.row[mid] < center - mad) lo_end = mid + 1; else x = mid;
        }
        x = 0;
        while (x < hi_end) {
            Py_ssize_t mid = x + (hi_end - x) / 2;
            if (s.row[mid] <= center + mad) x = mid + 1; else hi_end = mid;
        }
        Py_ssize_t centres[N_BANDS] = {r1 - m / 2, lo_end, hi_end - 1};
        long long *chs = start + ch * (N_BANDS + 1);
        for (int k = 0; k < N_BANDS; k++) {
            Py_ssize_t s0 = clamp_start(centres[k], W, n);
            chs[k] = (long long)s0;
            memcpy(band + (ch * N_BANDS + k) * b.shape[2], s.row + s0, (size_t)W * sizeof(float));
        }
        /* the guess for the split: left distances taken = values between the MAD's low end and p */
        Py_ssize_t p = r1 - m > 0 ? r1 - m : 0;
        chs[N_BANDS] = (long long)(p - lo_end > 0 ? p - lo_end : 0);
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&st); PyBuffer_Release(&b); PyBuffer_Release(&r);
    return result;
}

/* merge_stats(rows, ring, slots, center, out, band, start[, floor]) -> bool
 *     rows (C x n float32, each row sorted); ring (R x C float32) and slots (m int64): the m
 *     values per channel still to come are ring[slots[t]]; center and out (C float32) are
 *     written: np.median of each channel's n + m values, and np.median of their distances
 *     to it (the MAD), as numpy computes them (the two middle values summed and halved in
 *     float32). With `floor` (a constant scale floor), out receives the core's 1 / scale
 *     instead of the MAD: 1 / max(1.4826 * MAD, floor), each step in float32 as numpy does
 *     it (phosphene.signal.inverse_scale). band and start (from bands() for this m) only
 *     say where to read. False, writing nothing, when a value still to come is not finite
 *     or m is larger than this kernel merges (the caller computes it otherwise). */
static PyObject *
k_merge_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "merge_stats(rows, ring, slots, center, out, band, "
                        "start[, floor]) takes 7 or 8 arguments");
        return NULL;
    }
    double floor_uv = 0.0;
    const int with_floor = nargs == 8;
    if (with_floor) {
        floor_uv = PyFloat_AsDouble(args[7]);
        if (floor_uv == -1.0 && PyErr_Occurred())
            return NULL;
    }
    static const char *const names[7] = {"rows", "ring", "slots", "center", "out", "band", "start"};
    static const char *const fmts[7] = {"f", "f", "q", "f", "f", "f", "q"};
    static const int writable[7] = {0, 0, 0, 1, 1, 0, 0};
    Py_buffer v[7];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 7; got++)
        if (get_buffer(args[got], &v[got], fmts[got], writable[got], names[got]) < 0)
            goto done;
    const Py_buffer *r = &v[0], *ring = &v[1], *sl = &v[2], *c = &v[3], *o = &v[4], *b = &v[5],
                    *st = &v[6];
    const Py_ssize_t C = c->len / (Py_ssize_t)sizeof(float), m = sl->len / 8;
    const Py_ssize_t ring_rows = C ? ring->len / (Py_ssize_t)sizeof(float) / C : 0;
    if (r->ndim != 2 || r->shape[0] != C || o->len != c->len || C == 0 || r->shape[1] < 2
        || ring->len != ring_rows * C * (Py_ssize_t)sizeof(float)
        || b->ndim != 3 || b->shape[0] != C || b->shape[1] != N_BANDS
        || st->ndim != 2 || st->shape[0] != C || st->shape[1] != N_BANDS + 1) {
        PyErr_SetString(PyExc_ValueError, "merge_stats: rows (C, n >= 2), ring (R, C), slots (m,), "
                        "center and out (C,), band (C, 3, width), start (C, 4)");
        goto done;
    }
    const long long *slots = (const long long *)sl->buf;
    for (Py_ssize_t t = 0; t < m; t++) {
        if (slots[t] < 0 || slots[t] >= ring_rows) {
            PyErr_SetString(PyExc_IndexError, "merge_stats: a slot outside the ring");
            goto done;
        }
    }
    const Py_ssize_t n = r->shape[1], W = b->shape[2] < n ? b->shape[2] : n;
    const float *rows = (const float *)r->buf, *values = (const float *)ring->buf;
    float *center = (float *)c->buf, *out = (float *)o->buf;
    int ok = m <= MERGE_MAX_RECENT;
    for (Py_ssize_t t = 0; ok && t < m; t++)
        for (Py_ssize_t ch = 0; ok && ch < C; ch++)
            ok = isfinite(values[slots[t] * C + ch]);
    if (ok) {
        const float floor_f = (float)floor_uv, k_mad = 1.4826f;
        float ev[MERGE_MAX_RECENT], dv[MERGE_MAX_RECENT];
        for (Py_ssize_t ch = 0; ch < C; ch++) {
            const long long *chs = (const long long *)st->buf + ch * (N_BANDS + 1);
            Row s = {rows + ch * n, n, (const float *)b->buf + ch * N_BANDS * b->shape[2], chs, W,
                     b->shape[2]};
            for (Py_ssize_t t = 0; t < m; t++)
                ev[t] = values[slots[t] * C + ch];
            float mad;
            channel_stats(&s, ev, dv, m, (Py_ssize_t)chs[N_BANDS], center + ch, &mad);
            if (with_floor) {
                float scale = k_mad * mad;
                scale = scale > floor_f ? scale : floor_f;  /* np.maximum (no NaN here) */
                out[ch] = 1.0f / scale;
            } else {
                out[ch] = mad;
            }
        }
    }
    result = PyBool_FromLong(ok);
done:
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
}

static PyMethodDef methods[] = {
    {"quantise", (PyCFunction)(void (*)(void))k_quantise, METH_FASTCALL,
     "quantise(x, center, inv, q, out) -> bool: normalise and quantise float32 x into int8 out"},
    {"has_nan", k_has_nan, METH_O, "has_nan(x) -> bool: any NaN in a float32 buffer"},
    {"dot_int8", (PyCFunction)(void (*)(void))k_dot_int8, METH_FASTCALL,
     "dot_int8(codes, w) -> float: int8 codes . float64 weights, in double"},
    {"merge_stats", (PyCFunction)(void (*)(void))k_merge_stats, METH_FASTCALL,
     "merge_stats(rows, ring, slots, center, out, band, start[, floor]) -> bool: median and "
     "MAD (or 1 / scale) of sorted rows plus m values from the ring"},
    {"bands", (PyCFunction)(void (*)(void))k_bands, METH_FASTCALL,
     "bands(rows, m, band, start): where merge_stats will read each row, copied (idle time)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel",
    "The int8 decision path's per-patch work, compiled (edge/_kernel.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__kernel(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MERGE_MAX_RECENT", MERGE_MAX_RECENT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
