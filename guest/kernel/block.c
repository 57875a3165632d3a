/* The block layer: a table of the block devices the drivers found, and blkinfo/blkio over it. A transfer goes
 * through one bounce buffer of physically contiguous frames (1 MiB, reserved at boot only when a disk exists, so a
 * VM without one boots exactly as before): the user's pages are neither contiguous nor known to be present, and a
 * DMA device (virtio, NDMA) needs one guest-physical range. The kernel is never preempted, so one buffer serves
 * every process. */
#include "blkring.h"

static struct block_device devices[BLOCK_MAX_DEVICES];
static int device_count;
static u64 bounce;          /* kernel address (= guest-physical) of the bounce buffer; 0 without disks */

struct block_device *block_register(const char *name, u64 sectors, int read_only, u32 interface, u32 flags,
                                    const struct block_operations *operations, void *driver)
{
    if (device_count == BLOCK_MAX_DEVICES) {
        kprintf("NestorOS: block device %s ignored: the table holds %d\n", name, BLOCK_MAX_DEVICES);
        return 0;
    }
    struct block_device *d = &devices[device_count++];
    usize n = strlen(name);
    if (n > sizeof(d->name) - 1) n = sizeof(d->name) - 1;
    memcpy(d->name, name, n);
    d->name[n] = 0;
    d->sectors = sectors;
    d->read_only = read_only;
    d->interface = interface;
    d->flags = flags;
    d->operations = operations;
    d->driver = driver;
    return d;
}

static int starts_with(const char *s, const char *prefix)
{
    while (*prefix) if (*s++ != *prefix++) return 0;
    return 1;
}

static int word_is(const char *s, const char *word)
{
    return starts_with(s, word) && (s[strlen(word)] == ' ' || s[strlen(word)] == 0);
}

/* Options come first on the command line (init's commands follow). Only these words are taken, so a command line
 * without them reaches init unchanged. */
const char *block_parse_options(const char *cmdline, struct block_options *options)
{
    const char *s = cmdline;
    for (;;) {
        while (*s == ' ') s++;
        int *target = starts_with(s, "ata=") ? &options->ata_irq
                    : starts_with(s, "virtio=") ? &options->virtio_irq
                    : starts_with(s, "ndma=") ? &options->ndma_irq : 0;
        if (!target && starts_with(s, "servicevm=")) {
            s += 10;
            options->service_vm = word_is(s, "front") ? SERVICE_VM_FRONT : word_is(s, "back") ? SERVICE_VM_BACK : SERVICE_VM_NONE;
            while (*s && *s != ' ') s++;
            continue;
        }
        if (!target && word_is(s, "blkfront=forge")) {
            options->forge_grant = 1;
            s += 14;
            continue;
        }
        if (!target && word_is(s, "blkback=forge")) {
            options->forge_response = 1;
            s += 13;
            continue;
        }
        if (!target && starts_with(s, "virtioseg=")) {
            u32 bytes = 0;
            for (s += 10; *s >= '0' && *s <= '9'; s++) bytes = bytes * 10 + (u32)(*s - '0');
            options->virtio_segment_bytes = bytes;
            while (*s && *s != ' ') s++;
            continue;
        }
        if (!target) return s;
        while (*s != '=') s++;
        s++;
        *target = starts_with(s, "irq") && (s[3] == ' ' || s[3] == 0);
        while (*s && *s != ' ') s++;
    }
}

static const char *interface_name(u32 interface)
{
    return interface == BLK_INTERFACE_ATA ? "ATA PIO (emulated)"
         : interface == BLK_INTERFACE_VIRTIO ? "virtio-blk (paravirtual)"
         : interface == BLK_INTERFACE_SPLIT ? "blkfront (service VM)" : "NDMA (assigned)";
}

