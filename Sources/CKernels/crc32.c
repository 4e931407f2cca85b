// CRC-32 (IEEE), slicing by 8, for MCAP's data, chunk and summary checksums.
#include "CKernels.h"
#include <pthread.h>
#include <string.h>

static uint32_t t32[8][256];
static pthread_once_t once32 = PTHREAD_ONCE_INIT;

static void build32(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        t32[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) t32[t][i] = (t32[t - 1][i] >> 8) ^ t32[0][t32[t - 1][i] & 0xFF];
}

uint32_t slim_crc32(uint32_t crc, const void *data, size_t n) {
    pthread_once(&once32, build32);
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= c;
        c = t32[7][v & 0xFF] ^ t32[6][(v >> 8) & 0xFF] ^ t32[5][(v >> 16) & 0xFF] ^ t32[4][(v >> 24) & 0xFF] ^
            t32[3][(v >> 32) & 0xFF] ^ t32[2][(v >> 40) & 0xFF] ^ t32[1][(v >> 48) & 0xFF] ^ t32[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ t32[0][(c ^ *p++) & 0xFF];
    return ~c;
}
