// The pixel loop shared by every convolution path, included once per path with:
//   CD_FN      the driver's name
//   CD_ATTR    the path's function attributes (target ISA)
//   CD_ARGS    slim_qconv_args or slim_fconv_args
//   CD_XT      the element type of the (padded) input, CD_YT of the output
//   CD_KERNEL  kernel(a, ctx, x[4], first block, NB, dst[4]): four output pixels (their first
//              taps in the padded input, and their outputs) × NB blocks of 16 output channels,
//              requantized or stored; the kernel walks the taps × input channels through the
//              context's flat offset tables (one loop, accumulators stay in registers)
//   CD_NBMAX   blocks per call (the path's register budget)
//   CD_NPIX    (optional, default 4) output pixels per tile: the kernel takes x[CD_NPIX], dst[CD_NPIX]
//   CD_CTX     the type of the per-call context the kernel reads (bias, corrections)
//   CD_KERNEL_EXCESS (optional) the kernel for pixels whose taps touch a pixel flagged in
//              ctx->flags (avx2: a byte above 127), gathered into tiles of their own
//   CD_YSIZE(a), CD_BG(a) (optional, set once per file like CD_ARGS, CD_CTX and CD_YT) the bytes
//              of one output element and the background, where they depend on the call (int8
//              convolutions with float output); default sizeof(CD_YT) and a->background. The
//              kernel gets each pixel's output as a CD_YT pointer to its first byte.
// The input is zero-padded by the caller, so every tap of every output pixel is inside it: one
// kernel shape serves borders and interior alike. Inactive outputs get `background`; active ones
// are gathered CD_NPIX (four unless the path says) at a time, wherever they are, into one register tile (each weight vector
// loaded once serves four pixels), so a sparse BEV grid runs at the dense tile's efficiency. A
// layer's last tile repeats its last pixel (it writes the same values twice).
#define CD_TILE(KERNEL, XQ, DQ)                                                                        \
    do {                                                                                              \
        for (int b = 0; b < nblk; b += CD_NBMAX) {                                                    \
            const int nb = nblk - b < CD_NBMAX ? nblk - b : CD_NBMAX;                                 \
            switch (CD_NBMAX == 1 ? 1 : nb) {                                                         \
            case 4: KERNEL(a, ctx, XQ, b, 4, DQ); break;                                              \
            case 3: KERNEL(a, ctx, XQ, b, 3, DQ); break;                                              \
            case 2: KERNEL(a, ctx, XQ, b, 2, DQ); break;                                              \
            default: KERNEL(a, ctx, XQ, b, 1, DQ); break;                                             \
            }                                                                                         \
        }                                                                                             \
    } while (0)

#ifndef CD_NPIX
#define CD_NPIX 4
#endif
#ifndef CD_YSIZE
#define CD_YSIZE(a) sizeof(CD_YT)
#endif
#ifndef CD_BG
#define CD_BG(a) ((const void *)(a)->background)
#endif
CD_ATTR static void CD_FN(const CD_ARGS *a, const CD_CTX *ctx, const CD_XT *xs, int cpad, int padded_w, CD_YT *y) {
    const int nblk = (a->co + 15) / 16;
    const CD_XT *xq[CD_NPIX];
    CD_YT *dq[CD_NPIX];
    int n = 0;
#ifdef CD_KERNEL_EXCESS
    const CD_XT *xe[CD_NPIX];
    CD_YT *de[CD_NPIX];
    int ne = 0;
#endif
    // A dense output (its channels contiguous): the background written everywhere first, in a few
    // long copies that double the filled part, so that inactive pixels (most of a sparse grid's
    // first layers) cost nothing below; else one copy per inactive pixel.
    const size_t ysize = CD_YSIZE(a);
    const void *bg = CD_BG(a);
    const int prefill = a->active && a->out_cs == a->co && a->out_c0 == 0;
    if (prefill) {
        const size_t total = (size_t)a->out_h * a->out_w * (size_t)a->co * ysize;
        size_t done = (size_t)a->co * ysize;
        memcpy(y, bg, done);
        while (done < total) {
            const size_t n = done < total - done ? done : total - done;
            memcpy((char *)y + done, y, n);
            done += n;
        }
    }
    for (int oy = 0; oy < a->out_h; oy++) {
        for (int ox = 0; ox < a->out_w; ox++) {
            CD_YT *dst = (CD_YT *)(void *)((char *)y + (((size_t)oy * a->out_w + ox) * a->out_cs + a->out_c0) * ysize);
            if (a->active && !a->active[(size_t)oy * a->out_w + ox]) {
                if (!prefill) memcpy(dst, bg, ysize * (size_t)a->co);
                continue;
            }
            const size_t pix = (size_t)oy * a->sh * padded_w + (size_t)ox * a->sw;
#ifdef CD_KERNEL_EXCESS
            uint8_t flagged = 0;
            for (int t = 0; t < ctx->ntaps; t++) flagged |= ctx->flags[pix + ctx->tpo[t]];
            if (flagged) {
                xe[ne] = xs + pix * cpad;
                de[ne] = dst;
                if (++ne == CD_NPIX) { CD_TILE(CD_KERNEL_EXCESS, xe, de); ne = 0; }
                continue;
            }
#endif
            xq[n] = xs + pix * cpad;
            dq[n] = dst;
            if (++n == CD_NPIX) { CD_TILE(CD_KERNEL, xq, dq); n = 0; }
        }
    }
    if (n > 0) {
        for (int k = n; k < CD_NPIX; k++) { xq[k] = xq[n - 1]; dq[k] = dq[n - 1]; }
        CD_TILE(CD_KERNEL, xq, dq);
    }
#ifdef CD_KERNEL_EXCESS
    if (ne > 0) {
        for (int k = ne; k < CD_NPIX; k++) { xe[k] = xe[ne - 1]; de[k] = de[ne - 1]; }
        CD_TILE(CD_KERNEL_EXCESS, xe, de);
    }
#endif
}
#undef CD_FN
#undef CD_ATTR
#undef CD_KERNEL
#undef CD_KERNEL_EXCESS
#undef CD_NBMAX
#undef CD_NPIX
#undef CD_XT
