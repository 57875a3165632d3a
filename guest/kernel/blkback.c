/* The back-end of the split block driver (Xen's blkback), kernel option servicevm=back: NestorOS as the service VM.
 * It owns the first disk its ordinary drivers found (ATA PIO or the assigned controller), announces itself ready by
 * halting with its event channel's interrupt enabled (ServiceVmHost runs the user VM then), and serves the user VM's
 * ring (blkring.h) for good: at each event it copies the ring's header and new slots in with GRANT_COPY, moves each
 * request's data between the granted frames and its bounce buffer with GRANT_COPY, does the I/O with its real driver,
 * copies the answered slots and the response index out, and notifies. The front-end is not trusted: an index past
 * the ring, an unknown op, a range past the disk, a size past 8 frames or a reference the VMM refuses is answered
 * with an error status (or, for a bad index, ignored) and counted; the back-end keeps serving.
 *
 * It has no APIC timer: it runs no processes to preempt, and without one its wait (STI; HLT) is a halt the host sees,
 * which is how ServiceVmHost knows the back-end is idle. */
#include "blkring.h"

#define LOCAL_APIC_SPURIOUS 0xFEE000F0UL

struct blkback {
    struct block_device *disk;
    u64 buffer;                      /* 32 KiB of the block layer's bounce buffer: one request's data */
    u32 consumed;                    /* requests taken from the ring (mod 2^32) */
    u64 requests, refused_grants, bad_requests, bad_indexes, io_errors;
    int forge_response;              /* blkback=forge: answer the first data request with an id never sent */
    struct blkring ring;             /* the local copy of the user VM's ring page */
};

static struct blkback back;

/* A request's data, frame by frame, between the granted frames and the buffer; 0, or -1 at the first refusal. */
static int copy_data(volatile struct blkring_slot *s, u64 bytes, int to_granted)
{
    for (u64 j = 0; j * PAGE_SIZE < bytes; j++) {
        u64 length = bytes - j * PAGE_SIZE < PAGE_SIZE ? bytes - j * PAGE_SIZE : PAGE_SIZE;
        if (grant_copy(s->data_references[j], to_granted, back.buffer + j * PAGE_SIZE, 0, (u32)length) < 0) {
            back.refused_grants++;
            kprintf("blkback: request %lu: the VMM refused grant reference %u\n", s->id, s->data_references[j]);
            return -1;
        }
    }
    return 0;
}

static u32 serve_request(volatile struct blkring_slot *s)
{
    back.requests++;
    struct block_device *d = back.disk;
    u32 op = s->op;
    if (op == BLKRING_OP_FLUSH) return block_transfer(d, BLK_OP_FLUSH, 0, 0, 0) < 0 ? BLKRING_STATUS_IO_ERROR : BLKRING_STATUS_OK;
    u64 sector = s->sector, count = s->sectors;
    if ((op != BLKRING_OP_READ && op != BLKRING_OP_WRITE) || count == 0 || count > BLKRING_SECTORS_PER_REQUEST
        || sector >= d->sectors || count > d->sectors - sector || (op == BLKRING_OP_WRITE && d->read_only)) {
        back.bad_requests++;
        kprintf("blkback: request %lu refused: op %u, %lu sectors at %lu (the disk has %lu%s)\n", s->id, op, count, sector,
                d->sectors, d->read_only ? ", read-only" : "");
        return BLKRING_STATUS_BAD_REQUEST;
    }
    u64 bytes = count * SECTOR_SIZE;
    if (op == BLKRING_OP_WRITE && copy_data(s, bytes, 0) < 0) return BLKRING_STATUS_GRANT_REFUSED;
    if (block_transfer(d, op == BLKRING_OP_WRITE ? BLK_OP_WRITE : BLK_OP_READ, sector, count, back.buffer) < 0) {
        back.io_errors++;
        return BLKRING_STATUS_IO_ERROR;
    }
    if (op == BLKRING_OP_READ && copy_data(s, bytes, 1) < 0) return BLKRING_STATUS_GRANT_REFUSED;
    return BLKRING_STATUS_OK;
}

