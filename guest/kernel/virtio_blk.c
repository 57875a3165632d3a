/* virtio-blk (virtio 1.2 §5.2) over virtio-mmio: each request is a chain of a 16-byte header (type, sector), the
 * data and a one-byte status the device writes (§5.2.6); a transfer is put on the ring as one batch of such chains
 * and announced with one notify, which under a VMM is the single exit the paravirtual way costs per batch. */
#include "virtio.h"

#define VIRTIO_BLK_DEVICE_ID 2
#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_S_OK 0

/* Requests per batch: each needs 3 descriptors at least (header, data, status). */
#define VIRTIO_BLK_MAX_REQUESTS 64

struct virtio_blk_header { u32 type, reserved; u64 sector; };

struct virtio_blk {
    struct virtio_device device;
    u32 segment_bytes;               /* the most one data descriptor may carry (size_max) */
    u32 segments_per_request;        /* data descriptors in one request (seg_max) */
    /* Headers and status bytes of one batch, in one frame of their own (guest-physical = kernel address). */
    struct virtio_blk_header *headers;
    volatile u8 *statuses;
};

static struct virtio_blk disks[VIRTIO_MMIO_SLOTS];
static int disk_count;

void virtio_interrupt(u32 slot)
{
    for (int i = 0; i < disk_count; i++) {
        struct virtio_device *d = &disks[i].device;
        if (d->slot != slot) continue;
        /* §4.2.3.4: read InterruptStatus, acknowledge what was seen; the level line drops when it is all acked. */
        u32 status = mmio_read32(d->base + VIRTIO_INTERRUPT_STATUS);
        mmio_write32(d->base + VIRTIO_INTERRUPT_ACK, status);
        d->interrupt_seen = 1;
    }
    local_apic_eoi();
}

/* Completes the published batch: one notify, then waits for every chain and checks each status. */
static i64 finish_batch(struct virtio_blk *b, u32 requests)
{
    if (virtq_kick_and_wait(&b->device, requests) < 0) return -E_IO;
    for (u32 r = 0; r < requests; r++) if (b->statuses[r] != VIRTIO_BLK_S_OK) return -E_IO;
    return 0;
}

/* One transfer (a flush when count is 0) as a batch of requests, each of at most segments_per_request data
 * descriptors of at most segment_bytes (the device's size_max and seg_max, §5.2.4). A transfer the queue cannot
 * hold at once goes out in several batches. */
static i64 transfer(struct block_device *device, u32 type, u64 sector, u64 count, u64 buffer)
{
    struct virtio_blk *b = device->driver;
    struct virtqueue *q = &b->device.queue;
    virtq_begin(q);
    u32 requests = 0;
    u64 bytes = count * SECTOR_SIZE;
    do {
        u64 segments = (bytes + b->segment_bytes - 1) / b->segment_bytes;
        if (segments > b->segments_per_request) segments = b->segments_per_request;
        if (requests == VIRTIO_BLK_MAX_REQUESTS || (u64)(q->size - q->next_free) < segments + 2) {
            i64 r = finish_batch(b, requests);
            if (r < 0) return r;
            virtq_begin(q);
            requests = 0;
        }
        struct virtio_blk_header *h = &b->headers[requests];
        h->type = type;
        h->reserved = 0;
        h->sector = sector;
        u16 head = virtq_add(q, 0xFFFF, (u64)h, sizeof(*h), 0);
        u16 last = head;
        u64 in_request = 0;
        for (u64 s = 0; s < segments; s++) {
            u64 n = bytes < b->segment_bytes ? bytes : b->segment_bytes;
            last = virtq_add(q, last, buffer, (u32)n, type == VIRTIO_BLK_T_IN);
            buffer += n;
            bytes -= n;
            in_request += n;
        }
        b->statuses[requests] = 0xFF;
        virtq_add(q, last, (u64)&b->statuses[requests], 1, 1);
        virtq_publish(q, head);
        requests++;
        sector += in_request / SECTOR_SIZE;
    } while (bytes);
    return finish_batch(b, requests);
}

static i64 virtio_blk_read(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    return transfer(device, VIRTIO_BLK_T_IN, sector, count, buffer);
}

static i64 virtio_blk_write(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    return transfer(device, VIRTIO_BLK_T_OUT, sector, count, buffer);
}

static i64 virtio_blk_flush(struct block_device *device)
{
    struct virtio_blk *b = device->driver;
    /* Without VIRTIO_BLK_F_FLUSH the device has no volatile cache to empty: writes are durable when used. */
    if (!(b->device.features & (1UL << VIRTIO_BLK_F_FLUSH))) return 0;
    return transfer(device, VIRTIO_BLK_T_FLUSH, 0, 0, 0);
}

