// Which kernel paths this CPU runs, decided once per process from CPUID (x86-64, through the
// compiler's cpu-model runtime, which also checks that the OS saves the wider registers) or from
// the kernel's HWCAP bits (aarch64). Also the CPUs a process may run on, and pinning a thread to one.
#define _GNU_SOURCE
#include "SlimKernels.h"
#include <pthread.h>
#include <sched.h>

static int supported[SLIM_PATH_COUNT];
static pthread_once_t once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__)
static void detect(void) {
    __builtin_cpu_init();
    supported[SLIM_PATH_PORTABLE] = 1;
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    supported[SLIM_PATH_AVX2] = avx2;
    supported[SLIM_PATH_AVX_VNNI] = avx2 && __builtin_cpu_supports("avxvnni");
    supported[SLIM_PATH_AVX512] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
static void detect(void) {
    unsigned long hw = getauxval(AT_HWCAP);
    supported[SLIM_PATH_PORTABLE] = 1;
    supported[SLIM_PATH_NEON] = (hw & HWCAP_ASIMD) != 0;
    supported[SLIM_PATH_NEON_DOT] = (hw & HWCAP_ASIMD) && (hw & HWCAP_ASIMDDP);
}
#else
static void detect(void) { supported[SLIM_PATH_PORTABLE] = 1; }
#endif

int slim_path_supported(int path) {
    if (path < 0 || path >= SLIM_PATH_COUNT) return 0;
    pthread_once(&once, detect);
    return supported[path];
}

int slim_path_best(void) {
    static const int order[] = {SLIM_PATH_AVX512, SLIM_PATH_AVX_VNNI, SLIM_PATH_AVX2, SLIM_PATH_NEON_DOT, SLIM_PATH_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (slim_path_supported(order[i])) return order[i];
    return SLIM_PATH_PORTABLE;
}

const char *slim_path_name(int path) {
    static const char *names[SLIM_PATH_COUNT] = {"portable", "avx2", "avx-vnni", "avx512", "neon", "neon-dot"};
    return path >= 0 && path < SLIM_PATH_COUNT ? names[path] : NULL;
}

int slim_allowed_cpus(int *cpus, int max) {
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < max; c++)
        if (CPU_ISSET(c, &set)) cpus[n++] = c;
    return n;
#else
    (void)cpus;
    (void)max;
    return 0;
#endif
}

int slim_pin_thread(int cpu) {
#ifdef __linux__
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -1;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0 ? 0 : -1;
#else
    (void)cpu;
    return -1;
#endif
}
