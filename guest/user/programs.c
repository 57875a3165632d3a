/* The bundled programs. Each prints one "RESULT <name> key=value ..." line; timings are *_cycles (TSC). */
#include "lib.h"

int main_hello(int argc, char **argv)
{
    (void)argc; (void)argv;
    i64 pid = sys_getpid();
    print("Hello from NestorOS user space (pid %ld)\n", pid);
    print("RESULT hello pid=%ld\n", pid);
    return 0;
}

/* Adams & Agesen's forkwait: fork a child that exits at once, wait for it, N times. */
int main_forkwait(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 40000), failures = 0;
    u64 t0 = sys_uptime();
    for (u64 i = 0; i < n; i++) {
        i64 pid = sys_fork();
        if (pid == 0) sys_exit(0);
        int status = -1;
        if (pid < 0 || sys_waitpid((int)pid, &status) != pid || status != 0) failures++;
    }
    u64 t = sys_uptime() - t0;
    print("RESULT forkwait count=%lu failures=%lu total_cycles=%lu per_op_cycles=%lu\n", n, failures, t, n ? t / n : 0);
    return failures ? 1 : 0;
}

int main_syscall(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 1000000);
    i64 pid = 0;
    u64 t0 = sys_uptime();
    for (u64 i = 0; i < n; i++) pid = sys_getpid();
    u64 t = sys_uptime() - t0;
    print("RESULT syscall count=%lu pid=%ld total_cycles=%lu per_op_cycles=%lu\n", n, pid, t, n ? t / n : 0);
    return 0;
}

/* Touch N fresh pages: each first write is a demand-zero page fault. */
int main_pagefault(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 100000);
    u8 *p = sys_mmap(n * 4096);
    if ((i64)p < 0) { print("pagefault: mmap failed\n"); return 1; }
    u64 t0 = sys_uptime();
    for (u64 i = 0; i < n; i++) p[i * 4096] = 1;
    u64 t = sys_uptime() - t0;
    u64 sum = 0;
    for (u64 i = 0; i < n; i++) sum += p[i * 4096];
    sys_munmap(p, n * 4096);
    print("RESULT pagefault count=%lu sum=%lu total_cycles=%lu per_op_cycles=%lu\n", n, sum, t, n ? t / n : 0);
    return sum == n ? 0 : 1;
}

static u64 gcd(u64 a, u64 b) { while (b) { u64 t = a % b; a = b; b = t; } return a; }

/* TLB pressure: touch every page of SIZE_MB in sequential, pseudo-random (a full-period permutation) or 2 MiB
 * stride order, several passes. */
int main_memtouch(int argc, char **argv)
{
    u64 mb = parse_u64(argc > 1 ? argv[1] : 0, 16);
    const char *mode = argc > 2 ? argv[2] : "seq";
    u64 pages = mb * 256, passes = 4;
    if (!pages) return 1;
    u64 *p = sys_mmap(pages * 4096);
    if ((i64)p < 0) { print("memtouch: mmap failed\n"); return 1; }
    for (u64 i = 0; i < pages; i++) p[i * 512] = i;
    u64 step = 1;
    if (!strcmp(mode, "rand")) { step = 40503; while (gcd(step, pages) != 1) step += 2; }
    else if (!strcmp(mode, "stride")) step = 512;
    else if (strcmp(mode, "seq")) { print("memtouch: mode must be seq, rand or stride\n"); return 1; }
    u64 checksum = 0, touches = 0, t0 = sys_uptime();
    for (u64 pass = 0; pass < passes; pass++) {
        u64 index = pass;
        for (u64 i = 0; i < pages; i++) {
            index = (index + step) % pages;
            if (step == 512 && i % (pages / 512 ? pages / 512 : 1) == 0) index = (index + 1) % pages;
            checksum += p[index * 512]++;
            touches++;
        }
    }
    u64 t = sys_uptime() - t0;
    sys_munmap(p, pages * 4096);
    print("RESULT memtouch size_mb=%lu mode=%s pages=%lu touches=%lu checksum=%lu total_cycles=%lu\n", mb, mode, pages,
          touches, checksum, t);
    return 0;
}

