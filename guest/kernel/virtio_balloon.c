/* virtio-balloon (virtio 1.2 §5.5) over virtio-mmio: the host sets num_pages, the pages it wants back; the driver
 * takes that many frames from the frame allocator, hands their PFNs (4 KiB page frame numbers, le32) to the device
 * on the inflateq and writes the count to actual. A lower target deflates: PFNs on the deflateq, then the frames go
 * back to the allocator. With VIRTIO_BALLOON_F_DEFLATE_ON_OOM the allocator deflates before it fails; with
 * VIRTIO_BALLOON_F_STATS_VQ the driver reports free and total memory on the statsq when the device asks.
 * Processes can pin their own pages into the balloon too (sys_balloon): the course's balloon "realized as a regular
 * user process" that allocates non-pageable memory (ESX's vmmemctl, Waldspurger OSDI'02 §3.2), the kernel doing the
 * virtqueue work for it. Polling only: the device serves a notify before the guest runs on (Nestor's transport), and
 * the target is looked at from the timer tick, when it interrupted user code. */
#include "virtio.h"
#include "virtio_balloon.h"

#define VIRTIO_BALLOON_DEVICE_ID 5
#define VIRTIO_BALLOON_F_STATS_VQ 1
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM 2
#define INFLATEQ 0
#define DEFLATEQ 1
#define STATSQ 2
#define PFNS_PER_BATCH (PAGE_SIZE / 4)     /* one frame of le32 PFNs per chain */
#define RESERVE_FRAMES 64                  /* the driver never inflates the last 256 KiB: the kernel must go on */
#define OOM_DEFLATE_PAGES 256              /* given back per allocator failure */
#define MAX_PINS 16
#define CONFIG_NUM_PAGES (VIRTIO_CONFIG + 0)
#define CONFIG_ACTUAL (VIRTIO_CONFIG + 4)
#define INTERRUPT_CONFIG 2                 /* §4.2.2: InterruptStatus bit 1, configuration change */

/* §5.5.6.3 tags */
#define S_MEMFREE 4
#define S_MEMTOT 5
#define S_AVAIL 6
struct balloon_stat { u16 tag; u64 value; } __attribute__((packed));
#define STAT_COUNT 3

struct pin { int pid; u64 address, pages; };

static struct {
    int present, busy;
    u64 base;
    u64 features;
    u64 total_frames;
    struct virtqueue queues[3];
    u32 *batch;                    /* one frame: the PFNs of the chain under way */
    struct balloon_stat *stats;    /* its own frame */
    u32 *pages;                    /* the kernel's balloon: PFNs, capacity entries */
    u64 capacity, count;
    u64 pinned;
    struct pin pins[MAX_PINS];
    u64 inflated, deflated, oom_deflated;
} b;

static u32 rd(u32 offset) { return mmio_read32(b.base + offset); }
static void wr(u32 offset, u32 value) { mmio_write32(b.base + offset, value); }

/* §4.2.3.2: one queue in one frame, as virtio.c lays every queue; the driver polls. */
static int setup_queue(u32 index) { return virtio_setup_queue_at(b.base, index, &b.queues[index], 1); }

/* One chain of one device-readable buffer on queue `index`, notified; waits for it when `wait`. */
static int send(u32 index, u64 address, u32 length, int wait)
{
    struct virtqueue *q = &b.queues[index];
    virtq_begin(q);
    u16 head = virtq_add(q, 0xFFFF, address, length, 0);
    virtq_publish(q, head);
    /* The ring entry before the index, the index before the notify (§2.7.13); x86 keeps stores in order. */
    compiler_barrier();
    q->avail[1] = q->avail_index;
    compiler_barrier();
    wr(VIRTIO_QUEUE_NOTIFY, index);
    if (!wait) return 0;
    u16 target = (u16)(q->used_seen + 1);
    for (u64 spins = 0; q->used[1] != target; spins++) {
        if (spins > 100000000UL) return -E_IO;
        compiler_barrier();
    }
    q->used_seen = target;
    return 0;
}

static void write_actual(void) { wr(CONFIG_ACTUAL, (u32)(b.count + b.pinned)); }

/* The PFNs in b.batch[0..n) go to the device on `queue`. */
static int send_batch(u32 queue, u64 n)
{
    return send(queue, (u64)b.batch, (u32)(n * 4), 1);
}

/* §5.5.6.1 inflation: frames from the allocator, their PFNs on the inflateq, a batch at a time. */
static void inflate(u64 wanted)
{
    while (wanted && b.count < b.capacity) {
        u64 n = 0;
        while (n < wanted && n < PFNS_PER_BATCH && b.count + n < b.capacity && frames_free_count() > RESERVE_FRAMES) {
            u64 f = frame_alloc();
            if (!f) break;
            b.batch[n] = (u32)(f / PAGE_SIZE);
            b.pages[b.count + n] = (u32)(f / PAGE_SIZE);
            n++;
        }
        if (!n) break;
        if (send_batch(INFLATEQ, n) < 0) {
            for (u64 i = 0; i < n; i++) frame_unref((u64)b.batch[i] * PAGE_SIZE);
            return;
        }
        b.count += n;
        b.inflated += n;
        wanted -= n;
    }
}

