/* Virtio over MMIO, version 2 (virtio 1.2, OASIS 2022, §4.2) and one split virtqueue (§2.7) per device. */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "block.h"

#define VIRTIO_MMIO_BASE 0xFEB00000UL
#define VIRTIO_MMIO_STRIDE 0x200UL
#define VIRTIO_MMIO_SLOTS 8
#define VIRTIO_MMIO_SLOTS_MICROVM 24
#define VIRTIO_GSI_BASE 16

/* §4.2.2 register layout */
#define VIRTIO_MAGIC          0x000   /* 0x74726976, "virt" */
#define VIRTIO_VERSION        0x004
#define VIRTIO_DEVICE_ID      0x008
#define VIRTIO_DEVICE_FEATURES 0x010
#define VIRTIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_DRIVER_FEATURES 0x020
#define VIRTIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_QUEUE_SEL      0x030
#define VIRTIO_QUEUE_NUM_MAX  0x034
#define VIRTIO_QUEUE_NUM      0x038
#define VIRTIO_QUEUE_READY    0x044
#define VIRTIO_QUEUE_NOTIFY   0x050
#define VIRTIO_INTERRUPT_STATUS 0x060
#define VIRTIO_INTERRUPT_ACK  0x064
#define VIRTIO_STATUS         0x070
#define VIRTIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_QUEUE_DEVICE_LOW 0x0A0
#define VIRTIO_QUEUE_DEVICE_HIGH 0x0A4
#define VIRTIO_CONFIG         0x100

/* §2.1 device status */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_FAILED      128

#define VIRTIO_F_VERSION_1 32

/* §2.7.5 descriptor flags */
#define VIRTQ_DESC_F_NEXT  1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc { u64 address; u32 length; u16 flags, next; };

/* One split virtqueue in one 4 KiB frame: descriptors at 0 (16 × size), the driver (available) ring at 2048, the
 * device (used) ring at 2560; with at most 128 entries each part fits its place and alignment (§2.7: 16, 2, 4). */
#define VIRTQ_MAX_SIZE 128
struct virtqueue {
    u64 frame;
    u16 size;
    u16 next_free;                   /* descriptors are handed out in order and all returned at a batch's end */
    u16 avail_index, used_seen;
    struct virtq_desc *desc;
    volatile u16 *avail;             /* flags, idx, ring[size] */
    volatile u16 *used;              /* flags, idx, then {u32 id, u32 len}[size] */
};

struct virtio_device {
    u64 base;
    u32 slot;
    u64 features;                    /* negotiated */
    int use_interrupts;
    volatile int interrupt_seen;
    struct virtqueue queue;
};

/* §3.1.1 up to FEATURES_OK: reset, ACKNOWLEDGE, DRIVER, the intersection of the device's features with `wanted`
 * (VIRTIO_F_VERSION_1 always), FEATURES_OK written and read back. Returns 0, or -1 (status FAILED set). */
int virtio_negotiate(struct virtio_device *device, u64 wanted);
/* Queue `index` of the device at `base` in a fresh frame laid out as above, enabled (§4.2.3.2), with
 * VIRTQ_AVAIL_F_NO_INTERRUPT when `no_interrupt` (a polling driver). Returns 0 or -1. */
int virtio_setup_queue_at(u64 base, u32 index, struct virtqueue *q, int no_interrupt);
/* Queue 0 set up and enabled; then DRIVER_OK. Returns 0 or -1. */
int virtio_setup_queue(struct virtio_device *device);
/* Starts a batch: every descriptor is free again. */
void virtq_begin(struct virtqueue *q);
/* A descriptor chained to the previous one of the same chain when `chain_to` is not 0xFFFF; returns its index or
 * 0xFFFF when the queue is full. */
u16 virtq_add(struct virtqueue *q, u16 chain_to, u64 address, u32 length, int device_writes);
/* Makes chain `head` available to the device (no notify yet). */
void virtq_publish(struct virtqueue *q, u16 head);
/* One notify for everything published, then waits until the device has used `chains` of them. 0 or -E_IO. */
int virtq_kick_and_wait(struct virtio_device *device, u32 chains);
#endif
