/* The front-end of the split block driver (Xen's blkfront), kernel option servicevm=front: the user VM has no disk of
 * its own, only xvda, whose requests travel over the ring (blkring.h) to the service VM's back-end. A transfer from
 * the block layer's bounce buffer is cut into requests of up to 64 sectors (8 frames), at most 32 of them (1 MiB, the
 * block layer's largest transfer) in one batch: the data frames are granted, the slots written, the producer index
 * published, one EVENT_NOTIFY (one exit), and the kernel waits for the completion interrupt on EVENT_VECTOR. The
 * back-end is not trusted: a response index past what was sent, an id it was not given or a status it does not define
 * is an error (counted, and the device then fails every request), never a crash. */
#include "blkring.h"

/* Grant references: 0 the ring, then 8 per slot for its data frames. */
#define DATA_REFERENCE(slot, frame) (1 + (slot) * BLKRING_FRAMES_PER_REQUEST + (frame))
#define GRANT_ENTRIES DATA_REFERENCE(BLKRING_SLOTS, 0)
#define FORGED_REFERENCE 400          /* past the 257 entries of the table: never granted */

struct blkfront {
    volatile struct blkring *ring;
    volatile struct grant_entry *grants;
    u32 request_producer, response_consumer;
    u64 next_id;
    u64 sent_ids[BLKRING_SLOTS];
    int broken;                       /* the back-end broke the protocol: every later request fails */
    u64 protocol_errors;
};

static struct blkfront front;

static void grant(u32 reference, u64 frame_address, int read_only)
{
    volatile struct grant_entry *e = &front.grants[reference];
    e->frame = (u32)(frame_address >> 12);
    e->domain = BLKRING_DOMAIN_SERVICE;
    compiler_barrier();              /* the frame before the permission (Xen's gnttab_grant_foreign_access order) */
    e->flags = GRANT_PERMIT_ACCESS | (read_only ? GRANT_READ_ONLY : 0);
}

static void revoke(u32 reference) { front.grants[reference].flags = 0; }

static void protocol_error(const char *what, u64 value)
{
    front.protocol_errors++;
    if (!front.broken) kprintf("blkfront: the back-end broke the ring protocol (%s %lu); xvda fails from now on\n", what, value);
    front.broken = 1;
}

/* Publishes the requests written since the last call, notifies, and waits until the back-end has answered them all;
 * 0, or -E_IO if any failed. */
static i64 push_and_wait(void)
{
    u32 pending = front.request_producer - front.response_consumer;
    compiler_barrier();              /* the slots before the index that publishes them (x86 keeps stores in order) */
    front.ring->header.request_producer = front.request_producer;
    event_seen = 0;
    event_notify();
    i64 result = 0;
    while (front.response_consumer != front.request_producer) {
        u32 produced = front.ring->header.response_producer;
        u32 answered = produced - front.response_consumer;
        if (answered > pending) {
            protocol_error("response producer", produced);
            return -E_IO;
        }
        if (answered == 0) {
            wait_for_interrupt_flag(&event_seen);
            event_seen = 0;
            continue;
        }
        compiler_barrier();
        for (; answered; answered--, pending--) {
            u32 slot = front.response_consumer % BLKRING_SLOTS;
            volatile struct blkring_slot *s = &front.ring->slots[slot];
            for (u32 j = 0; j < BLKRING_FRAMES_PER_REQUEST; j++) revoke(DATA_REFERENCE(slot, j));
            u32 status = s->status;
            if (s->id != front.sent_ids[slot]) {
                protocol_error("response id", s->id);
                result = -E_IO;
            } else if (status > BLKRING_STATUS_GRANT_REFUSED) {
                protocol_error("status", status);
                result = -E_IO;
            } else if (status != BLKRING_STATUS_OK) {
                result = -E_IO;
            }
            front.response_consumer++;
        }
    }
    return result;
}

