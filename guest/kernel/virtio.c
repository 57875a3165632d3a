/* Virtio-mmio transport (virtio 1.2 §4.2, version 2 only) and the driver side of one split virtqueue (§2.7). */
#include "virtio.h"

static u32 rd(struct virtio_device *d, u32 offset) { return mmio_read32(d->base + offset); }
static void wr(struct virtio_device *d, u32 offset, u32 value) { mmio_write32(d->base + offset, value); }

int virtio_negotiate(struct virtio_device *d, u64 wanted)
{
    wr(d, VIRTIO_STATUS, 0);                                   /* reset (§4.2.3.1) */
    wr(d, VIRTIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    wr(d, VIRTIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    wr(d, VIRTIO_DEVICE_FEATURES_SEL, 0);
    u64 offered = rd(d, VIRTIO_DEVICE_FEATURES);
    wr(d, VIRTIO_DEVICE_FEATURES_SEL, 1);
    offered |= (u64)rd(d, VIRTIO_DEVICE_FEATURES) << 32;
    wanted |= 1UL << VIRTIO_F_VERSION_1;
    u64 accepted = offered & wanted;
    /* Without VERSION_1 the device is a legacy one (§4.2.4), whose layout this driver does not speak. */
    if (!(accepted & (1UL << VIRTIO_F_VERSION_1))) {
        wr(d, VIRTIO_STATUS, VIRTIO_STATUS_FAILED);
        return -1;
    }
    wr(d, VIRTIO_DRIVER_FEATURES_SEL, 0);
    wr(d, VIRTIO_DRIVER_FEATURES, (u32)accepted);
    wr(d, VIRTIO_DRIVER_FEATURES_SEL, 1);
    wr(d, VIRTIO_DRIVER_FEATURES, (u32)(accepted >> 32));
    wr(d, VIRTIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    /* §3.1.1 step 6: the device may refuse the subset; it then leaves FEATURES_OK clear. */
    if (!(rd(d, VIRTIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        wr(d, VIRTIO_STATUS, VIRTIO_STATUS_FAILED);
        return -1;
    }
    d->features = accepted;
    return 0;
}

int virtio_setup_queue_at(u64 base, u32 index, struct virtqueue *q, int no_interrupt)
{
    struct virtio_device at = { .base = base };
    struct virtio_device *d = &at;
    wr(d, VIRTIO_QUEUE_SEL, index);
    if (rd(d, VIRTIO_QUEUE_READY)) return -1;                  /* §4.2.3.2: must not be in use already */
    u32 max = rd(d, VIRTIO_QUEUE_NUM_MAX);
    if (max == 0) return -1;
    u32 size = VIRTQ_MAX_SIZE;
    while (size > max) size >>= 1;                             /* split queue sizes are powers of two */
    u64 frame = frame_alloc();
    if (!frame) return -1;
    q->frame = frame;
    q->size = (u16)size;
    q->desc = (struct virtq_desc *)frame;
    q->avail = (volatile u16 *)(frame + 2048);
    q->used = (volatile u16 *)(frame + 2560);
    q->avail_index = q->used_seen = 0;
    /* No interrupt wanted while polling: VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7), a hint the device may ignore. */
    q->avail[0] = no_interrupt ? 1 : 0;
    wr(d, VIRTIO_QUEUE_NUM, size);
    wr(d, VIRTIO_QUEUE_DESC_LOW, (u32)frame);
    wr(d, VIRTIO_QUEUE_DESC_HIGH, (u32)(frame >> 32));
    wr(d, VIRTIO_QUEUE_DRIVER_LOW, (u32)(frame + 2048));
    wr(d, VIRTIO_QUEUE_DRIVER_HIGH, (u32)((frame + 2048) >> 32));
    wr(d, VIRTIO_QUEUE_DEVICE_LOW, (u32)(frame + 2560));
    wr(d, VIRTIO_QUEUE_DEVICE_HIGH, (u32)((frame + 2560) >> 32));
    wr(d, VIRTIO_QUEUE_READY, 1);
    return 0;
}

int virtio_setup_queue(struct virtio_device *d)
{
    if (virtio_setup_queue_at(d->base, 0, &d->queue, !d->use_interrupts) < 0) return -1;
    wr(d, VIRTIO_STATUS, rd(d, VIRTIO_STATUS) | VIRTIO_STATUS_DRIVER_OK);
    return 0;
}

void virtq_begin(struct virtqueue *q) { q->next_free = 0; }

u16 virtq_add(struct virtqueue *q, u16 chain_to, u64 address, u32 length, int device_writes)
{
    if (q->next_free == q->size) return 0xFFFF;
    u16 i = q->next_free++;
    q->desc[i].address = address;
    q->desc[i].length = length;
    q->desc[i].flags = device_writes ? VIRTQ_DESC_F_WRITE : 0;
    q->desc[i].next = 0;
    if (chain_to != 0xFFFF) {
        q->desc[chain_to].flags |= VIRTQ_DESC_F_NEXT;
        q->desc[chain_to].next = i;
    }
    return i;
}

void virtq_publish(struct virtqueue *q, u16 head)
{
    q->avail[2 + (q->avail_index % q->size)] = head;
    q->avail_index++;
}

void virtio_interrupt(u32 slot);

int virtq_kick_and_wait(struct virtio_device *d, u32 chains)
{
    struct virtqueue *q = &d->queue;
    /* The ring entries before the index (§2.7.13.2), the index before the notify (§2.7.13.3). x86 keeps stores in
     * order (SDM Vol. 3A §8.2.2), so a compiler barrier is all each step needs. */
    compiler_barrier();
    d->interrupt_seen = 0;
    q->avail[1] = q->avail_index;
    compiler_barrier();
    wr(d, VIRTIO_QUEUE_NOTIFY, 0);
    u16 target = (u16)(q->used_seen + chains);
    for (u64 spins = 0; q->used[1] != target; spins++) {
        if (d->use_interrupts) {
            wait_for_interrupt_flag(&d->interrupt_seen);
            d->interrupt_seen = 0;
        } else if (spins > 100000000UL) {
            return -E_IO;
        }
        compiler_barrier();
    }
    q->used_seen = target;
    return 0;
}
