#ifndef SLIMSPLIT_ALLOC_COUNTER_H
#define SLIMSPLIT_ALLOC_COUNTER_H
#include <stdint.h>
/// Heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign) made by
/// the calling thread so far. Linked only into the benchmark and the tests, which use it
/// to show that a hot path allocates nothing.
uint64_t slim_alloc_count(void);
#endif
