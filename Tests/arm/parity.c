// Parity harness for the C kernels, built for any architecture (aarch64 under qemu included):
// runs every case file of export_cases.py on every kernel path this CPU runs (or those named)
// and checks int8 results bit for bit and float results within 1e-4 of the output range.
//
//   parity CASE_DIR [path ...]     prints one line per path and "N passed, N failed"
#include "SlimKernels.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { const unsigned char *p, *end; int bad; } reader;

static int32_t rint32(reader *r) {
    int32_t v = 0;
    if (r->end - r->p < 4) { r->bad = 1; return 0; }
    memcpy(&v, r->p, 4);
    r->p += 4;
    return v;
}

static const void *rarray(reader *r, size_t want) {
    int32_t n = rint32(r);
    if (n < 0 || (size_t)n != want || r->end - r->p < n) { r->bad = 1; return NULL; }
    const void *a = r->p;
    r->p += n;
    return a;
}

typedef struct { int ci, co, kh, kw, sh, sw, ph, pw, dh, dw, groups, extra; } layer_geom;

static int out_size(int in, int k, int s, int p, int d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

/// Runs one int8 layer: x (h×w×ci) → y (oh×ow×co), requantized bytes, or floats where `yf32`
/// (SlimKernels.h's y_f32: 1 dequantized, 2 also ReLU; ys unused). Returns SLIM_OK or the kernel's error.
static int qlayer_out(int path, const layer_geom *g, const int8_t *w, const float *ws, const int32_t *bias, float xs,
                      int xzp, float ys, const uint8_t *x, int h, int wd, void *y, int yf32) {
    const int cig = g->ci / g->groups, cog = g->co / g->groups, taps = g->kh * g->kw;
    size_t d4, pe;
    slim_qconv_pack_sizes(cog, cig, taps, &d4, &pe);
    int8_t *dot4 = malloc(d4);
    int16_t *pairs = malloc(pe * sizeof(int16_t));
    int32_t *wsum = malloc(sizeof(int32_t) * (size_t)cog);
    float *mult = malloc(sizeof(float) * (size_t)g->co);
    for (int o = 0; o < g->co; o++) mult[o] = yf32 ? xs * ws[o] : xs * ws[o] / ys;
    slim_qconv_args a;
    memset(&a, 0, sizeof a);
    a.path = path;
    a.in_h = h; a.in_w = wd; a.in_cs = g->ci; a.ci = cig;
    a.out_h = out_size(h, g->kh, g->sh, g->ph, g->dh); a.out_w = out_size(wd, g->kw, g->sw, g->pw, g->dw);
    a.out_cs = g->co; a.co = cog;
    a.kh = g->kh; a.kw = g->kw; a.sh = g->sh; a.sw = g->sw; a.ph = g->ph; a.pw = g->pw; a.dh = g->dh; a.dw = g->dw;
    a.x_zp = xzp; a.y_zp = g->extra; a.y_f32 = yf32;
    a.scratch_bytes = slim_qconv_scratch_bytes(&a);
    a.scratch = malloc(a.scratch_bytes);
    int rc = SLIM_OK;
    for (int grp = 0; grp < g->groups && rc == SLIM_OK; grp++) {
        slim_qconv_pack(w + (size_t)grp * cog * cig * taps, cog, cig, taps, dot4, pairs, wsum);
        a.in_c0 = grp * cig; a.out_c0 = grp * cog;
        a.dot4 = dot4; a.pairs = pairs; a.wsum = wsum;
        a.bias = bias + grp * cog; a.mult = mult + grp * cog;
        rc = slim_qconv(&a, x, y);
    }
    free(dot4); free(pairs); free(wsum); free(mult); free(a.scratch);
    return rc;
}

static int qlayer(int path, const layer_geom *g, const int8_t *w, const float *ws, const int32_t *bias, float xs, int xzp,
                  float ys, const uint8_t *x, int h, int wd, uint8_t *y) {
    return qlayer_out(path, g, w, ws, bias, xs, xzp, ys, x, h, wd, y, 0);
}

/// Runs one float layer on a zero-padded copy of x.
static int flayer(int path, const layer_geom *g, const float *w, const float *bias, const float *x, int h, int wd, float *y) {
    const int cig = g->ci / g->groups, cog = g->co / g->groups, taps = g->kh * g->kw, chunks = (cog + 15) / 16;
    const int hp = h + 2 * g->ph, wp = wd + 2 * g->pw;
    float *xp = calloc((size_t)hp * wp * g->ci + 16, sizeof(float));
    for (int r = 0; r < h; r++) memcpy(xp + ((size_t)(r + g->ph) * wp + g->pw) * g->ci, x + (size_t)r * wd * g->ci, sizeof(float) * (size_t)wd * g->ci);
    float *pack = malloc(sizeof(float) * (size_t)taps * cig * chunks * 16);
    float *b = calloc((size_t)chunks * 16, sizeof(float));
    slim_fconv_args a;
    memset(&a, 0, sizeof a);
    a.path = path;
    a.in_h = hp; a.in_w = wp; a.in_cs = g->ci; a.ci = cig;
    a.out_h = out_size(h, g->kh, g->sh, g->ph, g->dh); a.out_w = out_size(wd, g->kw, g->sw, g->pw, g->dw);
    a.out_cs = g->co; a.co = cog;
    a.kh = g->kh; a.kw = g->kw; a.sh = g->sh; a.sw = g->sw; a.dh = g->dh; a.dw = g->dw;
    a.act = g->extra;
    int rc = SLIM_OK;
    for (int grp = 0; grp < g->groups && rc == SLIM_OK; grp++) {
        slim_fconv_pack(w + (size_t)grp * cog * cig * taps, cog, cig, taps, pack);
        memcpy(b, bias + grp * cog, sizeof(float) * (size_t)cog);
        a.in_c0 = grp * cig; a.out_c0 = grp * cog;
        a.wpack = pack; a.bias = b;
        rc = slim_fconv(&a, xp, y);
    }
    free(xp); free(pack); free(b);
    return rc;
}

/// Runs one case file on `path`. Returns 1 if it matches, 0 if not, -1 if the file is bad.
static int run_case(const char *file, int path, char *why, size_t whylen) {
    FILE *f = fopen(file, "rb");
    if (!f) { snprintf(why, whylen, "cannot open"); return -1; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)n);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(data); snprintf(why, whylen, "short read"); return -1; }
    fclose(f);
    reader r = {data + 8, data + n, n < 8 || memcmp(data, "SLIMCASE", 8) != 0};
    const int kind = rint32(&r), layers = rint32(&r);
    int h = rint32(&r), w = rint32(&r), c = rint32(&r);
    int xzp = 0;
    float xs = 0;
    if (kind == 1) { xzp = rint32(&r); const float *p = rarray(&r, 4); if (p) memcpy(&xs, p, 4); }
    layer_geom g[16];
    const void *arr[16][4];
    float yscale[16];
    if (layers < 1 || layers > 16) r.bad = 1;
    for (int l = 0; l < layers && !r.bad; l++) {
        int *v = &g[l].ci;
        for (int k = 0; k < 12; k++) v[k] = rint32(&r);
        const size_t wn = (size_t)g[l].co * (g[l].ci / (g[l].groups ? g[l].groups : 1)) * g[l].kh * g[l].kw;
        if (kind == 1) {
            arr[l][0] = rarray(&r, wn);
            arr[l][1] = rarray(&r, 4 * (size_t)g[l].co);
            arr[l][2] = rarray(&r, 4 * (size_t)g[l].co);
            const float *p = rarray(&r, 4);
            if (p) memcpy(&yscale[l], p, 4);
        } else {
            arr[l][0] = rarray(&r, 4 * wn);
            arr[l][1] = rarray(&r, 4 * (size_t)g[l].co);
        }
    }
    const size_t elem = kind == 1 ? 1 : 4;
    const void *x0 = r.bad ? NULL : rarray(&r, elem * (size_t)h * w * c);
    int oh = h, ow = w, oc = c;
    for (int l = 0; l < layers && !r.bad; l++) {
        oh = out_size(oh, g[l].kh, g[l].sh, g[l].ph, g[l].dh); ow = out_size(ow, g[l].kw, g[l].sw, g[l].pw, g[l].dw); oc = g[l].co;
    }
    const void *want = r.bad ? NULL : rarray(&r, elem * (size_t)oh * ow * oc);
    if (r.bad || !x0 || !want) { free(data); snprintf(why, whylen, "malformed case file"); return -1; }
    // Run the chain.
    size_t cap = (size_t)h * w * c;
    void *cur = malloc(cap * elem + 64);
    memcpy(cur, x0, cap * elem);
    int ch = h, cw = w, rc = SLIM_OK;
    for (int l = 0; l < layers && rc == SLIM_OK; l++) {
        const int nh = out_size(ch, g[l].kh, g[l].sh, g[l].ph, g[l].dh), nw = out_size(cw, g[l].kw, g[l].sw, g[l].pw, g[l].dw);
        void *next = malloc((size_t)nh * nw * g[l].co * elem + 64);
        if (kind == 1) {
            rc = qlayer(path, &g[l], arr[l][0], arr[l][1], arr[l][2], xs, xzp, yscale[l], cur, ch, cw, next);
            xs = yscale[l];
            xzp = g[l].extra;
        } else {
            rc = flayer(path, &g[l], arr[l][0], arr[l][1], cur, ch, cw, next);
        }
        free(cur);
        cur = next; ch = nh; cw = nw;
    }
    int ok;
    const size_t count = (size_t)oh * ow * oc;
    if (rc != SLIM_OK) {
        snprintf(why, whylen, "kernel error %d", rc);
        ok = 0;
    } else if (kind == 1) {
        size_t diff = 0;
        for (size_t i = 0; i < count; i++) diff += ((const uint8_t *)cur)[i] != ((const uint8_t *)want)[i];
        snprintf(why, whylen, "%zu of %zu values differ", diff, count);
        ok = diff == 0;
    } else {
        const float *a = cur, *b = want;
        float lo = b[0], hi = b[0], err = 0;
        for (size_t i = 0; i < count; i++) { lo = fminf(lo, b[i]); hi = fmaxf(hi, b[i]); }
        for (size_t i = 0; i < count; i++) err = fmaxf(err, fabsf(a[i] - b[i]));
        const float rel = err / fmaxf(hi - lo, 1e-6f);
        snprintf(why, whylen, "max error %.2e of the output range", rel);
        ok = rel <= 1e-4f;
    }
    free(cur);
    free(data);
    return ok;
}

