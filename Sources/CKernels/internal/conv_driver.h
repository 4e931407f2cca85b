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
//   CD_CTX     the type of the per-call context the kernel reads (bias, corrections)
// The input is zero-padded by the caller, so every tap of every output pixel is inside it: one
// kernel shape serves borders and interior alike. Inactive outputs get `background`; active ones
// are gathered four at a time, wherever they are, into one register tile (each weight vector
// loaded once serves four pixels), so a sparse BEV grid runs at the dense tile's efficiency. The
// last tile of a layer repeats its last pixel (it writes the same values twice).
CD_ATTR static void CD_FN(const CD_ARGS *a, const CD_CTX *ctx, const CD_XT *xs, int cpad, int padded_w, CD_YT *y) {
    const int nblk = (a->co + 15) / 16;
    const CD_XT *xq[4];
    CD_YT *dq[4];
    int n = 0;
    for (int oy = 0; oy <= a->out_h; oy++) {
        for (int ox = 0; ox < a->out_w; ox++) {
            if (oy < a->out_h) {
                CD_YT *dst = y + ((size_t)oy * a->out_w + ox) * a->out_cs + a->out_c0;
                if (a->active && !a->active[(size_t)oy * a->out_w + ox]) {
                    memcpy(dst, a->background, sizeof(CD_YT) * (size_t)a->co);
                    continue;
                }
                xq[n] = xs + ((size_t)oy * a->sh * padded_w + (size_t)ox * a->sw) * cpad;
                dq[n] = dst;
                if (++n < 4) continue;
            } else {
                // Past the last row: flush a partial tile once, then stop.
                if (n == 0) break;
                for (int k = n; k < 4; k++) { xq[k] = xq[n - 1]; dq[k] = dq[n - 1]; }
                ox = a->out_w;
            }
            n = 0;
            for (int b = 0; b < nblk; b += CD_NBMAX) {
                const int nb = nblk - b < CD_NBMAX ? nblk - b : CD_NBMAX;
#if CD_NBMAX == 1
                (void)nb;
                CD_KERNEL(a, ctx, xq, b, 1, dq);
#else
                switch (nb) {
                case 4: CD_KERNEL(a, ctx, xq, b, 4, dq); break;
                case 3: CD_KERNEL(a, ctx, xq, b, 3, dq); break;
                case 2: CD_KERNEL(a, ctx, xq, b, 2, dq); break;
                default: CD_KERNEL(a, ctx, xq, b, 1, dq); break;
                }
#endif
            }
        }
    }
}
#undef CD_FN
#undef CD_ATTR
#undef CD_KERNEL
#undef CD_NBMAX
#undef CD_XT
