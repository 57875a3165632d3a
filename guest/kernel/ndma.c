/* Driver for the assigned disk controller ("NDMA", docs/devices.md): a ring of 32-byte requests in guest memory,
 * a SUBMIT doorbell and a COMPLETED counter. Given to the VM whole, its registers are the device's own and its DMA
 * goes to guest-physical addresses through the IOMMU, so this driver's accesses cost no exits: the dedicated way.
 * A request the IOMMU blocks completes with status 2 (DMA fault), reported as -E_IO like any device error. */
#include "block.h"

#define NDMA_BASE 0xFEA00000UL
#define NDMA_STRIDE 0x1000UL
#define NDMA_CONTROLLERS 2
#define NDMA_GSI_BASE 10
#define NDMA_ID_VALUE 0x414D444E     /* "NDMA" */

#define NDMA_ID 0x00
#define NDMA_VERSION 0x04
#define NDMA_CAPACITY 0x08
#define NDMA_RING_BASE 0x10
#define NDMA_RING_SIZE 0x18
#define NDMA_CONTROL 0x1C
#define NDMA_SUBMIT 0x20
#define NDMA_COMPLETED 0x24
#define NDMA_INTERRUPT_STATUS 0x28
#define NDMA_READ_ONLY 0x34

#define CONTROL_ENABLE 1u
#define CONTROL_INTERRUPT 2u
#define NDMA_OP_READ 0
#define NDMA_OP_WRITE 1
#define NDMA_OP_FLUSH 2
#define NDMA_STATUS_DONE 0
#define NDMA_STATUS_DMA_FAULT 2
#define NDMA_RING_ENTRIES 64          /* 64 × 32 bytes: half the ring's 4 KiB frame */

struct ndma_request { u8 op, status; u16 reserved0; u32 length; u64 sector, buffer, reserved1; };

struct ndma {
    u64 base;
    u32 index;
    u32 submitted;                   /* requests written so far (mod 2^32), as SUBMIT counts them */
    int use_interrupts;
    volatile int interrupt_seen;
    volatile struct ndma_request *ring;
    u64 dma_faults;
};

static struct ndma controllers[NDMA_CONTROLLERS];
static int controller_count;

void ndma_interrupt(u32 index)
{
    for (int i = 0; i < controller_count; i++) {
        struct ndma *c = &controllers[i];
        if (c->index != index) continue;
        /* RW1C: clearing the bits seen drops the level line before the EOI lets it be sampled again. */
        mmio_write32(c->base + NDMA_INTERRUPT_STATUS, mmio_read32(c->base + NDMA_INTERRUPT_STATUS));
        c->interrupt_seen = 1;
    }
    local_apic_eoi();
}

/* Writes one request into the ring, rings the doorbell, and waits for COMPLETED to reach it. */
static i64 submit(struct ndma *c, u8 op, u64 sector, u64 bytes, u64 buffer)
{
    volatile struct ndma_request *r = &c->ring[c->submitted % NDMA_RING_ENTRIES];
    r->op = op;
    r->status = 0xFF;
    r->reserved0 = 0;
    r->length = (u32)bytes;
    r->sector = sector;
    r->buffer = buffer;
    r->reserved1 = 0;
    c->submitted++;
    c->interrupt_seen = 0;
    compiler_barrier();              /* the entry before the doorbell: x86 keeps the stores in order */
    mmio_write32(c->base + NDMA_SUBMIT, c->submitted);
    for (u64 spins = 0; mmio_read32(c->base + NDMA_COMPLETED) != c->submitted; spins++) {
        if (c->use_interrupts) {
            wait_for_interrupt_flag(&c->interrupt_seen);
            c->interrupt_seen = 0;
        } else if (spins > 100000000UL) {
            return -E_IO;
        }
    }
    compiler_barrier();
    if (r->status == NDMA_STATUS_DMA_FAULT) c->dma_faults++;
    return r->status == NDMA_STATUS_DONE ? 0 : -E_IO;
}

static i64 ndma_read(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    return submit(device->driver, NDMA_OP_READ, sector, count * SECTOR_SIZE, buffer);
}

static i64 ndma_write(struct block_device *device, u64 sector, u64 count, u64 buffer)
{
    return submit(device->driver, NDMA_OP_WRITE, sector, count * SECTOR_SIZE, buffer);
}

static i64 ndma_flush(struct block_device *device)
{
    return submit(device->driver, NDMA_OP_FLUSH, 0, 0, 0);
}

static const struct block_operations ndma_operations = { ndma_read, ndma_write, ndma_flush };

void ndma_probe(int use_interrupts)
{
    for (u32 index = 0; index < NDMA_CONTROLLERS; index++) {
        u64 base = NDMA_BASE + index * NDMA_STRIDE;
        if (mmio_read32(base + NDMA_ID) != NDMA_ID_VALUE) continue;
        if (mmio_read32(base + NDMA_VERSION) != 1) continue;
        u64 ring = frame_alloc();
        if (!ring) continue;
        struct ndma *c = &controllers[controller_count];
        memset(c, 0, sizeof(*c));
        c->base = base;
        c->index = index;
        c->use_interrupts = use_interrupts;
        c->ring = (volatile struct ndma_request *)ring;
        u64 sectors = (u64)mmio_read32(base + NDMA_CAPACITY) | (u64)mmio_read32(base + NDMA_CAPACITY + 4) << 32;
        mmio_write32(base + NDMA_CONTROL, 0);
        mmio_write32(base + NDMA_RING_BASE, (u32)ring);
        mmio_write32(base + NDMA_RING_BASE + 4, (u32)(ring >> 32));
        mmio_write32(base + NDMA_RING_SIZE, NDMA_RING_ENTRIES);
        /* Enable latches the ring and resets both indices (docs/devices.md). */
        mmio_write32(base + NDMA_CONTROL, CONTROL_ENABLE | (use_interrupts ? CONTROL_INTERRUPT : 0));
        if (use_interrupts) ioapic_route(NDMA_GSI_BASE + index, (u8)(NDMA_VECTOR_BASE + index), 1);
        char name[4] = { 'n', 'd', (char)('0' + controller_count), 0 };
        controller_count++;
        block_register(name, sectors, mmio_read32(base + NDMA_READ_ONLY) == 1, BLK_INTERFACE_ASSIGNED,
                       (use_interrupts ? BLK_FLAG_INTERRUPTS : 0) | BLK_FLAG_FLUSH, &ndma_operations, c);
    }
}
