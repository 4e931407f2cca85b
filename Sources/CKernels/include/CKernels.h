#ifndef SLIMSPLIT_CKERNELS_H
#define SLIMSPLIT_CKERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "SlimKernels.h"

/// CRC-32C (Castagnoli), continuing from `crc` (pass 0 to start). Uses the SSE4.2 or ARMv8 CRC
/// instructions when the CPU has them (checked once at run time), a table otherwise.
uint32_t slim_crc32c(uint32_t crc, const void *data, size_t length);

/// CRC-32 (IEEE 802.3, zlib's; reflected polynomial 0xEDB88320), continuing from `crc` (0 to
/// start): the checksum of MCAP files.
uint32_t slim_crc32(uint32_t crc, const void *data, size_t length);

/// 1 if the hardware CRC-32C path is in use.
int slim_crc32c_hardware(void);

#endif