/* Page-table churn: map 16 pages, touch them, unmap them, N times. */
int main_ptchurn(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 10000), sum = 0;
    u64 t0 = sys_uptime();
    for (u64 i = 0; i < n; i++) {
        u8 *p = sys_mmap(16 * 4096);
        if ((i64)p < 0) { print("ptchurn: mmap failed\n"); return 1; }
        for (int j = 0; j < 16; j++) p[j * 4096] = (u8)j;
        for (int j = 0; j < 16; j++) sum += p[j * 4096];
        sys_munmap(p, 16 * 4096);
    }
    u64 t = sys_uptime() - t0;
    print("RESULT ptchurn count=%lu pages_per_round=16 sum=%lu total_cycles=%lu per_op_cycles=%lu\n", n, sum, t,
          n ? t / n : 0);
    return 0;
}

/* CPU-bound: sieve of Eratosthenes up to N in a brk-allocated array, then a CRC-32 of the sieve. */
int main_compute(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 1000000);
    u8 *sieve = (u8 *)sys_brk(0);
    if (sys_brk((u64)sieve + n + 1) < 0) { print("compute: brk failed\n"); return 1; }
    u64 t0 = sys_uptime();
    memset(sieve, 1, n + 1);
    sieve[0] = 0;
    if (n >= 1) sieve[1] = 0;
    for (u64 i = 2; i * i <= n; i++)
        if (sieve[i]) for (u64 j = i * i; j <= n; j += i) sieve[j] = 0;
    u64 primes = 0;
    u32 crc = 0xFFFFFFFFu;
    for (u64 i = 0; i <= n; i++) {
        primes += sieve[i];
        crc ^= sieve[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    u64 t = sys_uptime() - t0;
    print("RESULT compute n=%lu primes=%lu crc=%x total_cycles=%lu\n", n, primes, ~crc, t);
    return 0;
}

/* The instructions that are sensitive but not privileged on x86 (Robin & Irvine), executed at CPL 3, and the
 * privilege level the kernel observes for its own code. Under a correct VMM the report equals bare metal's. */
int main_sensitive(int argc, char **argv)
{
    (void)argc; (void)argv;
    u64 cs, k[9];
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    /* The probes run in the kernel (SYS_KINFO 3), which is what a VMM deprivileges: its CPL as it sees it, whether
     * its POPF can clear IF, and the descriptor-table and task registers it reads with SGDT, SIDT, SLDT, STR, SMSW. */
    if (syscall5(SYS_KINFO, 3, (u64)k, 0, 0, 0) < 0) { print("sensitive: the kernel probe failed\n"); return 1; }
    print("RESULT sensitive user_cpl=%lu kernel_cpl=%lu kernel_popf_cleared_if=%lu sgdt_limit=%lu sgdt_base=%lx "
          "sidt_limit=%lu sidt_base=%lx sldt=%lu str=%lx smsw=%lx\n",
          cs & 3, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]);
    return 0;
}

/* A fault injected on purpose: a child dereferences a null pointer; only the child dies. */
int main_fault(int argc, char **argv)
{
    (void)argc; (void)argv;
    i64 pid = sys_fork();
    if (pid == 0) {
        volatile int *null = 0;
        *null = 1;
        sys_exit(0);
    }
    int status = -1;
    sys_waitpid((int)pid, &status);
    print("RESULT fault child_status=%d parent_survived=1\n", status);
    return status == KILLED_BY_FAULT + 14 ? 0 : 1;
}

/* Timer preemption: two processes that never make a system call while they compute. Without the timer the first
 * would run to the end before the second starts; with it, the kernel switches between them. */
int main_preempt(int argc, char **argv)
{
    u64 n = parse_u64(argc > 1 ? argv[1] : 0, 20000000);
    i64 before = sys_kinfo_of(2);
    i64 pid = sys_fork();
    volatile u64 sink = 0;
    for (u64 i = 0; i < n; i++) sink += i;
    if (pid == 0) sys_exit(sink == n * (n - 1) / 2 ? 0 : 1);
    int status = -1;
    sys_waitpid((int)pid, &status);
    i64 preemptions = sys_kinfo_of(2) - before;
    print("RESULT preempt child_status=%d preempted=%d\n", status, preemptions > 0);
    return status == 0 && preemptions > 0 ? 0 : 1;
}