void block_init(const struct block_options *options)
{
    ata_probe(options->ata_irq);
    virtio_blk_probe(options->virtio_irq, options->virtio_segment_bytes);
    ndma_probe(options->ndma_irq);
    if (options->service_vm == SERVICE_VM_FRONT) blkfront_probe(options->forge_grant);
    if (!device_count) return;
    bounce = frames_take_contiguous(BLOCK_MAX_TRANSFER / PAGE_SIZE);
    if (!bounce) panic("no 1 MiB of contiguous memory for the block layer's bounce buffer");
    for (int i = 0; i < device_count; i++) {
        struct block_device *d = &devices[i];
        kprintf("NestorOS: block device %d: %s, %lu sectors (%lu KiB), %s%s%s, %s\n", i, d->name, d->sectors,
                d->sectors / 2, interface_name(d->interface), d->read_only ? ", read-only" : "",
                d->flags & BLK_FLAG_LBA48 ? ", LBA48" : "", d->flags & BLK_FLAG_INTERRUPTS ? "interrupts" : "polling");
    }
}

static int in_user_range(u64 address, u64 length)
{
    return address >= USER_BASE && address < USER_TOP && length <= USER_TOP - address;
}

i64 sys_blkinfo(u64 index, u64 info_address)
{
    if (index >= (u64)device_count) return -E_NODEV;
    if (!in_user_range(info_address, sizeof(struct blk_info))) return -E_FAULT;
    struct block_device *d = &devices[index];
    struct blk_info info;
    memset(&info, 0, sizeof(info));
    memcpy(info.name, d->name, sizeof(info.name));
    info.sectors = d->sectors;
    info.read_only = (u32)d->read_only;
    info.interface = d->interface;
    info.flags = d->flags;
    info.requests = d->requests;
    info.errors = d->errors;
    memcpy((void *)info_address, &info, sizeof(info));   /* may demand-fault the user page in: fine in the kernel */
    return 0;
}

struct block_device *block_device_at(u64 index)
{
    return index < (u64)device_count ? &devices[index] : 0;
}

i64 block_transfer(struct block_device *d, u64 op, u64 sector, u64 count, u64 buffer)
{
    d->requests++;
    i64 r = op == BLK_OP_FLUSH ? d->operations->flush(d)
          : op == BLK_OP_WRITE ? d->operations->write(d, sector, count, buffer) : d->operations->read(d, sector, count, buffer);
    if (r < 0) d->errors++;
    return r;
}

u64 block_bounce_buffer(void) { return bounce; }

i64 sys_blkio(u64 index, u64 op, u64 sector, u64 buffer, u64 bytes)
{
    if (index >= (u64)device_count) return -E_NODEV;
    struct block_device *d = &devices[index];
    i64 r;
    if (op == BLK_OP_FLUSH) {
        d->requests++;
        r = d->operations->flush(d);
        if (r < 0) d->errors++;
        return r;
    }
    if (op != BLK_OP_READ && op != BLK_OP_WRITE) return -E_INVAL;
    if (bytes == 0 || bytes % SECTOR_SIZE || bytes > BLOCK_MAX_TRANSFER) return -E_INVAL;
    u64 count = bytes / SECTOR_SIZE;
    if (sector >= d->sectors || count > d->sectors - sector) return -E_RANGE;
    if (!in_user_range(buffer, bytes)) return -E_FAULT;
    if (op == BLK_OP_WRITE && d->read_only) return -E_ROFS;
    d->requests++;
    if (op == BLK_OP_WRITE) {
        memcpy((void *)bounce, (const void *)buffer, bytes);
        r = d->operations->write(d, sector, count, bounce);
    } else {
        r = d->operations->read(d, sector, count, bounce);
        if (r == 0) memcpy((void *)buffer, (const void *)bounce, bytes);
    }
    if (r < 0) d->errors++;
    return r < 0 ? r : (i64)bytes;
}

void wait_for_interrupt_flag(volatile int *flag)
{
    /* STI's interrupt shadow covers the HLT (SDM Vol. 2B, STI), so an interrupt that became pending after the check
     * wakes the HLT rather than being taken before it and leaving the CPU asleep. */
    while (!*flag) __asm__ volatile("sti; hlt; cli" : : : "memory");
}
