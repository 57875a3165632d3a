/* NestorOS: definitions shared by the kernel and user programs. */
#ifndef NESTOROS_H
#define NESTOROS_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long usize;

/* User address space (PML4 entries 1..255; entry 0 is the kernel's identity map, supervisor-only). */
#define USER_BASE        0x0000008000000000UL   /* program image (linked here) */
#define USER_MMAP_BASE   0x0000009000000000UL   /* anonymous mmap area */
#define USER_STACK_TOP   0x00000a0000000000UL   /* stack grows down from here */
#define USER_STACK_PAGES 256                     /* 1 MiB of demand-zero stack */
#define USER_TOP         0x0000800000000000UL

/* System calls: number in rax, arguments in rdi, rsi, rdx, r10, r8; result in rax (negative = -errno). */
#define SYS_WRITE   1
#define SYS_EXIT    2
#define SYS_FORK    3
#define SYS_WAITPID 4
#define SYS_GETPID  5
#define SYS_BRK     6
#define SYS_MMAP    7
#define SYS_MUNMAP  8
#define SYS_YIELD   9
#define SYS_UPTIME  10
#define SYS_EXEC    11
#define SYS_KINFO   12   /* what the kernel observes about itself: CPL of its own code */
#define KINFO_STEAL 4    /* SYS_KINFO 4: the vCPU's steal time in ns (kernel/steal.c), all ones without the device */
#define KINFO_FREE_FRAMES 5 /* SYS_KINFO 5: the kernel's free frames now (swaptouch) */
#define SYS_MMUTEST 13   /* the MMU permission matrix (kernel/mmutest.c) */
#define SYS_NANOBENCH 14 /* Adams & Agesen's nanobenchmarks in the kernel (kernel/nanobench.c): op, count */
#define SYS_BLKINFO 15   /* blkinfo(index, &struct blk_info): a block device of the block layer (kernel/block.c) */
#define SYS_BLKIO   16   /* blkio(index, op, sector, buffer, bytes): one transfer of up to 1 MiB, or a flush */
#define SYS_BALLOON 30   /* balloon(op, address, pages): pin/unpin user pages into the virtio balloon, or info */

/* The balloon (kernel/virtio_balloon.c, docs/overcommit.md). */
#define BALLOON_PIN   0   /* pins the `pages` mapped pages at `address` and gives them to the host; returns how many */
#define BALLOON_UNPIN 1   /* takes them back from the host (their contents are gone: zero); returns how many */
#define BALLOON_INFO  2   /* fills struct balloon_info at `address` */
struct balloon_info {
    u32 present;         /* a virtio-balloon was found */
    u32 target;          /* num_pages: what the host asks for */
    u32 actual;          /* pages in the balloon: the kernel's and the pinned ones */
    u32 kernel_pages;    /* inflated by the kernel driver */
    u32 pinned_pages;    /* pinned by processes */
    u32 reserved;
    u64 features;        /* negotiated */
    u64 inflated, deflated, oom_deflated;   /* pages so far */
};

/* The block layer (kernel/block.c, docs/guest.md). */
#define BLK_OP_READ  0
#define BLK_OP_WRITE 1
#define BLK_OP_FLUSH 2
#define BLK_SECTOR_SIZE 512
#define BLK_MAX_TRANSFER (1UL << 20)
#define BLK_INTERFACE_ATA     0   /* emulated: ATA PIO on the primary channel */
#define BLK_INTERFACE_VIRTIO  1   /* paravirtual: virtio-blk over virtio-mmio */
#define BLK_INTERFACE_ASSIGNED 2  /* dedicated: the assigned DMA controller (NDMA) */
#define BLK_INTERFACE_SPLIT    3  /* a service VM's disk, through the split driver's ring (blkfront) */
#define BLK_FLAG_INTERRUPTS (1u << 0)  /* completion by interrupt rather than polling */
#define BLK_FLAG_LBA48      (1u << 1)  /* ATA: 48-bit addressing */
#define BLK_FLAG_FLUSH      (1u << 2)  /* the device has a write cache that flush empties */
struct blk_info {
    char name[8];        /* "ata0", "vda", "nd0", ... NUL-terminated */
    u64 sectors;         /* of BLK_SECTOR_SIZE bytes */
    u32 read_only;
    u32 interface;       /* BLK_INTERFACE_* */
    u32 flags;           /* BLK_FLAG_* */
    u32 reserved;
    u64 requests;        /* driver requests so far (reads, writes, flushes) */
    u64 errors;          /* of which failed */
};

/* The paravirtual interface of Nestor's VMM (docs/paravirt.md): CPUID 0x40000001 EAX bit 0 says it is there;
 * a hypercall is VMCALL with the number in RAX and arguments in RDI, RSI; the result comes back in RAX. */
#define NESTOR_CPUID_FEATURES  0x40000001
#define NESTOR_FEATURE_PV      (1u << 0)
#define HC_MMU_UPDATE          1   /* rdi = guest-physical address of {u64 entry_address, u64 value}[rsi] */
#define HC_SET_CR3             2   /* rdi = the new CR3 */
#define HC_INVLPG              3   /* rdi = a linear address */
#define HC_VCPU_INFO           4   /* rdi = guest-physical address of struct vcpu_info */
#define HC_SET_INTERRUPTS      5   /* rdi = 0 or 1 (IF); returns the previous IF */
#define HC_RELEASE_TABLE       6   /* rdi = guest-physical address of a page that is no longer a page table */
#define HC_EVENTS_PENDING      7   /* returns 1 while the VMM holds an interrupt the virtual IF keeps out */
/* The split driver of a service-VM pair (docs/paravirt.md, docs/devices.md "The service VM"): CPUID 0x40000001 EAX
 * bit 1, under every technique with a VMM. */
#define NESTOR_FEATURE_SPLIT_DRIVER (1u << 1)
#define SPLIT_HC_GRANT_TABLE_SETUP 16 /* rdi = the caller's {u16 flags, u16 domain, u32 frame}[rsi] */
#define SPLIT_HC_GRANT_COPY        17 /* rdi = {u32 reference, u32 flags, u64 local, u32 offset, u32 length} */
#define SPLIT_HC_EVENT_NOTIFY      18 /* rdi = the peer's event channel (0-63) */
#define SPLIT_HC_EVENT_TAKE        19 /* returns the caller's pending channels and clears them */

#define NANOBENCH_IN      0
#define NANOBENCH_CR8WR   1
#define NANOBENCH_CALLRET 2
#define NANOBENCH_PGFAULT 3
#define NANOBENCH_DIVZERO 4
#define NANOBENCH_PTEMOD  5

#define E_INVAL  22
#define E_NOMEM  12
#define E_CHILD  10
#define E_NOENT  2
#define E_FAULT  14
#define E_IO     5
#define E_NODEV  19
#define E_ROFS   30
#define E_RANGE  34

/* A process killed by a fault exits with this status plus the exception vector. */
#define KILLED_BY_FAULT 128

#endif