/* §5.5.6.1 deflation: PFNs on the deflateq, then the frames are the allocator's again (their contents are gone). */
static u64 deflate(u64 wanted)
{
    u64 done = 0;
    while (wanted && b.count) {
        u64 n = wanted < PFNS_PER_BATCH ? wanted : PFNS_PER_BATCH;
        if (n > b.count) n = b.count;
        for (u64 i = 0; i < n; i++) b.batch[i] = b.pages[b.count - 1 - i];
        if (send_batch(DEFLATEQ, n) < 0) return done;
        for (u64 i = 0; i < n; i++) frame_unref((u64)b.batch[i] * PAGE_SIZE);
        b.count -= n;
        b.deflated += n;
        wanted -= n;
        done += n;
    }
    return done;
}

/* To the target: the kernel's balloon makes up the difference the pinned pages leave. */
static void adjust(void)
{
    u64 target = rd(CONFIG_NUM_PAGES), held = b.count + b.pinned;
    b.busy = 1;
    if (target > held) inflate(target - held);
    else if (target < held) deflate(held - target);
    b.busy = 0;
    write_actual();
}

static void fill_stats(void)
{
    u64 free = frames_free_count() * PAGE_SIZE;
    b.stats[0].tag = S_MEMFREE;
    b.stats[0].value = free;
    b.stats[1].tag = S_MEMTOT;
    b.stats[1].value = b.total_frames * PAGE_SIZE;
    b.stats[2].tag = S_AVAIL;          /* no page cache: what is free is what a new program can have */
    b.stats[2].value = free;
}

void virtio_balloon_probe(u64 total_frames)
{
    u32 slots = running_on_nestor ? VIRTIO_MMIO_SLOTS : VIRTIO_MMIO_SLOTS_MICROVM;
    for (u32 slot = 0; slot < slots; slot++) {
        u64 base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_STRIDE;
        if (mmio_read32(base + VIRTIO_MAGIC) != 0x74726976 || mmio_read32(base + VIRTIO_VERSION) != 2) continue;
        if (mmio_read32(base + VIRTIO_DEVICE_ID) != VIRTIO_BALLOON_DEVICE_ID) continue;
        struct virtio_device d;
        memset(&d, 0, sizeof(d));
        d.base = base;
        d.slot = slot;
        if (virtio_negotiate(&d, (1UL << VIRTIO_BALLOON_F_STATS_VQ) | (1UL << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)) < 0) {
            kprintf("NestorOS: virtio-mmio slot %u: the balloon refused the features (VERSION_1 needed)\n", slot);
            continue;
        }
        b.base = base;
        b.features = d.features;
        b.total_frames = total_frames;
        /* Room for a PFN of every free frame, in frames of its own (the ballooned frames cannot hold the list:
         * their contents are the host's). */
        b.capacity = frames_free_count();
        u64 list_frames = (b.capacity * 4 + PAGE_SIZE - 1) / PAGE_SIZE;
        b.pages = (u32 *)frames_take_contiguous(list_frames);
        b.batch = (u32 *)frame_alloc();
        b.stats = (struct balloon_stat *)frame_alloc();
        int stats = (b.features & (1UL << VIRTIO_BALLOON_F_STATS_VQ)) != 0;
        if (!b.pages || !b.batch || !b.stats || setup_queue(INFLATEQ) < 0 || setup_queue(DEFLATEQ) < 0 ||
            (stats && setup_queue(STATSQ) < 0)) {
            kprintf("NestorOS: virtio-mmio slot %u: the balloon's queues could not be set up\n", slot);
            wr(VIRTIO_STATUS, VIRTIO_STATUS_FAILED);
            return;
        }
        b.capacity -= list_frames + 5;   /* what the list, the batch, the statistics and the queues took */
        wr(VIRTIO_STATUS, rd(VIRTIO_STATUS) | VIRTIO_STATUS_DRIVER_OK);
        b.present = 1;
        /* §5.5.6.3: the first statistics buffer goes to the device at once; it keeps it until it wants more. */
        if (stats) {
            fill_stats();
            send(STATSQ, (u64)b.stats, STAT_COUNT * sizeof(struct balloon_stat), 0);
        }
        adjust();
        kprintf("NestorOS: virtio-balloon in slot %u: target %u pages, %lu inflated%s%s\n", slot, rd(CONFIG_NUM_PAGES),
                b.count, stats ? ", statistics" : "",
                b.features & (1UL << VIRTIO_BALLOON_F_DEFLATE_ON_OOM) ? ", deflate on OOM" : "");
        return;
    }
}

