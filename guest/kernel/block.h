/* NestorOS's block layer: one table of block devices that the drivers (ata.c, virtio_blk.c, ndma.c) fill in at
 * boot by probing, and the two system calls over it (blkinfo, blkio). A driver moves whole 512-byte sectors between
 * the disk and a physically contiguous kernel buffer (the bounce buffer), whose identity-mapped address is also its
 * guest-physical address, so that DMA drivers can hand it to the device as it is. */
#ifndef BLOCK_H
#define BLOCK_H
#include "kernel.h"

#define SECTOR_SIZE 512
#define BLOCK_MAX_DEVICES 8
#define BLOCK_MAX_TRANSFER (1UL << 20)   /* bytes per blkio call: the bounce buffer's size */

struct block_device;

/* A driver's operations. buffer is a kernel (identity-mapped, physically contiguous) address; count is in sectors,
 * at most BLOCK_MAX_TRANSFER / SECTOR_SIZE. Each returns 0 or -errno (-E_IO when the device reports an error). */
struct block_operations {
    i64 (*read)(struct block_device *device, u64 sector, u64 count, u64 buffer);
    i64 (*write)(struct block_device *device, u64 sector, u64 count, u64 buffer);
    i64 (*flush)(struct block_device *device);
};

struct block_device {
    char name[8];
    u64 sectors;
    int read_only;
    u32 interface;                  /* BLK_INTERFACE_* */
    u32 flags;                      /* BLK_FLAG_* */
    const struct block_operations *operations;
    void *driver;                   /* the driver's own state */
    u64 requests, errors;           /* counted for blkinfo */
};

/* Registers a device found by a driver's probe; returns it, or 0 when the table is full. */
struct block_device *block_register(const char *name, u64 sectors, int read_only, u32 interface, u32 flags,
                                    const struct block_operations *operations, void *driver);

/* Kernel command-line options the block layer reads: ata=poll|irq, virtio=poll|irq, ndma=poll|irq,
 * virtioseg=BYTES, a smaller limit than the device's size_max on one virtio data descriptor (to see requests split),
 * servicevm=front|back (the split driver of a service-VM pair: blkfront.c registers xvda, blkback.c serves the first
 * disk to the user VM), blkfront=forge (once connected, the front-end sends one request with a grant reference it
 * never granted, to show the back-end refusing it) and blkback=forge (the back-end answers its first data request with
 * an id the front-end never sent, to show the front-end refusing that). */
#define SERVICE_VM_NONE 0
#define SERVICE_VM_FRONT 1
#define SERVICE_VM_BACK 2
struct block_options { int ata_irq, virtio_irq, ndma_irq; u32 virtio_segment_bytes; int service_vm, forge_grant, forge_response; };

/* Strips the leading kernel options from the command line and returns what follows (init's commands). */
const char *block_parse_options(const char *cmdline, struct block_options *options);
/* Probes every driver, prints one line per device found, and reserves the bounce buffer when there is one. */
void block_init(const struct block_options *options);
i64 sys_blkinfo(u64 index, u64 info_address);
/* The kernel's own use of a device (the service VM's back-end): device index's entry, or 0; and one transfer of count
 * sectors between it and a kernel buffer, counted as blkio counts (op BLK_OP_*). */
struct block_device *block_device_at(u64 index);
i64 block_transfer(struct block_device *device, u64 op, u64 sector, u64 count, u64 buffer);
u64 block_bounce_buffer(void);      /* the 1 MiB bounce buffer (kernel address = guest-physical), 0 without disks */
i64 sys_blkio(u64 index, u64 op, u64 sector, u64 buffer, u64 bytes);

/* The drivers' probes (each registers what it finds). */
void ata_probe(int use_interrupts);
void virtio_blk_probe(int use_interrupts, u32 segment_limit);
void ndma_probe(int use_interrupts);

/* ioapic.c: routes an I/O APIC input (GSI) to a vector on this CPU (82093AA datasheet: the redirection table). */
void ioapic_route(u32 gsi, u8 vector, int level_triggered);
/* Device interrupt vectors (above the timer's 32) and the handlers trap.c calls for them. */
#define ATA_VECTOR 33
#define VIRTIO_VECTOR_BASE 34        /* 34..41: virtio-mmio slots 0..7 */
#define NDMA_VECTOR_BASE 42          /* 42..43: assigned controllers 0..1 */
#define EVENT_VECTOR 44              /* the split driver's event channel (blkring.h) */
#define DEVICE_VECTOR_LAST 44
void ata_interrupt(void);
void virtio_interrupt(u32 slot);
void ndma_interrupt(u32 controller);
void local_apic_eoi(void);
/* Waits with interrupts enabled until *flag becomes nonzero (STI; HLT, then CLI again). The kernel otherwise always
 * runs with IF clear, so the wait is the only place a device interrupt can arrive in the kernel. */
void wait_for_interrupt_flag(volatile int *flag);

/* memory.c: physically contiguous frames, taken once at boot while the free list is still in address order. */
u64 frames_take_contiguous(u64 count);

static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read32(u64 address) { return *(volatile u32 *)address; }
static inline void mmio_write32(u64 address, u32 value) { *(volatile u32 *)address = value; }
static inline void compiler_barrier(void) { __asm__ volatile("" : : : "memory"); }
#endif
