/* GDT, TSS, IDT and exception handling. */
#include "blkring.h"
#include "virtio_balloon.h"

struct tss {
    u32 reserved0;
    u64 rsp0, rsp1, rsp2;
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3, iomap_base;
} __attribute__((packed));

static u64 gdt[7];
static struct tss tss;
static u64 idt[256 * 2];

struct table_pointer { u16 limit; u64 base; } __attribute__((packed));

static const char *const exception_names[32] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode", "device not available",
    "double fault", "coprocessor segment overrun", "invalid TSS", "segment not present", "stack fault",
    "general protection", "page fault", "reserved", "x87 floating point", "alignment check", "machine check",
    "SIMD floating point", "virtualization", "control protection", "reserved", "reserved", "reserved", "reserved",
    "reserved", "reserved", "reserved", "reserved", "security", "reserved",
};

void set_kernel_stack(u64 top)
{
    tss.rsp0 = top;
    kernel_stack_top = top;
}

void cpu_init(void)
{
    gdt[0] = 0;
    gdt[1] = 0x00AF9A000000FFFFUL;   /* 0x08 kernel code, 64-bit */
    gdt[2] = 0x00CF92000000FFFFUL;   /* 0x10 kernel data */
    gdt[3] = 0x00CFF2000000FFFFUL;   /* 0x18 user data, DPL 3 */
    gdt[4] = 0x00AFFA000000FFFFUL;   /* 0x20 user code, 64-bit, DPL 3 */
    u64 base = (u64)&tss, limit = sizeof(tss) - 1;
    gdt[5] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89UL << 40) | (((limit >> 16) & 0xF) << 48) |
             (((base >> 24) & 0xFF) << 56);
    gdt[6] = base >> 32;
    tss.iomap_base = sizeof(tss);
    struct table_pointer gp = { sizeof(gdt) - 1, (u64)gdt };
    __asm__ volatile(
        "lgdt %0\n"
        "mov $0x10, %%ax\n mov %%ax, %%ds\n mov %%ax, %%es\n mov %%ax, %%ss\n"
        "xor %%eax, %%eax\n mov %%ax, %%fs\n mov %%ax, %%gs\n"
        "pushq $0x08\n lea 1f(%%rip), %%rax\n pushq %%rax\n lretq\n1:\n"
        "mov $0x28, %%ax\n ltr %%ax\n"
        : : "m"(gp) : "rax", "memory");

    for (int v = 0; v <= DEVICE_VECTOR_LAST; v++) {
        u64 handler = isr_table[v];
        /* 64-bit interrupt gate, present, DPL 0 (SDM Vol. 3A §6.14.1). */
        idt[v * 2] = (handler & 0xFFFF) | ((u64)KERNEL_CS << 16) | (0x8EUL << 40) | (((handler >> 16) & 0xFFFF) << 48);
        idt[v * 2 + 1] = handler >> 32;
    }
    struct table_pointer ip = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(ip));

    /* SYSCALL/SYSRET (SDM Vol. 2B): kernel CS 0x08; SYSRET uses 0x10+16 = 0x20 for CS and 0x10+8 = 0x18 for SS. */
    wrmsr(0xC0000080, rdmsr(0xC0000080) | 1);               /* EFER.SCE */
    wrmsr(0xC0000081, (0x10UL << 48) | (0x08UL << 32));     /* STAR */
    wrmsr(0xC0000082, (u64)syscall_entry);                   /* LSTAR */
    wrmsr(0xC0000084, 0x200);                                /* SFMASK: clear IF on entry */

    /* Mask both 8259 PICs: NestorOS has no interrupt sources yet, and a firmware-programmed timer must not
     * arrive on an exception vector once user code runs with IF set. */
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

/* Local APIC timer (Intel SDM Vol. 3A §10.5.4), in periodic mode on vector 32. The APIC's page at 0xFEE00000 is
 * inside the kernel's identity map. Interrupts are only ever enabled in user mode (system calls and exceptions
 * enter with IF clear), so the kernel itself is never preempted. */
#define APIC 0xFEE00000UL
#define TIMER_PERIOD 1000000

u64 timer_ticks, preemptions;

static void apic_write(u32 offset, u32 value) { *(volatile u32 *)(APIC + offset) = value; }

void timer_init(void)
{
    apic_write(0xF0, 0x1FF);                        /* software enable, spurious vector 0xFF */
    apic_write(0x3E0, 0xB);                         /* divide by 1 */
    apic_write(0x320, TIMER_VECTOR | (1u << 17));   /* periodic */
    apic_write(0x380, TIMER_PERIOD);                /* initial count: starts the timer */
}

void timer_interrupt(struct trap_frame *f)
{
    timer_ticks++;
    apic_write(0xB0, 0);                            /* EOI */
    if ((f->cs & 3) == 3) {
        balloon_tick();                             /* a new balloon target, a statistics request (virtio_balloon.c) */
        preemptions++;
        preempt_current();
    }
}

void trap_handler(struct trap_frame *f)
{
    if (f->vector == TIMER_VECTOR) {
        timer_interrupt(f);
        return;
    }
    if (f->vector >= ATA_VECTOR && f->vector <= DEVICE_VECTOR_LAST) {
        /* A disk's interrupt: they are only enabled while the kernel waits for one (block.c). */
        if (f->vector == ATA_VECTOR) ata_interrupt();
        else if (f->vector == EVENT_VECTOR) event_channel_interrupt();
        else if (f->vector < NDMA_VECTOR_BASE) virtio_interrupt((u32)(f->vector - VIRTIO_VECTOR_BASE));
        else ndma_interrupt((u32)(f->vector - NDMA_VECTOR_BASE));
        return;
    }
    u64 cr2 = f->vector == 14 ? read_cr2() : 0;
    int from_user = (f->cs & 3) == 3;
    extern int mmutest_fault(struct trap_frame *f);
    if ((f->vector == 14 || f->vector == 0) && !from_user && mmutest_fault(f)) return; /* armed kernel probes */
    if (f->vector == 14 && cr2 >= USER_BASE && cr2 < USER_TOP) {
        if (user_page_fault(cr2, f->error) == 0) return;
        kill_current(f, 14, cr2);
    }
    if (from_user) kill_current(f, f->vector, cr2);
    panic("%s (vector %lu) in the kernel, error code 0x%lx, CR2=0x%lx, RIP=0x%lx, RSP=0x%lx, pid %d",
          f->vector < 32 ? exception_names[f->vector] : "interrupt", f->vector, f->error, cr2, f->rip, f->rsp,
          current_pid);
}

const char *exception_name(u64 vector) { return vector < 32 ? exception_names[vector] : "interrupt"; }