/* One user-mode access to a test page that may fault: the kernel is told where to resume (and with which stack)
 * before the access, and reports the page-fault error code afterwards (0xff: no fault). */
static u8 probe_user(u64 va, int kind)
{
    if (kind == 0) {
        __asm__ volatile("lea 1f(%%rip), %%rsi\n mov %%rsp, %%rdx\n mov $13, %%eax\n mov $2, %%edi\n syscall\n"
                         "movb (%0), %%al\n1:" : : "r"(va) : "rax", "rdi", "rsi", "rdx", "rcx", "r11", "memory");
    } else if (kind == 1) {
        __asm__ volatile("lea 1f(%%rip), %%rsi\n mov %%rsp, %%rdx\n mov $13, %%eax\n mov $2, %%edi\n syscall\n"
                         "movb $0xC3, (%0)\n1:" : : "r"(va) : "rax", "rdi", "rsi", "rdx", "rcx", "r11", "memory");
    } else {
        __asm__ volatile("lea 1f(%%rip), %%rsi\n mov %%rsp, %%rdx\n mov $13, %%eax\n mov $2, %%edi\n syscall\n"
                         "call *%0\n1:" : : "r"(va) : "rax", "rdi", "rsi", "rdx", "rcx", "r8", "r9", "r10", "r11", "memory");
    }
    return (u8)syscall5(SYS_MMUTEST, 3, 0, 0, 0, 0);
}

static void hex(char *out, const u8 *bytes, int n)
{
    const char *digits = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = 0;
}

/* The MMU permission matrix (kernel/mmutest.c): 8 leaves (U/S, R/W, XD) x read/write/fetch, from the kernel under
 * every CR0.WP/SMEP/SMAP setting and from user mode; each entry the page-fault error code or ff. */
int main_mmutest(int argc, char **argv)
{
    (void)argc; (void)argv;
    i64 features = syscall5(SYS_MMUTEST, 0, 0, 0, 0, 0);
    u8 supervisor[192], user[24];
    i64 n = syscall5(SYS_MMUTEST, 1, (u64)supervisor, 0, 0, 0);
    if (n != 192) { print("mmutest: supervisor probes failed (%ld)\n", n); return 1; }
    for (int p = 0; p < 8; p++)
        for (int kind = 0; kind < 3; kind++) user[p * 3 + kind] = probe_user(0x00000b0000000000UL + (u64)p * 4096, kind);
    static char text[2 * 192 + 1];
    hex(text, supervisor, 96);
    print("RESULT mmutest smep=%ld smap=%ld supervisor_without_smap=%s\n", features & 1, (features >> 1) & 1, text);
    hex(text, supervisor + 96, 96);
    print("RESULT mmutest_smap supervisor_with_smap=%s\n", text);
    hex(text, user, 24);
    print("RESULT mmutest_user user=%s\n", text);
    return 0;
}

/* Adams & Agesen's nanobenchmarks: `nanobench OP [COUNT]`, OP one of syscall, in, cr8wr, callret, pgfault, divzero,
 * ptemod. All but syscall run in the kernel (SYS_NANOBENCH); syscall is a getpid loop from user mode. */
int main_nanobench(int argc, char **argv)
{
    static const char *names[] = { "in", "cr8wr", "callret", "pgfault", "divzero", "ptemod" };
    const char *op = argc > 1 ? argv[1] : "ptemod";
    u64 n = parse_u64(argc > 2 ? argv[2] : 0, 10000);
    i64 total;
    if (!strcmp(op, "syscall")) {
        u64 t0 = sys_uptime();
        for (u64 i = 0; i < n; i++) sys_getpid();
        total = (i64)(sys_uptime() - t0);
    } else {
        u64 k = 0;
        while (k < 6 && strcmp(op, names[k])) k++;
        if (k == 6) { print("nanobench: no operation %s (syscall, in, cr8wr, callret, pgfault, divzero, ptemod)\n", op); return 2; }
        total = syscall5(SYS_NANOBENCH, k, n, 0, 0, 0);
        if (total < 0) { print("nanobench: %s failed\n", op); return 1; }
    }
    print("RESULT nanobench op=%s count=%lu total_cycles=%lu per_op_cycles=%lu\n", op, n, (u64)total, n ? (u64)total / n : 0);
    return 0;
}
