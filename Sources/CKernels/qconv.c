// Int8 convolution: weight packing, the zero-padded input in each path's format, the portable
// kernel and the dispatch to the ISA kernels (qconv_x86.c, qconv_arm.c).
//
// Two families of paths compute the same exact int32 sums:
// - pairs (portable, neon): the input is widened to int16 with its zero point subtracted,
//   so padding is 0 and no correction is needed; products of int16 pairs summed into int32
//   (vpmaddwd, smlal) are exact for any uint8 input and int8 weight.
// - dot4 (avx2, avx-vnni, avx512, neon-dot): four uint8×int8 (or int8×int8) products per int32
//   lane (vpdpbusd, sdot, or vpmaddubsw + vpmaddwd on bytes split at 127 so that no 16-bit pair
//   sum saturates), exact; the zero point is corrected once per output channel, since every tap
//   of the padded input is read (padding holds the zero point itself).
#include "internal/qconv_internal.h"
#if defined(__x86_64__)
#include <emmintrin.h>  // SSE2: every x86-64 CPU (the avx2 flags and the portable kernel)
#endif

void slim_qconv_pack_sizes(int co, int ci, int taps, size_t *dot4_bytes, size_t *pairs_elems) {
    const size_t blocks = (size_t)(co + 15) / 16;
    *dot4_bytes = blocks * (size_t)taps * (size_t)slim_round_up(ci, 16) * 16;
    *pairs_elems = blocks * (size_t)taps * (size_t)slim_round_up(ci, 8) * 16;
}

void slim_qconv_pack(const int8_t *w, int co, int ci, int taps, int8_t *dot4, int16_t *pairs, int32_t *wsum) {
    size_t d4, pe;
    slim_qconv_pack_sizes(co, ci, taps, &d4, &pe);
    memset(dot4, 0, d4);
    memset(pairs, 0, pe * sizeof(int16_t));
    const size_t g4 = (size_t)slim_round_up(ci, 16) / 4, g2 = (size_t)slim_round_up(ci, 8) / 2;
    for (int o = 0; o < co; o++) {
        int32_t s = 0;
        const size_t blk = (size_t)o / 16, lane = (size_t)o % 16;
        for (int i = 0; i < ci; i++) {
            for (int t = 0; t < taps; t++) {
                const int8_t v = w[((size_t)o * ci + i) * taps + t];
                s += v;
                dot4[((blk * taps + t) * g4 + (size_t)i / 4) * 64 + lane * 4 + (size_t)i % 4] = v;
                pairs[((blk * taps + t) * g2 + (size_t)i / 2) * 32 + lane * 2 + (size_t)i % 2] = v;
            }
        }
        wsum[o] = s;
    }
}

/// Channels of one padded input pixel on `path`: what its kernel consumes per step.
static int padded_channels(int path, int ci) {
    switch (path) {
    case SLIM_PATH_AVX2:
    case SLIM_PATH_AVX_VNNI:
    case SLIM_PATH_AVX512: return slim_round_up(ci, 4);
    case SLIM_PATH_NEON: return slim_round_up(ci, 8);
    case SLIM_PATH_NEON_DOT: return slim_round_up(ci, 16);
    default: return slim_round_up(ci, 2);
    }
}

static int uses_pairs(int path) { return path == SLIM_PATH_PORTABLE || path == SLIM_PATH_NEON; }

size_t slim_qconv_scratch_bytes(const slim_qconv_args *a) {
    const size_t hp = (size_t)a->in_h + 2 * (size_t)a->ph, wp = (size_t)a->in_w + 2 * (size_t)a->pw;
    const size_t elem = uses_pairs(a->path) ? sizeof(int16_t) : 1;
    const size_t one = hp * wp * (size_t)padded_channels(a->path, a->ci) * elem + 64;
    if (a->path != SLIM_PATH_AVX2) return one;
    // avx2 takes bytes and a flag per padded pixel, or int16 pairs (see flag_high_bytes).
    const size_t pairs = hp * wp * (size_t)slim_round_up(a->ci, 2) * sizeof(int16_t) + 64;
    return one + hp * wp > pairs ? one + hp * wp : pairs;
}

