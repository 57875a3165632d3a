/* The MMU permission matrix (Intel SDM Vol. 3A §4.6, §4.7), measured rather than assumed: every combination of a
 * leaf's U/S, R/W and XD bits, read/write/fetch, CR0.WP, CR4.SMEP and CR4.SMAP, from supervisor code, and the
 * same leaves from user code. Each access either succeeds or takes a page fault whose error code is recorded; the
 * fault handler resumes after the access. The `mmutest` program prints the matrix, so the same report can be
 * compared between QEMU's software CPU and Nestor's. */
#include "kernel.h"

#define TEST_BASE 0x00000b0000000000UL  /* PML4 entry 22: user space, unused by programs */
#define PAGES 8                   /* leaf flags: bit 0 U/S, bit 1 R/W, bit 2 XD */

volatile int probing;
volatile u64 probe_error;
volatile u64 probe_resume;
volatile u64 probe_rsp;

static int has_smep, has_smap;

static u64 read_cr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static void write_cr0(u64 v) { __asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory"); }
static u64 read_cr4(void) { u64 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static void write_cr4(u64 v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }

/* Called by trap_handler for a page fault while a supervisor probe is active. */
int mmutest_fault(struct trap_frame *f)
{
    if (!probing) return 0;
    probe_error = f->error;
    f->rip = probe_resume;
    f->rsp = probe_rsp;
    probing = 0;
    return 1;
}

static void setup_pages(u64 pml4)
{
    for (u64 p = 0; p < PAGES; p++) {
        u64 va = TEST_BASE + p * PAGE_SIZE;
        u64 *pte = pte_lookup(pml4, va, 1);
        if (!pte) panic("mmutest: no memory");
        u64 frame = *pte & PTE_P ? *pte & PTE_ADDR : frame_alloc();
        memset((void *)frame, 0xC3, PAGE_SIZE); /* RET, for the fetch probes */
        u64 flags = PTE_P | ((p & 1) ? PTE_U : 0) | ((p & 2) ? PTE_W : 0) | ((p & 4) ? PTE_NX : 0);
        pt_set_entry(pte, frame | flags);
        invlpg(va);
    }
}

static u8 probe(u64 va, int kind)
{
    invlpg(va);
    probe_error = 0xFF;
    probing = 1;
    if (kind == 0) {
        __asm__ volatile("mov %%rsp, probe_rsp(%%rip)\n lea 1f(%%rip), %%rax\n mov %%rax, probe_resume(%%rip)\n"
                         "movb (%0), %%al\n1:" : : "r"(va) : "rax", "memory");
    } else if (kind == 1) {
        __asm__ volatile("mov %%rsp, probe_rsp(%%rip)\n lea 1f(%%rip), %%rax\n mov %%rax, probe_resume(%%rip)\n"
                         "movb $0xC3, (%0)\n1:" : : "r"(va) : "rax", "memory");
    } else {
        __asm__ volatile("mov %%rsp, probe_rsp(%%rip)\n lea 1f(%%rip), %%rax\n mov %%rax, probe_resume(%%rip)\n"
                         "call *%0\n1:" : : "r"(va) : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory");
    }
    probing = 0;
    return (u8)probe_error;
}

/* op 0: map the test pages; op 1: run the supervisor matrix into buffer (PAGES × 3 kinds × 8 settings bytes);
 * returns the number of bytes, or -errno. */
i64 mmutest_syscall(u64 op, u64 buffer, u64 pml4)
{
    if (op == 0) {
        u32 a, b, c, d;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
        has_smep = (b >> 7) & 1;
        has_smap = (b >> 20) & 1;
        setup_pages(pml4);
        return has_smep | (has_smap << 1);
    }
    u8 results[PAGES * 3 * 8];
    u64 cr0 = read_cr0(), cr4 = read_cr4();
    int n = 0;
    for (int setting = 0; setting < 8; setting++) {
        int wp = setting & 1, smep = (setting >> 1) & 1, smap = (setting >> 2) & 1;
        if ((smep && !has_smep) || (smap && !has_smap)) {
            for (int i = 0; i < PAGES * 3; i++) results[n++] = 0xEE; /* not supported by this CPU */
            continue;
        }
        write_cr0(wp ? cr0 | (1UL << 16) : cr0 & ~(1UL << 16));
        write_cr4((cr4 & ~((1UL << 20) | (1UL << 21))) | ((u64)smep << 20) | ((u64)smap << 21));
        for (u64 p = 0; p < PAGES; p++) {
            for (int kind = 0; kind < 3; kind++) results[n++] = probe(TEST_BASE + p * PAGE_SIZE, kind);
        }
        write_cr4(cr4);
        write_cr0(cr0);
    }
    memcpy((void *)buffer, results, (usize)n);
    return n;
}
