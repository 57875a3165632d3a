/* NestorOS kernel entry: find memory and the command line from whichever boot protocol started us, build the
 * kernel's own page tables and CPU tables, and start init. */
#include "blkring.h"
#include "virtio_balloon.h"
#include "swap.h"

extern char __image_start[], __bss_end[];

#define MAX_RANGES 32
static struct { u64 start, end; } usable[MAX_RANGES];
static int usable_count;
static char cmdline[512];

static void add_usable(u64 start, u64 end)
{
    if (usable_count < MAX_RANGES && end > start) {
        usable[usable_count].start = start;
        usable[usable_count].end = end;
        usable_count++;
    }
}

static void copy_cmdline(const char *s, usize n)
{
    if (n >= sizeof(cmdline)) n = sizeof(cmdline) - 1;
    memcpy(cmdline, s, n);
    cmdline[n] = 0;
}

/* Nestor boot protocol: the boot-information block (docs/boot-protocol.md). */
static void read_nestor_boot_information(u64 block)
{
    if (*(u64 *)block != 0x4942524F5453454EUL) panic("bad Nestor boot-information magic");
    copy_cmdline((const char *)*(u64 *)(block + 0x18), *(u32 *)(block + 0x20));
    u32 count = *(u32 *)(block + 0x24);
    u64 map = *(u64 *)(block + 0x28);
    for (u32 i = 0; i < count; i++) {
        u64 *e = (u64 *)(map + i * 24);
        if (*(u32 *)(e + 2) == 1) add_usable(e[0], e[0] + e[1]);
    }
}

/* Multiboot v1 information structure (Multiboot Specification 0.6.96 §3.3). */
static void read_multiboot_information(u64 info)
{
    u32 flags = *(u32 *)info;
    if (flags & (1 << 2)) {
        const char *s = (const char *)(u64) * (u32 *)(info + 16);
        /* Multiboot loaders (QEMU, GRUB) put the kernel's path first: the command line proper follows it. */
        while (*s && *s != ' ') s++;
        while (*s == ' ') s++;
        copy_cmdline(s, strlen(s));
    }
    if (!(flags & (1 << 6))) panic("the Multiboot loader gave no memory map");
    u64 address = *(u32 *)(info + 48), end = address + *(u32 *)(info + 44);
    while (address < end) {
        u32 size = *(u32 *)address;
        u64 base = *(u64 *)(address + 4), length = *(u64 *)(address + 12);
        u32 type = *(u32 *)(address + 20);
        if (type == 1) add_usable(base, base + length);
        address += size + 4;
    }
}

static void detect_hypervisor(void)
{
    u32 eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
    if (!(ecx & (1u << 31))) return;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0x40000000), "c"(0));
    char sig[13];
    memcpy(sig, &ebx, 4);
    memcpy(sig + 4, &ecx, 4);
    memcpy(sig + 8, &edx, 4);
    sig[12] = 0;
    running_on_nestor = !strcmp(sig, "NestorNestor");
    if (running_on_nestor && eax >= NESTOR_CPUID_FEATURES) {
        __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(NESTOR_CPUID_FEATURES), "c"(0));
        paravirtual = (eax & NESTOR_FEATURE_PV) != 0;
    }
}

u64 frames_at_init;

void kernel_main(int kind, u64 info)
{
    console_init();
    if (kind == 0) read_nestor_boot_information(info);
    else read_multiboot_information(info);

    /* Free frames: usable RAM above the kernel image (and its bss) and below 4 GiB, the identity-mapped part. */
    u64 floor = ((u64)__bss_end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), top = 0;
    for (int i = 0; i < usable_count; i++) {
        u64 s = usable[i].start < floor ? floor : usable[i].start;
        u64 e = usable[i].end > 0x100000000UL ? 0x100000000UL : usable[i].end;
        if (e > s) {
            frames_add_range(s, e);
            if (e > top) top = e;
        }
    }
    frames_init_refcounts(top);
    u64 total = frames_free_count();
    detect_hypervisor();
    paging_init();
    cpu_init();
    kprintf("NestorOS: booted by %s, %lu MiB free, hypervisor %s, command line \"%s\"\n",
            kind == 0 ? "the Nestor boot protocol" : "Multiboot", total * PAGE_SIZE >> 20,
            running_on_nestor ? (paravirtual ? "Nestor (paravirtual)" : "Nestor") : "not Nestor", cmdline);
    if (!strcmp(cmdline, "panic-test")) {
        kprintf("NestorOS: dereferencing a null pointer in the kernel on purpose\n");
        *(volatile u64 *)0 = 1;
    }
    /* Disks, found by probing (docs/devices.md); the block layer's options lead the command line. */
    struct block_options options = { 0, 0, 0, 0, SERVICE_VM_NONE, 0, 0 };
    const char *commands = block_parse_options(cmdline, &options);
    /* swap=DEV (swap.c) may come before, after or between the block layer's options. */
    for (const char *after; (after = swap_parse_option(commands)) != commands; ) commands = block_parse_options(after, &options);
    /* The service VM's back-end runs no processes: no timer to preempt them (blkback.c), and no init. */
    if (options.service_vm != SERVICE_VM_BACK) timer_init();
    block_init(&options);
    swap_init();
    if (options.service_vm == SERVICE_VM_BACK) blkback_serve(options.forge_response);
    virtio_balloon_probe(total);
    frames_at_init = frames_free_count();
    process_start_init(commands);
}