static const struct block_operations virtio_blk_operations = { virtio_blk_read, virtio_blk_write, virtio_blk_flush };

void virtio_blk_probe(int use_interrupts, u32 segment_limit)
{
    /* Nestor's platform has 8 slots (docs/devices.md); QEMU's microvm, the reference machine for virtio-mmio, has 24
     * in the same layout and fills them from the last (hw/i386/microvm.c), so off Nestor all 24 are probed. */
    u32 slots = running_on_nestor ? VIRTIO_MMIO_SLOTS : VIRTIO_MMIO_SLOTS_MICROVM;
    for (u32 slot = 0; slot < slots; slot++) {
        u64 base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_STRIDE;
        /* An empty slot reads all ones (Nestor) or 0 (QEMU); a legacy (version 1) transport is not ours. */
        if (mmio_read32(base + VIRTIO_MAGIC) != 0x74726976) continue;
        if (mmio_read32(base + VIRTIO_VERSION) != 2) continue;
        if (mmio_read32(base + VIRTIO_DEVICE_ID) != VIRTIO_BLK_DEVICE_ID) continue;
        if (disk_count == VIRTIO_MMIO_SLOTS) break;
        struct virtio_blk *b = &disks[disk_count];
        memset(b, 0, sizeof(*b));
        b->device.base = base;
        b->device.slot = slot;
        b->device.use_interrupts = use_interrupts;
        u64 wanted = (1UL << VIRTIO_BLK_F_FLUSH) | (1UL << VIRTIO_BLK_F_RO) | (1UL << VIRTIO_BLK_F_SIZE_MAX) |
                     (1UL << VIRTIO_BLK_F_SEG_MAX);
        if (virtio_negotiate(&b->device, wanted) < 0) {
            kprintf("NestorOS: virtio-mmio slot %u: the device refused the features (VERSION_1 needed)\n", slot);
            continue;
        }
        u64 sectors = (u64)mmio_read32(base + VIRTIO_CONFIG) | (u64)mmio_read32(base + VIRTIO_CONFIG + 4) << 32;
        b->segment_bytes = BLOCK_MAX_TRANSFER;
        if (b->device.features & (1UL << VIRTIO_BLK_F_SIZE_MAX)) {
            u32 size_max = mmio_read32(base + VIRTIO_CONFIG + 8);
            if (size_max >= SECTOR_SIZE) b->segment_bytes = size_max & ~(u32)(SECTOR_SIZE - 1);
        }
        if (segment_limit >= SECTOR_SIZE && segment_limit < b->segment_bytes) b->segment_bytes = segment_limit & ~(u32)(SECTOR_SIZE - 1);
        b->segments_per_request = VIRTQ_MAX_SIZE - 2;
        if (b->device.features & (1UL << VIRTIO_BLK_F_SEG_MAX)) {
            u32 seg_max = mmio_read32(base + VIRTIO_CONFIG + 12);
            if (seg_max >= 1 && seg_max < b->segments_per_request) b->segments_per_request = seg_max;
        }
        u64 frame = frame_alloc();
        if (!frame || virtio_setup_queue(&b->device) < 0) {
            kprintf("NestorOS: virtio-mmio slot %u: queue 0 could not be set up\n", slot);
            mmio_write32(base + VIRTIO_STATUS, VIRTIO_STATUS_FAILED);
            continue;
        }
        /* A request takes at most segments_per_request + 2 descriptors; keep the batch within the queue. */
        if (b->segments_per_request > (u32)b->device.queue.size - 2) b->segments_per_request = b->device.queue.size - 2;
        b->headers = (struct virtio_blk_header *)frame;
        b->statuses = (volatile u8 *)(frame + VIRTIO_BLK_MAX_REQUESTS * sizeof(struct virtio_blk_header));
        if (use_interrupts) ioapic_route(VIRTIO_GSI_BASE + slot, (u8)(VIRTIO_VECTOR_BASE + slot), 1);
        char name[4] = { 'v', 'd', (char)('a' + disk_count), 0 };
        disk_count++;
        block_register(name, sectors, (b->device.features & (1UL << VIRTIO_BLK_F_RO)) != 0, BLK_INTERFACE_VIRTIO,
                       (use_interrupts ? BLK_FLAG_INTERRUPTS : 0) |
                       (b->device.features & (1UL << VIRTIO_BLK_F_FLUSH) ? BLK_FLAG_FLUSH : 0),
                       &virtio_blk_operations, b);
    }
}
