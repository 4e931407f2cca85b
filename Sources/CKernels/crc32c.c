// CRC-32C: reflected polynomial 0x82F63B78. Hardware paths are compiled with per-function target
// attributes so the default build stays portable; the choice is made once, at first use.
#include "CKernels.h"
#include <pthread.h>
#include <string.h>

static uint32_t table[8][256];

// Hardware paths run three independent CRC streams over three blocks of BLOCK bytes (the CRC
// instruction's latency is three times its throughput) and join them with `shift_block`, the
// GF(2) operator that appends BLOCK zero bytes to a CRC register.
#define BLOCK 4096
static uint32_t shift_block[32];

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    for (int n = 0; vec; n++, vec >>= 1)
        if (vec & 1) sum ^= mat[n];
    return sum;
}

// out = a∘b (out may not alias a or b).
static void gf2_compose(uint32_t *out, const uint32_t *a, const uint32_t *b) {
    for (int n = 0; n < 32; n++) out[n] = gf2_times(a, b[n]);
}

static void build_shift(uint32_t *op, size_t bytes) {
    uint32_t base[32], tmp[32];
    base[0] = 0x82F63B78u;  // one zero bit: c >> 1, xor the polynomial when the low bit was set
    for (int n = 1; n < 32; n++) base[n] = 1u << (n - 1);
    for (int k = 0; k < 3; k++) { gf2_compose(tmp, base, base); memcpy(base, tmp, sizeof tmp); }  // one byte
    for (int n = 0; n < 32; n++) op[n] = 1u << n;  // identity
    for (; bytes; bytes >>= 1) {
        if (bytes & 1) { gf2_compose(tmp, base, op); memcpy(op, tmp, sizeof tmp); }
        gf2_compose(tmp, base, base);
        memcpy(base, tmp, sizeof tmp);
    }
}

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
}

static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);  // little-endian hosts only (x86-64, AArch64)
        v ^= c;
        c = table[7][v & 0xFF] ^ table[6][(v >> 8) & 0xFF] ^ table[5][(v >> 16) & 0xFF] ^
            table[4][(v >> 24) & 0xFF] ^ table[3][(v >> 32) & 0xFF] ^ table[2][(v >> 40) & 0xFF] ^
            table[1][(v >> 48) & 0xFF] ^ table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
    while (n >= 3 * BLOCK) {
        uint64_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < BLOCK; i += 8) {
            uint64_t va, vb, vd;
            memcpy(&va, p + i, 8);
            memcpy(&vb, p + BLOCK + i, 8);
            memcpy(&vd, p + 2 * BLOCK + i, 8);
            a = _mm_crc32_u64(a, va);
            b = _mm_crc32_u64(b, vb);
            d = _mm_crc32_u64(d, vd);
        }
        c = gf2_times(shift_block, gf2_times(shift_block, (uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
        p += 3 * BLOCK;
        n -= 3 * BLOCK;
    }
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = _mm_crc32_u64(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = _mm_crc32_u8(c, *p++);
    return c;
}
static int hw_available(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
#elif defined(__aarch64__) && defined(__linux__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
__attribute__((target("crc")))
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
    while (n >= 3 * BLOCK) {
        uint32_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < BLOCK; i += 8) {
            uint64_t va, vb, vd;
            memcpy(&va, p + i, 8);
            memcpy(&vb, p + BLOCK + i, 8);
            memcpy(&vd, p + 2 * BLOCK + i, 8);
            a = __crc32cd(a, va);
            b = __crc32cd(b, vb);
            d = __crc32cd(d, vd);
        }
        c = gf2_times(shift_block, gf2_times(shift_block, a) ^ b) ^ d;
        p += 3 * BLOCK;
        n -= 3 * BLOCK;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __crc32cd(c, v);
        p += 8;
        n -= 8;
    }
    while (n--) c = __crc32cb(c, *p++);
    return c;
}
static int hw_available(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#else
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) { return crc_table(c, p, n); }
static int hw_available(void) { return 0; }
#endif

static uint32_t (*impl)(uint32_t, const uint8_t *, size_t);
static int use_hw;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void choose(void) {
    build_table();
    build_shift(shift_block, BLOCK);
    use_hw = hw_available();
    impl = use_hw ? crc_hw : crc_table;
}

int slim_crc32c_hardware(void) {
    pthread_once(&once, choose);
    return use_hw;
}

uint32_t slim_crc32c(uint32_t crc, const void *data, size_t length) {
    pthread_once(&once, choose);
    return ~impl(~crc, (const uint8_t *)data, length);
}