/* Slots [first, first + count) of the ring (mod 32), in at most two runs, between the local copy and the ring page. */
static int copy_slots(u32 first, u32 count, int to_granted)
{
    while (count) {
        u32 slot = first % BLKRING_SLOTS, run = BLKRING_SLOTS - slot < count ? BLKRING_SLOTS - slot : count;
        u32 offset = BLKRING_SLOTS_OFFSET + slot * (u32)sizeof(struct blkring_slot);
        if (grant_copy(BLKRING_REFERENCE, to_granted, (u64)&back.ring.slots[slot], offset, run * (u32)sizeof(struct blkring_slot)) < 0)
            return -1;
        first += run;
        count -= run;
    }
    return 0;
}

static void serve_ring(void)
{
    struct blkring_header *h = &back.ring.header;
    if (grant_copy(BLKRING_REFERENCE, 0, (u64)h, 0, sizeof(*h)) < 0) {
        back.refused_grants++;
        kprintf("blkback: the VMM refused the ring's grant reference %u: nothing to serve\n", BLKRING_REFERENCE);
        return;
    }
    if (h->connected != BLKRING_CONNECTED) {
        /* The front-end's first notify: tell it the disk (blkring.h), and start consuming where it stands. */
        h->connected = BLKRING_CONNECTED;
        h->read_only = (u32)back.disk->read_only;
        h->sectors = back.disk->sectors;
        back.consumed = h->request_producer;
        grant_copy(BLKRING_REFERENCE, 1, (u64)&h->connected, 16, 16);
        kprintf("blkback: connected to domain 1: %s, %lu sectors, ring at its grant reference %u\n", back.disk->name,
                back.disk->sectors, BLKRING_REFERENCE);
        return;
    }
    u32 producer = h->request_producer, count = producer - back.consumed;
    if (count > BLKRING_SLOTS) {
        /* More requests than the ring holds: the index is forged. Nothing of it can be trusted; skip to it. */
        back.bad_indexes++;
        kprintf("blkback: request producer %u is %u ahead of the %u served, and the ring holds %u: ignored\n", producer, count,
                back.consumed, BLKRING_SLOTS);
        back.consumed = producer;
        return;
    }
    if (!count || copy_slots(back.consumed, count, 0) < 0) return;
    for (u32 i = 0; i < count; i++) {
        volatile struct blkring_slot *s = &back.ring.slots[(back.consumed + i) % BLKRING_SLOTS];
        s->status = serve_request(s);
        if (back.forge_response && s->op != BLKRING_OP_FLUSH) {
            kprintf("blkback: answering request %lu with the forged id %lu (blkback=forge)\n", s->id, s->id + 1000);
            s->id += 1000;
            back.forge_response = 0;
        }
    }
    copy_slots(back.consumed, count, 1);
    back.consumed = producer;
    h->response_producer = producer;
    /* The responses before the index that publishes them: the copies are made in this order. */
    grant_copy(BLKRING_REFERENCE, 1, (u64)&h->response_producer, 4, 4);
}

void blkback_serve(int forge_once)
{
    back.forge_response = forge_once;
    if (!split_driver_offered()) {
        kprintf("blkback: servicevm=back, but the VMM offers no split driver (CPUID 0x40000001 EAX bit 1)\n");
        machine_exit(PANIC_STATUS);
    }
    back.disk = block_device_at(0);
    if (!back.disk) {
        kprintf("blkback: servicevm=back, but this VM has no disk to serve\n");
        machine_exit(PANIC_STATUS);
    }
    back.buffer = block_bounce_buffer();
    /* The service VM grants nothing, but as every domain it has a table (Xen's dom0 too): one entry, empty. */
    u64 table = frame_alloc();
    if (!table || hypercall(SPLIT_HC_GRANT_TABLE_SETUP, table, 1) == SPLIT_REFUSED) panic("blkback: no grant table");
    mmio_write32(LOCAL_APIC_SPURIOUS, 0x1FF);   /* the APIC software-enabled (SDM Vol. 3A §10.9): it takes the event */
    event_channel_init();
    kprintf("blkback: serving %s (%lu sectors%s) to the user VM\n", back.disk->name, back.disk->sectors,
            back.disk->read_only ? ", read-only" : "");
    for (;;) {
        event_seen = 0;
        wait_for_interrupt_flag(&event_seen);   /* the first wait is the ready halt */
        hypercall(SPLIT_HC_EVENT_TAKE, 0, 0);   /* the pending bit the interrupt stood for */
        serve_ring();
        event_notify();
    }
}