// ---- The activity helpers (activity.c, vectorized) against plain reference loops ----

static uint32_t lcg(uint32_t *st) { *st = *st * 1664525u + 1013904223u; return *st >> 8; }

/// QuantizeLinear as ONNX Runtime computes it, one value at a time.
static uint8_t ref_quantize(float x, float scale, int32_t zp) {
    float v = x / scale;
    const float lo = -(float)zp, hi = 255.0f - (float)zp;
    v = v > lo ? v : lo;
    v = v < hi ? v : hi;
    return (uint8_t)((v + 12582912.0f) - 12582912.0f + (float)zp);
}

static void ref_dilate(const uint8_t *in, int in_h, int in_w, uint8_t *out, int out_h, int out_w, int kh, int kw, int sh,
                       int sw, int ph, int pw, int dh, int dw) {
    for (int oy = 0; oy < out_h; oy++)
        for (int ox = 0; ox < out_w; ox++) {
            uint8_t a = 0;
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++) {
                    const int iy = oy * sh - ph + ky * dh, ix = ox * sw - pw + kx * dw;
                    a |= (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) ? 1 : in[iy * in_w + ix];
                }
            out[oy * out_w + ox] = a;
        }
}

/// Returns the number of mismatching checks (0: every one matches); prints one line.
static int check_activity(void) {
    uint32_t st = 7;
    int checks = 0, bad = 0;
    const float odd[] = {0.0f, -0.0f, NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 1e-40f, 0.5f, 1.5f, 2.5f, -2.5f, 254.5f};
    const int chans[] = {8, 4, 12, 6, 1, 64};
    for (int t = 0; t < 24; t++) {
        const int c = chans[t % 6], cells = 1 + (int)(lcg(&st) % 700);
        const float scale = 0.01f + (float)(lcg(&st) % 1000) / 200.0f;
        const int32_t zp = t % 3 == 0 ? 0 : (int32_t)(lcg(&st) % 256);
        float *x = calloc((size_t)cells * c, sizeof(float));
        for (int i = 0; i < cells; i++) {
            if (lcg(&st) % 4) continue;  // most cells empty
            const int negzero = lcg(&st) % 8 == 0;  // some all −0: empty too
            for (int ch = 0; ch < c; ch++) {
                if (negzero) { x[i * c + ch] = -0.0f; continue; }
                const uint32_t r = lcg(&st) % 16;
                x[i * c + ch] = r < 13 ? odd[r] : ((float)(lcg(&st) % 200000) - 100000.0f) / 997.0f;
            }
        }
        uint8_t *q = malloc((size_t)cells * c), *act = malloc((size_t)cells), *act2 = malloc((size_t)cells);
        slim_quantize_cells(x, cells, c, scale, zp, q, act);
        slim_mark_active_f32(x, cells, c, act2);
        for (int i = 0; i < cells; i++) {
            int any = 0;
            for (int ch = 0; ch < c; ch++) { uint32_t b; memcpy(&b, &x[i * c + ch], 4); any |= (b << 1) != 0; }
            bad += act[i] != any || act2[i] != any;
            for (int ch = 0; ch < c; ch++) bad += q[i * c + ch] != (any ? ref_quantize(x[i * c + ch], scale, zp) : (uint8_t)zp);
            checks += 2 + c;
        }
        free(x); free(q); free(act); free(act2);
    }
    for (int t = 0; t < 200; t++) {
        const int in_h = 1 + (int)(lcg(&st) % 40), in_w = 1 + (int)(lcg(&st) % 70);
        const int k = lcg(&st) % 3 ? 3 : 1 + (int)(lcg(&st) % 5), s = 1 + (int)(lcg(&st) % 2), d = 1 + (int)(lcg(&st) % 2);
        const int p = (int)(lcg(&st) % (unsigned)(k * d / 2 + 2));
        const int out_h = out_size(in_h, k, s, p, d), out_w = out_size(in_w, k, s, p, d);
        if (out_h < 1 || out_w < 1) continue;
        uint8_t *in = malloc((size_t)in_h * in_w), *o = malloc((size_t)out_h * out_w), *r = malloc((size_t)out_h * out_w);
        uint8_t *rows = malloc((size_t)in_h * out_w);
        const unsigned density = 1 + lcg(&st) % 40;
        for (int i = 0; i < in_h * in_w; i++) in[i] = lcg(&st) % 100 < density;
        slim_dilate_activity(in, in_h, in_w, o, out_h, out_w, k, k, s, s, p, p, d, d, rows);
        ref_dilate(in, in_h, in_w, r, out_h, out_w, k, k, s, s, p, p, d, d);
        checks++;
        bad += memcmp(o, r, (size_t)out_h * out_w) != 0;
        free(in); free(o); free(r); free(rows);
    }
    printf("activity helpers (quantize, mark, dilate) %d of %d checks match\n", checks - bad, checks);
    return bad;
}

