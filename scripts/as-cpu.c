// A smaller x86-64 CPU, seen by one process tree at native speed: an LD_PRELOAD library that
// turns CPUID into a fault (Linux's ARCH_SET_CPUID, where the CPU or hypervisor offers CPUID
// faulting: the `cpuid_fault` flag) and answers every CPUID with the real result less the
// features of the view named by AS_CPU_VIEW:
//   avx2  x86-64-v3 as on Haswell/Zen 2: no AVX-512 of any kind, no AVX-VNNI, no GFNI/VAES/VPCLMULQDQ
//   sse4  x86-64-v2: the above, and no AVX, AVX2, FMA, F16C either
// Used by scripts/as-cpu to measure SlimSplit *and* its peers (ONNX Runtime's MLAS dispatches on
// CPUID too) as they run on a CPU without AVX-512, on a machine that has it. Only CPUID is
// masked: the wider instructions still execute if code uses them without asking, so this shows
// what each program *chooses*, not a proof that no wider instruction is ever executed.
//
// The setting is per thread, inherited by threads and children and cleared by execve; the library
// re-arms it in every process it is loaded into. A program's own SIGSEGV handler (Python's
// faulthandler, Swift's backtracer) is kept and called for every other fault.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

enum { VIEW_AVX2 = 1, VIEW_SSE4 = 2 };
static int view;
static struct sigaction program_handler; // what the program asked for SIGSEGV (default: SIG_DFL)
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static long arch_prctl_(int code, unsigned long arg) { return syscall(SYS_arch_prctl, code, arg); }

static void mask(unsigned leaf, unsigned sub, unsigned r[4]) {
    enum { A, B, C, D };
    if (leaf == 1 && view == VIEW_SSE4) r[C] &= ~((1u << 12) | (1u << 28) | (1u << 29)); // FMA, AVX, F16C
    if (leaf == 7 && sub == 0) {
        // EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL. ECX: VBMI, VBMI2, GFNI, VAES, VPCLMULQDQ,
        // VNNI, BITALG, VPOPCNTDQ. EDX: 4VNNIW, 4FMAPS, VP2INTERSECT, FP16.
        r[B] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        r[C] &= ~((1u << 1) | (1u << 6) | (1u << 8) | (1u << 9) | (1u << 10) | (1u << 11) | (1u << 12) | (1u << 14));
        r[D] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
        if (view == VIEW_SSE4) r[B] &= ~(1u << 5); // AVX2
    }
    if (leaf == 7 && sub == 1) {
        r[A] &= ~((1u << 4) | (1u << 5) | (1u << 23)); // AVX-VNNI, AVX512_BF16, AVX-IFMA
        r[D] &= ~((1u << 4) | (1u << 5) | (1u << 10) | (1u << 19)); // AVX-VNNI-INT8, -NE-CONVERT, -VNNI-INT16, AVX10
    }
    if (leaf == 0xd && sub == 0) r[A] &= ~0xe0u; // opmask and ZMM state: not supported
    if (leaf == 0x24) r[A] = r[B] = r[C] = r[D] = 0; // AVX10
}

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    greg_t *g = ((ucontext_t *)ctx)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    // A CPUID fault is a #GP: SI_KERNEL, at an instruction that was just fetched (so readable).
    if (si->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], r[4];
        arch_prctl_(ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        arch_prctl_(ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        g[REG_RAX] = r[0], g[REG_RBX] = r[1], g[REG_RCX] = r[2], g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    if (program_handler.sa_flags & SA_SIGINFO) {
        program_handler.sa_sigaction(sig, si, ctx);
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(sig);
    } else {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        real_sigaction(SIGSEGV, &dfl, NULL); // the faulting instruction runs again and kills the process
    }
}

// The program's SIGSEGV handler is recorded, not installed, so CPUID keeps being answered.
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !view) return real_sigaction(sig, act, old);
    if (old) *old = program_handler;
    if (act) program_handler = *act;
    return 0;
}

// signal() (perf, some C programs) goes through the same record.
sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act = {.sa_handler = handler, .sa_flags = SA_RESTART}, old;
    sigemptyset(&act.sa_mask);
    return sigaction(sig, &act, &old) == 0 ? old.sa_handler : SIG_ERR;
}

__attribute__((constructor)) static void arm(void) {
    real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    const char *v = getenv("AS_CPU_VIEW");
    if (!v || !*v) return;
    if (!strcmp(v, "avx2")) view = VIEW_AVX2;
    else if (!strcmp(v, "sse4")) view = VIEW_SSE4;
    else { fprintf(stderr, "as-cpu: unknown AS_CPU_VIEW '%s' (avx2 or sse4)\n", v); _exit(2); }
    struct sigaction sa = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO};
    sigemptyset(&sa.sa_mask);
    real_sigaction(SIGSEGV, &sa, NULL);
    if (arch_prctl_(ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "as-cpu: this CPU or hypervisor offers no CPUID faulting (no cpuid_fault in /proc/cpuinfo)\n");
        _exit(2);
    }
}