void balloon_tick(void)
{
    if (!b.present || b.busy) return;
    u32 status = rd(VIRTIO_INTERRUPT_STATUS);
    if (status) wr(VIRTIO_INTERRUPT_ACK, status);
    if (status & INTERRUPT_CONFIG) adjust();
    /* The device returned the statistics buffer: it wants fresh ones (§5.5.6.3). */
    struct virtqueue *q = &b.queues[STATSQ];
    if ((b.features & (1UL << VIRTIO_BALLOON_F_STATS_VQ)) && q->used[1] != q->used_seen) {
        q->used_seen = q->used[1];
        fill_stats();
        send(STATSQ, (u64)b.stats, STAT_COUNT * sizeof(struct balloon_stat), 0);
    }
}

int balloon_deflate_on_oom(void)
{
    if (!b.present || b.busy || !(b.features & (1UL << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)) || !b.count) return 0;
    b.busy = 1;
    u64 n = deflate(OOM_DEFLATE_PAGES);
    b.busy = 0;
    b.oom_deflated += n;
    write_actual();
    return n != 0;
}

/* The pages of [address, address + pages × 4 KiB) that are pinned (or, for pinning, can be: present, private,
 * writable user pages), one PFN batch at a time on `queue`. Returns how many pages went. */
static u64 move_pins(u64 pml4, u64 address, u64 pages, int pin)
{
    u64 done = 0;
    while (done < pages) {
        u64 n = 0;
        for (; n < PFNS_PER_BATCH && done + n < pages; n++) {
            u64 *e = pte_lookup(pml4, address + (done + n) * PAGE_SIZE, 0);
            if (!e || !(*e & PTE_P)) break;
            u64 frame = *e & PTE_ADDR;
            if (pin && (!(*e & PTE_U) || !(*e & PTE_W) || (*e & (PTE_COW | PTE_IMAGE | PTE_PINNED)) ||
                        frame_refcount(frame) != 1)) break;
            if (!pin && !(*e & PTE_PINNED)) break;
            b.batch[n] = (u32)(frame / PAGE_SIZE);
        }
        if (!n || send_batch(pin ? INFLATEQ : DEFLATEQ, n) < 0) break;
        for (u64 i = 0; i < n; i++) {
            u64 *e = pte_lookup(pml4, address + (done + i) * PAGE_SIZE, 0);
            pt_set_entry(e, pin ? *e | PTE_PINNED : *e & ~PTE_PINNED);
        }
        if (pin) b.inflated += n;
        else b.deflated += n;
        done += n;
        if (n < PFNS_PER_BATCH && done < pages) break;   /* the batch stopped at a page that does not qualify */
    }
    return done;
}

static int in_user_range(u64 address, u64 length)
{
    return address >= USER_BASE && address < USER_TOP && length <= USER_TOP - address;
}

static i64 unpin(int slot, u64 pml4)
{
    struct pin *p = &b.pins[slot];
    u64 n = move_pins(pml4, p->address, p->pages, 0);
    b.pinned -= n;
    p->pid = 0;
    return (i64)n;
}

i64 sys_balloon(u64 op, u64 address, u64 pages, u64 pml4, int pid)
{
    if (op == BALLOON_INFO) {
        if (!in_user_range(address, sizeof(struct balloon_info))) return -E_FAULT;
        struct balloon_info info;
        memset(&info, 0, sizeof(info));
        info.present = (u32)b.present;
        info.target = b.present ? rd(CONFIG_NUM_PAGES) : 0;
        info.actual = b.present ? rd(CONFIG_ACTUAL) : 0;
        info.kernel_pages = (u32)b.count;
        info.pinned_pages = (u32)b.pinned;
        info.features = b.features;
        info.inflated = b.inflated;
        info.deflated = b.deflated;
        info.oom_deflated = b.oom_deflated;
        memcpy((void *)address, &info, sizeof(info));
        return 0;
    }
    if (op != BALLOON_PIN && op != BALLOON_UNPIN) return -E_INVAL;
    if (!b.present) return -E_NODEV;
    if ((address & (PAGE_SIZE - 1)) || !pages || pages > (USER_TOP >> 12) || !in_user_range(address, pages * PAGE_SIZE)) {
        return -E_INVAL;
    }
    if (op == BALLOON_UNPIN) {
        for (int i = 0; i < MAX_PINS; i++) {
            if (b.pins[i].pid == pid && b.pins[i].address == address && b.pins[i].pages == pages) {
                i64 n = unpin(i, pml4);
                adjust();   /* the kernel's balloon makes up for the pages that left, as far as the target asks */
                return n;
            }
        }
        return -E_INVAL;
    }
    int slot = -1;
    for (int i = 0; i < MAX_PINS && slot < 0; i++) if (!b.pins[i].pid) slot = i;
    if (slot < 0) return -E_NOMEM;
    u64 n = move_pins(pml4, address, pages, 1);
    if (n) {
        b.pins[slot].pid = pid;
        b.pins[slot].address = address;
        b.pins[slot].pages = n;
        b.pinned += n;
    }
    write_actual();
    return (i64)n;
}

void balloon_process_exit(int pid, u64 pml4)
{
    if (!b.present) return;
    int any = 0;
    for (int i = 0; i < MAX_PINS; i++) {
        if (b.pins[i].pid == pid) {
            unpin(i, pml4);
            any = 1;
        }
    }
    if (any) write_actual();
}