/// Synthetic int8 layers whose inputs hold a byte above 127 at a few pixels only (so avx2 keeps its
/// byte kernel and sends those pixels through its excess kernel), on `path` against the portable
/// path (itself checked on the fixtures above). Returns the number of mismatching layers.
static int check_sparse_high_bytes(int path) {
    uint32_t st = 11;
    const int cis[] = {8, 4, 12, 16, 24, 64, 8, 32};
    int bad = 0, n = 0;
    for (int t = 0; t < 16; t++) {
        const int ci = cis[t % 8], co = 16 + 8 * (t % 3), h = 9 + t % 5, wd = 11 + t % 4, s = 1 + t % 2;
        const layer_geom g = {ci, co, 3, 3, s, s, 1, 1, 1, 1, 1, t % 3 == 0 ? 5 : 0};
        const int xzp = t % 4 == 1 ? 37 : 0, oh = out_size(h, 3, s, 1, 1), ow = out_size(wd, 3, s, 1, 1);
        int8_t *w = malloc((size_t)co * ci * 9);
        float *ws = malloc(sizeof(float) * (size_t)co);
        int32_t *bias = malloc(sizeof(int32_t) * (size_t)co);
        uint8_t *x = malloc((size_t)h * wd * ci), *y0 = malloc((size_t)oh * ow * co), *y1 = malloc((size_t)oh * ow * co);
        for (int i = 0; i < co * ci * 9; i++) w[i] = (int8_t)((int)(lcg(&st) % 255) - 127);
        for (int o = 0; o < co; o++) { ws[o] = 0.002f + (float)(lcg(&st) % 100) * 1e-5f; bias[o] = (int32_t)(lcg(&st) % 2001) - 1000; }
        for (int px = 0; px < h * wd; px++) {
            const int high = lcg(&st) % 32 == 0;  // about 3 % of pixels
            for (int c = 0; c < ci; c++) x[px * ci + c] = (uint8_t)(high && c == (int)(lcg(&st) % (unsigned)ci) ? 128 + lcg(&st) % 128 : lcg(&st) % 128);
        }
        const int r0 = qlayer(SLIM_PATH_PORTABLE, &g, w, ws, bias, 0.02f, xzp, 0.05f, x, h, wd, y0);
        const int r1 = qlayer(path, &g, w, ws, bias, 0.02f, xzp, 0.05f, x, h, wd, y1);
        n++;
        bad += r0 != SLIM_OK || r1 != SLIM_OK || memcmp(y0, y1, (size_t)oh * ow * co) != 0;
        free(w); free(ws); free(bias); free(x); free(y0); free(y1);
    }
    printf("path %-9s %d of %d synthetic layers (a few bytes > 127) match portable\n", slim_path_name(path), n - bad, n);
    return bad;
}

