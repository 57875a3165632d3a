/* Adams & Agesen's nanobenchmarks (ASPLOS 2006, §6), run in the kernel so that each operation is just the event being
 * measured plus a loop: `in` (a port read), `cr8wr` (a CR8 write), `call/ret`, `pgfault` (a page fault the handler
 * resolves by resuming after the access), `divzero` (a divide error resolved the same way) and `ptemod` (a write to
 * a page-table entry). Under a VMM each becomes what that VMM makes of it: an exit, a trace fault, nothing. The user
 * program `nanobench` calls them by SYS_NANOBENCH and prints the guest's own cycle count per operation. */
#include "kernel.h"

extern volatile int probing;
extern volatile u64 probe_resume, probe_rsp, probe_error;

#define UNMAPPED 0x00000c0000000000UL   /* PML4 entry 24: never mapped */

static __attribute__((noinline)) u64 callee(u64 x) { __asm__ volatile("" : "+r"(x)); return x + 1; }

i64 nanobench(u64 op, u64 count)
{
    u64 start = rdtsc();
    switch (op) {
    case NANOBENCH_IN:
        for (u64 i = 0; i < count; i++) (void)inb(0x3fd);   /* COM1's line status register */
        break;
    case NANOBENCH_CR8WR:
        for (u64 i = 0; i < count; i++) __asm__ volatile("mov %0, %%cr8" : : "r"(i & 0xF) : "memory");
        __asm__ volatile("mov %0, %%cr8" : : "r"(0UL) : "memory");
        break;
    case NANOBENCH_CALLRET: {
        u64 x = 0;
        for (u64 i = 0; i < count; i++) x = callee(x);
        if (x != count) return -1;
        break;
    }
    case NANOBENCH_PGFAULT:
    case NANOBENCH_DIVZERO:
        for (u64 i = 0; i < count; i++) {
            probing = 1;
            if (op == NANOBENCH_PGFAULT) {
                __asm__ volatile("mov %%rsp, probe_rsp(%%rip)\n lea 1f(%%rip), %%rax\n mov %%rax, probe_resume(%%rip)\n"
                                 "movb (%0), %%al\n1:" : : "r"(UNMAPPED) : "rax", "memory");
            } else {
                __asm__ volatile("mov %%rsp, probe_rsp(%%rip)\n lea 1f(%%rip), %%rax\n mov %%rax, probe_resume(%%rip)\n"
                                 "xor %%ecx, %%ecx\n xor %%edx, %%edx\n mov $1, %%eax\n div %%ecx\n1:"
                                 : : : "rax", "rcx", "rdx", "memory");
            }
            if (probing) return -1;   /* the access did not fault */
        }
        break;
    case NANOBENCH_PTEMOD: {
        /* Page 0's entry in the kernel's first page table: never present (null pointers fault), so rewriting it with
         * other not-present values changes no translation and needs no INVLPG; but it is a page-table write. */
        u64 *pte = pte_lookup(read_cr3() & PTE_ADDR, 0, 0);
        if (!pte) return -1;
        for (u64 i = 0; i < count; i++) pt_set_entry(pte, (i & 0xFF) << 12);
        pt_set_entry(pte, 0);
        break;
    }
    default:
        return -E_INVAL;
    }
    return (i64)(rdtsc() - start);
}

/* Robin & Irvine's sensitive but unprivileged instructions, executed by the kernel (CPL 0 on bare metal): what it
 * sees of its own privilege level, whether POPF can clear IF, and where the descriptor tables and task register are.
 * A trap-and-emulate VMM that runs the kernel in ring 1 cannot catch any of them (the `sensitive` program). */
struct vcpu_info {
    u64 privilege_level;
    u64 gdt_limit, gdt_base, idt_limit, idt_base;
    u64 ldt, task_register, cr0;
};

void sensitive_probe(u64 *out)
{
    if (paravirtual) {
        /* A paravirtual kernel knows it is deprivileged: it asks the hypervisor for its virtual CPU's state, and
         * manipulates the virtual IF by hypercall, instead of running the sensitive instructions. */
        struct vcpu_info v;
        hypercall(HC_VCPU_INFO, (u64)&v, 0);
        u64 before = hypercall(HC_SET_INTERRUPTS, 1, 0);
        hypercall(HC_SET_INTERRUPTS, 0, 0);
        u64 after = hypercall(HC_SET_INTERRUPTS, before, 0);
        out[0] = v.privilege_level;
        out[1] = after == 0;
        out[2] = v.gdt_limit;
        out[3] = v.gdt_base;
        out[4] = v.idt_limit;
        out[5] = v.idt_base;
        out[6] = v.ldt;
        out[7] = v.task_register;
        out[8] = v.cr0 & 0xFFFF;
        return;
    }
    u64 cs, flags;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    /* With IF set (STI), POPF a copy with IF clear, and look: at CPL > IOPL the change is silently dropped (SDM Vol. 2B
     * POPF). Then CLI, as the system call runs with interrupts off. */
    __asm__ volatile("sti; pushfq; andq $~0x200, (%%rsp); popfq; pushfq; pop %0; cli" : "=r"(flags) : : "memory", "cc");
    struct { u16 limit; u64 base; } __attribute__((packed)) gdtr, idtr;
    __asm__ volatile("sgdt %0" : "=m"(gdtr));
    __asm__ volatile("sidt %0" : "=m"(idtr));
    u16 ldtr, tr;
    u64 msw;
    __asm__ volatile("sldt %0" : "=r"(ldtr));
    __asm__ volatile("str %0" : "=r"(tr));
    __asm__ volatile("smsw %0" : "=r"(msw));
    out[0] = cs & 3;
    out[1] = ((flags >> 9) & 1) == 0;
    out[2] = gdtr.limit;
    out[3] = gdtr.base;
    out[4] = idtr.limit;
    out[5] = idtr.base;
    out[6] = ldtr;
    out[7] = tr;
    out[8] = msw & 0xFFFF;
}