/// x − x_zp as int16, zero outside the input and in the channels past ci.
static void pad_pairs(const slim_qconv_args *a, const uint8_t *x, int16_t *out, int cpad) {
    const int hp = a->in_h + 2 * a->ph, wp = a->in_w + 2 * a->pw;
    const int16_t zp = (int16_t)a->x_zp;
    for (int r = 0; r < hp; r++) {
        int16_t *o = out + (size_t)r * wp * cpad;
        const int iy = r - a->ph;
        if (iy < 0 || iy >= a->in_h) { memset(o, 0, sizeof(int16_t) * (size_t)wp * cpad); continue; }
        memset(o, 0, sizeof(int16_t) * (size_t)a->pw * cpad);
        o += (size_t)a->pw * cpad;
        const uint8_t *src = x + (size_t)iy * a->in_w * a->in_cs + a->in_c0;
        if (cpad == a->ci && a->in_cs == a->ci) {  // contiguous row: one vectorized loop
            const size_t n = (size_t)a->in_w * cpad;
            for (size_t i = 0; i < n; i++) o[i] = (int16_t)(src[i] - zp);
            o += n;
        } else {
            for (int c = 0; c < a->in_w; c++, src += a->in_cs, o += cpad) {
                for (int i = 0; i < a->ci; i++) o[i] = (int16_t)(src[i] - zp);
                for (int i = a->ci; i < cpad; i++) o[i] = 0;
            }
        }
        memset(o, 0, sizeof(int16_t) * (size_t)a->pw * cpad);
    }
}

/// x ^ flip as bytes, `fill` outside the input and in the channels past ci.
static void pad_bytes(const slim_qconv_args *a, const uint8_t *x, uint8_t *out, int cpad, uint8_t fill, uint8_t flip) {
    const int hp = a->in_h + 2 * a->ph, wp = a->in_w + 2 * a->pw;
    for (int r = 0; r < hp; r++) {
        uint8_t *o = out + (size_t)r * wp * cpad;
        const int iy = r - a->ph;
        if (iy < 0 || iy >= a->in_h) { memset(o, fill, (size_t)wp * cpad); continue; }
        memset(o, fill, (size_t)a->pw * cpad);
        o += (size_t)a->pw * cpad;
        const uint8_t *src = x + (size_t)iy * a->in_w * a->in_cs + a->in_c0;
        if (cpad == a->ci && a->in_cs == a->ci) {  // contiguous row: one vectorized loop
            const size_t n = (size_t)a->in_w * cpad;
            for (size_t i = 0; i < n; i++) o[i] = src[i] ^ flip;
            o += n;
        } else {
            for (int c = 0; c < a->in_w; c++, src += a->in_cs, o += cpad) {
                for (int i = 0; i < a->ci; i++) o[i] = src[i] ^ flip;
                for (int i = a->ci; i < cpad; i++) o[i] = fill;
            }
        }
        memset(o, fill, (size_t)a->pw * cpad);
    }
}

#if defined(__x86_64__)
/// flags[pixel] = 1 where a padded pixel holds a byte above 127 (rare after calibration): the
/// avx2 kernel multiplies bytes with vpmaddubsw, exact only up to 127, and takes such pixels'
/// outputs through its excess kernel, which adds the excess of a 4-byte unit only where that unit
/// holds one (a well-predicted branch while such units are rare). Returns the flagged pixels.
static size_t flag_high_bytes(const uint8_t *padded, size_t pixels, int cpad, uint8_t *flags) {
    size_t flagged = 0, px = 0;
    if (cpad == 8) {  // two pixels per vector: one movemask tests sixteen high bits
        for (; px + 2 <= pixels; px += 2) {
            const int m = _mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(padded + px * 8)));
            flags[px] = (m & 0xff) != 0;
            flags[px + 1] = (m >> 8) != 0;
            flagged += (size_t)flags[px] + flags[px + 1];
        }
    } else if (cpad % 8 == 0) {
        for (; px < pixels; px++) {
            const uint8_t *p = padded + px * cpad;
            __m128i v = _mm_loadl_epi64((const __m128i *)(p + cpad - 8));
            for (int k = 0; k + 16 <= cpad; k += 16) v = _mm_or_si128(v, _mm_loadu_si128((const __m128i *)(p + k)));
            flags[px] = _mm_movemask_epi8(v) != 0;
            flagged += flags[px];
        }
    }
    for (; px < pixels; px++) {
        uint8_t m = 0;
        for (int i = 0; i < cpad; i++) m |= padded[px * cpad + i];
        flags[px] = m >> 7;
        flagged += flags[px];
    }
    return flagged;
}