static void write_request(u32 op, u64 sector, u64 count, u64 buffer)
{
    u32 slot = front.request_producer % BLKRING_SLOTS;
    volatile struct blkring_slot *s = &front.ring->slots[slot];
    u64 frames = (count * SECTOR_SIZE + PAGE_SIZE - 1) / PAGE_SIZE;
    for (u32 j = 0; j < BLKRING_FRAMES_PER_REQUEST; j++) {
        if (j < frames) {
            /* The service VM only reads the frames of a write and only writes those of a read. */
            grant(DATA_REFERENCE(slot, j), buffer + j * PAGE_SIZE, op == BLKRING_OP_WRITE);
            s->data_references[j] = DATA_REFERENCE(slot, j);
        } else {
            s->data_references[j] = 0;
        }
    }
    s->id = front.sent_ids[slot] = ++front.next_id;
    s->op = op;
    s->status = BLKRING_STATUS_PENDING;
    s->sector = sector;
    s->sectors = (u32)count;
    s->reserved = 0;
    front.request_producer++;
}

static i64 transfer(u32 op, u64 sector, u64 count, u64 buffer)
{
    if (front.broken) return -E_IO;
    i64 result = 0;
    while (count) {
        /* One batch: as many requests as the ring holds. */
        for (u32 n = 0; n < BLKRING_SLOTS && count; n++) {
            u64 sectors = count < BLKRING_SECTORS_PER_REQUEST ? count : BLKRING_SECTORS_PER_REQUEST;
            write_request(op, sector, sectors, buffer);
            sector += sectors;
            buffer += sectors * SECTOR_SIZE;
            count -= sectors;
        }
        if (push_and_wait() < 0) result = -E_IO;
        if (front.broken) return -E_IO;
    }
    return result;
}

static i64 blkfront_read(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    (void)device;
    return transfer(BLKRING_OP_READ, sector, count, buffer);
}

static i64 blkfront_write(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    (void)device;
    return transfer(BLKRING_OP_WRITE, sector, count, buffer);
}

static i64 blkfront_flush(struct block_device *device)
{
    (void)device;
    if (front.broken) return -E_IO;
    write_request(BLKRING_OP_FLUSH, 0, 0, 0);
    return push_and_wait();
}

static const struct block_operations blkfront_operations = { blkfront_read, blkfront_write, blkfront_flush };

/* One read whose data reference was never granted: the VMM refuses the back-end's GRANT_COPY, and the back-end answers
 * BLKRING_STATUS_GRANT_REFUSED and goes on serving. */
static void send_forged_request(u64 scratch)
{
    write_request(BLKRING_OP_READ, 0, 1, scratch);
    u32 slot = (front.request_producer - 1) % BLKRING_SLOTS;
    revoke(DATA_REFERENCE(slot, 0));
    front.ring->slots[slot].data_references[0] = FORGED_REFERENCE;
    i64 r = push_and_wait();
    kprintf("blkfront: a request with the forged grant reference %u got status %u (%s)\n", FORGED_REFERENCE,
            front.ring->slots[slot].status, r < 0 ? "refused" : "accepted");
}

void blkfront_probe(int forge_once)
{
    if (!split_driver_offered()) {
        kprintf("blkfront: servicevm=front, but the VMM offers no split driver (CPUID 0x40000001 EAX bit 1): no xvda\n");
        return;
    }
    u64 ring = frame_alloc(), table = frame_alloc();
    if (!ring || !table) {
        kprintf("blkfront: no memory for the ring: no xvda\n");
        return;
    }
    front.ring = (volatile struct blkring *)ring;
    front.grants = (volatile struct grant_entry *)table;
    if (hypercall(SPLIT_HC_GRANT_TABLE_SETUP, table, GRANT_ENTRIES) == SPLIT_REFUSED) {
        kprintf("blkfront: the VMM refused the grant table: no xvda\n");
        return;
    }
    grant(BLKRING_REFERENCE, ring, 0);
    event_channel_init();
    /* Connect: the first notify makes the back-end fill in the disk's size (blkring.h). */
    event_seen = 0;
    event_notify();
    while (front.ring->header.connected != BLKRING_CONNECTED) {
        wait_for_interrupt_flag(&event_seen);
        event_seen = 0;
    }
    compiler_barrier();
    u64 sectors = front.ring->header.sectors;
    int read_only = front.ring->header.read_only != 0;
    /* The back-end answers every batch before the next, so its indexes start where the front-end's are. */
    front.request_producer = front.response_consumer = front.ring->header.request_producer;
    if (forge_once) send_forged_request(frame_alloc());
    block_register("xvda", sectors, read_only, BLK_INTERFACE_SPLIT, BLK_FLAG_INTERRUPTS | BLK_FLAG_FLUSH,
                   &blkfront_operations, &front);
}