/// Int8 layers with float output (y_f32 1 and 2) on `path`, bit for bit against the definition
/// computed here: float(Σ(x − x_zp)·w + bias) · x_scale·w_scale[c], ReLU'd for 2. Inputs of every
/// kind: bytes ≤ 127, a few above, and a zero point near 128 (avx2's three kernels). Returns the
/// number of mismatching layers.
static int check_float_output(int path) {
    uint32_t st = 23;
    int bad = 0, n = 0;
    for (int t = 0; t < 12; t++) {
        const int ci = 8 + 8 * (t % 4), co = 16 + 8 * (t % 3), h = 7 + t % 4, wd = 9 + t % 3, d = 1 + t % 2;
        const layer_geom g = {ci, co, 3, 3, 1, 1, d, d, d, d, 1, 0};
        const int xzp = t % 3 == 2 ? 128 : t % 3 == 1 ? 37 : 0, oh = out_size(h, 3, 1, d, d), ow = out_size(wd, 3, 1, d, d);
        int8_t *w = malloc((size_t)co * ci * 9);
        float *ws = malloc(sizeof(float) * (size_t)co), *y = malloc(sizeof(float) * (size_t)oh * ow * co);
        int32_t *bias = malloc(sizeof(int32_t) * (size_t)co);
        uint8_t *x = malloc((size_t)h * wd * ci);
        for (int i = 0; i < co * ci * 9; i++) w[i] = (int8_t)((int)(lcg(&st) % 255) - 127);
        for (int o = 0; o < co; o++) { ws[o] = 0.002f + (float)(lcg(&st) % 100) * 1e-5f; bias[o] = (int32_t)(lcg(&st) % 20001) - 10000; }
        for (int i = 0; i < h * wd * ci; i++) x[i] = (uint8_t)(xzp == 128 ? lcg(&st) % 256 : lcg(&st) % 40 == 0 ? 128 + lcg(&st) % 128 : lcg(&st) % 128);
        for (int mode = 1; mode <= 2; mode++) {
            const int rc = qlayer_out(path, &g, w, ws, bias, 0.02f, xzp, 1.0f, x, h, wd, y, mode);
            int diff = rc != SLIM_OK;
            for (int oy = 0; oy < oh && !diff; oy++)
                for (int ox = 0; ox < ow; ox++)
                    for (int o = 0; o < co; o++) {
                        int32_t acc = bias[o];
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                const int iy = oy - d + ky * d, ix = ox - d + kx * d;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                for (int i = 0; i < ci; i++)
                                    acc += ((int32_t)x[(iy * wd + ix) * ci + i] - xzp) * w[((size_t)o * ci + i) * 9 + ky * 3 + kx];
                            }
                        float f = (float)acc * (0.02f * ws[o]);
                        if (mode == 2 && !(f > 0.0f)) f = 0.0f;
                        const float got = y[((size_t)oy * ow + ox) * co + o];
                        diff += memcmp(&got, &f, 4) != 0;
                    }
            n++;
            bad += diff != 0;
        }
        free(w); free(ws); free(y); free(bias); free(x);
    }
    printf("path %-9s %d of %d int8 layers with float output match the definition bit for bit\n", slim_path_name(path), n - bad, n);
    return bad;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: parity CASE_DIR [path ...]\n"); return 2; }
    char list[4096];
    snprintf(list, sizeof list, "%s/cases.txt", argv[1]);
    FILE *f = fopen(list, "r");
    if (!f) { fprintf(stderr, "parity: cannot open %s\n", list); return 2; }
    char names[256][128];
    int ncases = 0;
    while (ncases < 256 && fscanf(f, "%127s", names[ncases]) == 1) ncases++;
    fclose(f);
    int paths[SLIM_PATH_COUNT], npaths = 0;
    if (argc > 2) {
        for (int i = 2; i < argc; i++) {
            int found = -1;
            for (int p = 0; p < SLIM_PATH_COUNT; p++) if (strcmp(slim_path_name(p), argv[i]) == 0) found = p;
            if (found < 0) { fprintf(stderr, "parity: unknown path %s\n", argv[i]); return 2; }
            paths[npaths++] = found;
        }
    } else {
        for (int p = 0; p < SLIM_PATH_COUNT; p++) paths[npaths++] = p;
    }
    int passed = 0, failed = 0, skipped = 0;
    for (int k = 0; k < npaths; k++) {
        const int p = paths[k];
        if (!slim_path_supported(p)) { printf("path %-9s skipped: this CPU cannot run it\n", slim_path_name(p)); skipped++; continue; }
        int good = 0, bad = 0;
        for (int i = 0; i < ncases; i++) {
            char file[4300], why[128];
            snprintf(file, sizeof file, "%s/%s.case", argv[1], names[i]);
            const int ok = run_case(file, p, why, sizeof why);
            if (ok == 1) good++; else { bad++; printf("  FAIL %s on %s: %s\n", names[i], slim_path_name(p), why); }
        }
        printf("path %-9s %d of %d cases match (int8 bit-exact, float within 1e-4)\n", slim_path_name(p), good, ncases);
        if (p != SLIM_PATH_PORTABLE) bad += check_sparse_high_bytes(p);
        bad += check_float_output(p);
        passed += bad == 0;
        failed += bad != 0;
    }
    if (check_activity()) failed++;
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