/// Whether more than 1/16 of the 4-byte units (cpad is a multiple of 4) hold a byte above 127:
/// then the excess kernel's branch would mispredict and its work double, and the whole layer runs
/// on int16 pairs (vpmaddwd) instead, which compute the same integers at about 1.5× the cost of
/// clean bytes, whatever they hold (a layer whose zero point is near 128, say). Only flagged
/// pixels hold such units, so few flagged pixels settle it without counting.
static int mostly_high_units(const uint8_t *padded, size_t pixels, int cpad, const uint8_t *flags, size_t flagged) {
    const size_t units = pixels * (size_t)(cpad / 4);
    if (flagged * (size_t)(cpad / 4) <= units / 16) return 0;
    size_t high = 0;
    for (size_t px = 0; px < pixels; px++) {
        if (!flags[px]) continue;
        const uint8_t *p = padded + px * cpad;
        for (int u = 0; u < cpad; u += 4) high += (p[u] | p[u + 1] | p[u + 2] | p[u + 3]) >> 7;
    }
    return high > units / 16;
}
#endif

// ---- portable kernel: int16 pairs, 16 output channels per step ----
// On x86-64 it uses what every x86-64 CPU has, SSE2's pmaddwd (a broadcast pair of input channels
// times 4 channels' weight pairs, exact for any byte), two pixels at a time so that the
// accumulators stay in the 16 xmm registers. Elsewhere plain loops.
#define AI __attribute__((always_inline)) static inline

#if defined(__x86_64__) && defined(__SSE2__)
AI void kernel_portable(const slim_qconv_args *a, const slim_qctx *c, const int16_t *const xq[4], int blk, const int NB,
                        uint8_t *const dq[4]) {
    (void)NB;
    int32_t acc[4][16];
    const int16_t *wb = a->pairs + (size_t)blk * c->blk_stride;
    for (int h = 0; h < 4; h += 2) {
        __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        const int16_t *x0p = xq[h], *x1p = xq[h + 1];
        for (int k = 0; k < c->nk; k++) {
            const int16_t *w = wb + c->wo[k];
            const __m128i w0 = _mm_loadu_si128((const __m128i *)w), w1 = _mm_loadu_si128((const __m128i *)(w + 8)),
                          w2 = _mm_loadu_si128((const __m128i *)(w + 16)), w3 = _mm_loadu_si128((const __m128i *)(w + 24));
            int32_t p0, p1;
            memcpy(&p0, x0p + c->xo[k], 4);
            memcpy(&p1, x1p + c->xo[k], 4);
            const __m128i x0 = _mm_set1_epi32(p0), x1 = _mm_set1_epi32(p1);
            a0 = _mm_add_epi32(a0, _mm_madd_epi16(x0, w0));
            a1 = _mm_add_epi32(a1, _mm_madd_epi16(x0, w1));
            a2 = _mm_add_epi32(a2, _mm_madd_epi16(x0, w2));
            a3 = _mm_add_epi32(a3, _mm_madd_epi16(x0, w3));
            b0 = _mm_add_epi32(b0, _mm_madd_epi16(x1, w0));
            b1 = _mm_add_epi32(b1, _mm_madd_epi16(x1, w1));
            b2 = _mm_add_epi32(b2, _mm_madd_epi16(x1, w2));
            b3 = _mm_add_epi32(b3, _mm_madd_epi16(x1, w3));
        }
        _mm_storeu_si128((__m128i *)&acc[h][0], a0);
        _mm_storeu_si128((__m128i *)&acc[h][4], a1);
        _mm_storeu_si128((__m128i *)&acc[h][8], a2);
        _mm_storeu_si128((__m128i *)&acc[h][12], a3);
        _mm_storeu_si128((__m128i *)&acc[h + 1][0], b0);
        _mm_storeu_si128((__m128i *)&acc[h + 1][4], b1);
        _mm_storeu_si128((__m128i *)&acc[h + 1][8], b2);
        _mm_storeu_si128((__m128i *)&acc[h + 1][12], b3);
    }
    const int c0 = blk * 16, n = a->co - c0 < 16 ? a->co - c0 : 16;
    if (a->y_f32) {
        for (int p = 0; p < 4; p++) slim_store_f32(a, c, acc[p], c0, dq[p]);
        return;
    }
    if (n < 16) {
        for (int p = 0; p < 4; p++)
            for (int o = 0; o < n; o++) dq[p][c0 + o] = slim_requant(acc[p][o], c->badj[c0 + o], a->mult[c0 + o], a->y_zp);
        return;
    }
    // slim_requant on four lanes: the same float product, clamp and round half to even (MXCSR's
    // default, as nearbyintf), saturated to bytes by the packs.
    const __m128 lo = _mm_set1_ps(-512.0f), hi = _mm_set1_ps(512.0f);
    const __m128i zp = _mm_set1_epi32(a->y_zp);
    for (int p = 0; p < 4; p++) {
        __m128i r[4];
        for (int q = 0; q < 4; q++) {
            const __m128i v = _mm_add_epi32(_mm_loadu_si128((const __m128i *)&acc[p][4 * q]),
                                            _mm_loadu_si128((const __m128i *)(c->badj + c0 + 4 * q)));
            const __m128 f = _mm_mul_ps(_mm_cvtepi32_ps(v), _mm_loadu_ps(a->mult + c0 + 4 * q));
            r[q] = _mm_add_epi32(_mm_cvtps_epi32(_mm_min_ps(_mm_max_ps(f, lo), hi)), zp);
        }
        _mm_storeu_si128((__m128i *)(dq[p] + c0), _mm_packus_epi16(_mm_packs_epi32(r[0], r[1]), _mm_packs_epi32(r[2], r[3])));
    }
}
#else
AI void kernel_portable(const slim_qconv_args *a, const slim_qctx *c, const int16_t *const xq[4], int blk, const int NB,
                        uint8_t *const dq[4]) {
    (void)NB;
    int32_t acc[4][16];
    memset(acc, 0, sizeof acc);
    const int16_t *wb = a->pairs + (size_t)blk * c->blk_stride;
    for (int k = 0; k < c->nk; k++) {
        const int16_t *w = wb + c->wo[k];
        for (int p = 0; p < 4; p++) {
            const int32_t x0 = xq[p][c->xo[k]], x1 = xq[p][c->xo[k] + 1];
            for (int o = 0; o < 16; o++) acc[p][o] += x0 * w[2 * o] + x1 * w[2 * o + 1];
        }
    }
    const int c0 = blk * 16, n = a->co - c0 < 16 ? a->co - c0 : 16;
    if (a->y_f32) {
        for (int p = 0; p < 4; p++) slim_store_f32(a, c, acc[p], c0, dq[p]);
        return;
    }
    for (int p = 0; p < 4; p++)
        for (int o = 0; o < n; o++) dq[p][c0 + o] = slim_requant(acc[p][o], c->badj[c0 + o], a->mult[c0 + o], a->y_zp);
}
#endif

#define CD_ARGS slim_qconv_args
#define CD_CTX slim_qctx
#define CD_YT uint8_t
#define CD_FN drive_portable
#define CD_ATTR
#define CD_XT int16_t
#define CD_KERNEL kernel_portable
#define CD_NBMAX 1
#include "internal/conv_driver.h"

int slim_qconv_run_portable(const slim_qconv_args *a, const slim_qctx *c, const int16_t *xs, int cpad, int padded_w, uint8_t *y) {
    drive_portable(a, c, xs, cpad, padded_w, y);
    return SLIM_OK;
}

int slim_qconv(const slim_qconv_args *a, const uint8_t *x, uint8_t *y) {
    if (!slim_path_supported(a->path)) return SLIM_EUNSUPPORTED;
    const int taps = a->kh * a->kw;
    const int hp = a->in_h + 2 * a->ph, wp = a->in_w + 2 * a->pw;
    if (taps < 1 || taps > 64 || a->co < 1 || a->co > SLIM_QCONV_MAX_CO || a->ci < 1 || a->out_h < 1 || a->out_w < 1 ||
        a->sh < 1 || a->sw < 1 || a->dh < 1 || a->dw < 1 || a->y_f32 < 0 || a->y_f32 > 2 ||
        (a->out_h - 1) * a->sh + (a->kh - 1) * a->dh >= hp || (a->out_w - 1) * a->sw + (a->kw - 1) * a->dw >= wp)
        return SLIM_ESHAPE;
    if (!a->scratch || a->scratch_bytes < slim_qconv_scratch_bytes(a)) return SLIM_ESCRATCH;
    // avx2: the bytes padded and flagged first; they also decide between bytes and pairs.
    int avx2_pairs = 0;
#if defined(__x86_64__)
    uint8_t *avx2_flags = NULL;
    if (a->path == SLIM_PATH_AVX2) {
        const int cpad4 = padded_channels(a->path, a->ci);
        avx2_flags = (uint8_t *)a->scratch + (size_t)hp * wp * cpad4 + 64;
        pad_bytes(a, x, a->scratch, cpad4, (uint8_t)a->x_zp, 0);
        const size_t flagged = flag_high_bytes(a->scratch, (size_t)hp * wp, cpad4, avx2_flags);
        avx2_pairs = mostly_high_units(a->scratch, (size_t)hp * wp, cpad4, avx2_flags, flagged);
    }
#endif
    const int pairs = uses_pairs(a->path) || avx2_pairs;
    const int cpad = avx2_pairs ? slim_round_up(a->ci, 2) : padded_channels(a->path, a->ci);
    // One unit: the channels a kernel step takes (see slim_qctx), and its packed weights.
    int ux, uw;
    size_t tap_stride;
    if (pairs) {
        tap_stride = (size_t)slim_round_up(a->ci, 8) * 16;
        ux = a->path == SLIM_PATH_NEON ? 8 : 2;
    } else {
        tap_stride = (size_t)slim_round_up(a->ci, 16) * 16;
        ux = a->path == SLIM_PATH_NEON_DOT ? 16 : 4;
    }
    uw = ux * 16;
    const int units = cpad / ux;
    if (taps * units > SLIM_CONV_MAX_STEPS) return SLIM_ESHAPE;
    slim_qctx c;
    c.blk_stride = tap_stride * (size_t)taps;
    c.nk = 0;
    for (int ky = 0; ky < a->kh; ky++)
        for (int kx = 0; kx < a->kw; kx++)
            for (int u = 0; u < units; u++, c.nk++) {
                c.xo[c.nk] = (ky * a->dh * wp + kx * a->dw) * cpad + u * ux;
                c.wo[c.nk] = (int32_t)((size_t)(ky * a->kw + kx) * tap_stride) + u * uw;
            }
    if (pairs) {
        for (int o = 0; o < a->co; o++) c.badj[o] = a->bias[o];
    } else {
        // Every tap reads the padded input, whose padding holds the zero point: subtract
        // pad_zp·Σw once (pad_zp is x_zp − 128 where the bytes are flipped to int8 for sdot).
        const int32_t zp = a->path == SLIM_PATH_NEON_DOT ? a->x_zp - 128 : a->x_zp;
        for (int o = 0; o < a->co; o++) c.badj[o] = a->bias[o] - zp * a->wsum[o];
    }
    switch (a->path) {
    case SLIM_PATH_PORTABLE:
        pad_pairs(a, x, a->scratch, cpad);
        return slim_qconv_run_portable(a, &c, a->scratch, cpad, wp, y);
#if defined(__x86_64__)
    case SLIM_PATH_AVX2: {
        if (avx2_pairs) {
            pad_pairs(a, x, a->scratch, cpad);
            return slim_qconv_run_avx2_pairs(a, &c, a->scratch, cpad, wp, y);
        }
        c.flags = avx2_flags;
        c.ntaps = 0;
        for (int ky = 0; ky < a->kh; ky++)
            for (int kx = 0; kx < a->kw; kx++) c.tpo[c.ntaps++] = ky * a->dh * wp + kx * a->dw;
        return slim_qconv_run_avx2(a, &c, a->scratch, cpad, wp, y);
    }
    case SLIM_PATH_AVX_VNNI:
        pad_bytes(a, x, a->scratch, cpad, (uint8_t)a->x_zp, 0);
        return slim_qconv_run_avx_vnni(a, &c, a->scratch, cpad, wp, y);
    case SLIM_PATH_AVX512:
        pad_bytes(a, x, a->scratch, cpad, (uint8_t)a->x_zp, 0);
        return slim_qconv_run_avx512(a, &c, a->scratch, cpad, wp, y);
#endif
#if defined(__aarch64__)
    case SLIM_PATH_NEON:
        pad_pairs(a, x, a->scratch, cpad);
        return slim_qconv_run_neon(a, &c, a->scratch, cpad, wp, y);
    case SLIM_PATH_NEON_DOT:
        pad_bytes(a, x, a->scratch, cpad, (uint8_t)(a->x_zp ^ 0x80), 0x80);
        return slim_qconv_run_neon_dot(a, &c, a->scratch, cpad, wp, y);
#endif
    default: return SLIM_EUNSUPPORTED;
    }
}
