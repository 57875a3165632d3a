/* Demand paging with a swap area (docs/overcommit.md "Guest swapping"): when the frame allocator runs dry it asks
 * this file for a frame, and a clock (second chance, Corbató's clock as in Tanenbaum's "Modern Operating Systems"
 * §3.4.5) over the user pages of every process picks a victim by the accessed bit the MMU sets (SDM Vol. 3A §4.8):
 * a page with A set has A cleared and is passed over once; the first page found with A clear is written to a free
 * 4 KiB slot of the swap device (one slot per page, a bitmap of free slots), its entry becomes a swap entry (P clear,
 * PTE_SWAP, the slot number in the address bits, as Linux's swp_entry_t) and its TLB entry is invalidated. A fault on
 * a swap entry reads the slot back into a fresh frame (a major fault).
 *
 * Shared frames (a fork's copy-on-write sharing, before either side writes) are handled too. NestorOS keeps no
 * reverse map, but fork is its only way to share a frame and keeps the virtual address, so a shared victim's other
 * entries are looked up at the same address in every process (and in the child a fork is building): only when the
 * entries found account for the whole reference count (no kernel path holds the frame, no entry is half copied) and
 * none has its accessed bit set is the frame written once and every entry made the same swap entry. The slot counts
 * the entries that name it (Linux's swap_map), as it does for a swap entry fork copies: each side reads the slot into
 * its own frame, and the slot is freed with its last entry. Program text (PTE_IMAGE) and pages pinned into the
 * balloon (PTE_NOSWAP) are never paged out.
 *
 * The transfers go straight between the frame and the device (a frame is physically contiguous and identity-mapped,
 * so its address is also what a DMA device needs), not through the block layer's bounce buffer: a fault can happen
 * in the middle of a blkio call's copy into or out of that buffer. */
#include "swap.h"
#include "block.h"

#define SECTORS_PER_SLOT (PAGE_SIZE / SECTOR_SIZE)
#define SWAP_MAX_SLOTS 16384             /* 64 MiB of swap: the bitmap and counts stay small in the kernel's bss */

static char device_name[8];
static struct block_device *device;
static u64 slot_count, slots_used, slots_peak, next_free;
static u64 slot_bitmap[SWAP_MAX_SLOTS / 64];   /* bit set: slot in use */
static u8 slot_users[SWAP_MAX_SLOTS];          /* entries naming the slot (above 1 after fork) */
static int reclaiming;

/* The clock's hand: a process-table index and the next user virtual address to look at in its address space. */
static int hand_process;
static u64 hand_va;

static u64 pages_out, pages_in, major_faults, second_chances, scanned, shared_out, shared_skipped, io_errors, swap_full;

int swap_enabled(void) { return device != 0; }

const char *swap_parse_option(const char *s)
{
    const char *p = s;
    while (*p == ' ') p++;
    const char *prefix = "swap=";
    for (int i = 0; prefix[i]; i++) if (p[i] != prefix[i]) return s;
    p += 5;
    usize n = 0;
    while (p[n] && p[n] != ' ') n++;
    if (n >= sizeof(device_name)) n = sizeof(device_name) - 1;
    memcpy(device_name, p, n);
    device_name[n] = 0;
    while (*p && *p != ' ') p++;
    return p;
}

static i64 slot_alloc(void)
{
    for (u64 k = 0; k < slot_count; k++) {
        u64 slot = (next_free + k) % slot_count;
        if (!(slot_bitmap[slot / 64] & (1UL << (slot % 64)))) {
            slot_bitmap[slot / 64] |= 1UL << (slot % 64);
            slot_users[slot] = 1;
            next_free = slot + 1;
            if (++slots_used > slots_peak) slots_peak = slots_used;
            return (i64)slot;
        }
    }
    return -1;
}

static void slot_put(u64 slot)
{
    if (slot >= slot_count || !(slot_bitmap[slot / 64] & (1UL << (slot % 64)))) panic("swap slot %lu freed but not in use", slot);
    if (--slot_users[slot] == 0) {
        slot_bitmap[slot / 64] &= ~(1UL << (slot % 64));
        slots_used--;
    }
}

void swap_entry_dup(u64 entry)
{
    u64 slot = (entry & PTE_ADDR) >> 12;
    if (slot >= slot_count || slot_users[slot] == 0) panic("swap entry 0x%lx names no slot in use", entry);
    if (slot_users[slot] == 255) panic("swap slot %lu has 255 users", slot);
    slot_users[slot]++;
}

void swap_entry_free(u64 entry) { slot_put((entry & PTE_ADDR) >> 12); }

/* The first present user leaf entry at or after `from` below `table` (level 3 = PML4, user entries 1..255), or 0.
 * Empty upper-level entries are skipped whole, so a sparse address space costs only its mapped tables. */
static u64 *next_present_leaf(u64 *table, int level, u64 base, u64 from, u64 *found)
{
    int shift = 12 + 9 * level;
    u64 first = level == 3 ? 1 : 0, last = level == 3 ? 256 : 512;
    u64 i = from > base ? (from >> shift) & 511 : first;
    if (i < first) i = first;
    for (; i < last; i++) {
        u64 e = table[i];
        if (!(e & PTE_P)) continue;
        u64 va = base | (i << shift);
        if (level == 0) {
            *found = va;
            return &table[i];
        }
        u64 *leaf = next_present_leaf((u64 *)(e & PTE_ADDR), level - 1, va, from > va ? from : va, found);
        if (leaf) return leaf;
    }
    return 0;
}

/* The entries at `va` of every process (and of a child fork is building) that map `frame`; the count found. */
#define SHARERS 80
static struct { u64 *entry; u64 va, pml4; } sharers[SHARERS];

static int find_sharers(u64 frame, u64 va)
{
    int found = 0;
    for (int p = 0; p < process_table_size() && found < SHARERS; p++) {
        u64 pml4 = process_pml4_at(p);
        u64 *e = pml4 ? pte_lookup(pml4, va, 0) : 0;
        if (!e || !(*e & PTE_P) || (*e & PTE_ADDR) != frame) continue;
        sharers[found].entry = e;
        sharers[found].va = va;
        sharers[found].pml4 = pml4;
        found++;
    }
    return found;
}

static int write_slot(i64 slot, u64 frame, u64 va)
{
    if (block_transfer(device, BLK_OP_WRITE, (u64)slot * SECTORS_PER_SLOT, SECTORS_PER_SLOT, frame) == 0) return 0;
    io_errors++;
    slot_put((u64)slot);
    kprintf("NestorOS: swap: writing slot %ld of %s failed; page at 0x%lx kept in memory\n", slot, device->name, va);
    return -1;
}

/* A shared frame as victim: 1 when paged out, 0 when passed over (its second chance, or entries not all found). */
static int page_out_shared(u64 frame, u64 va)
{
    u32 references = frame_refcount(frame);
    int found = find_sharers(frame, va), accessed = 0;
    if (found != (int)references) { shared_skipped++; return 0; }
    for (int i = 0; i < found; i++) {
        u64 e = *sharers[i].entry;
        if (e & PTE_NOSWAP) { shared_skipped++; return 0; }
        if (e & PTE_A) {
            pt_set_entry(sharers[i].entry, e & ~PTE_A);
            if (read_cr3() == sharers[i].pml4) invlpg(sharers[i].va);
            accessed = 1;
        }
    }
    if (accessed) { second_chances++; return 0; }
    i64 slot = slot_alloc();
    if (slot < 0) { swap_full++; return 0; }
    if (write_slot(slot, frame, sharers[0].va) < 0) return 0;
    slot_users[slot] = (u8)found;
    for (int i = 0; i < found; i++) {
        u64 e = *sharers[i].entry;
        pt_set_entry(sharers[i].entry, ((u64)slot << 12) | PTE_SWAP | (e & (PTE_U | PTE_W | PTE_COW | PTE_NX)));
        if (read_cr3() == sharers[i].pml4) invlpg(sharers[i].va);
    }
    pv_flush();
    for (int i = 0; i < found; i++) frame_unref(frame);
    pages_out++;
    shared_out++;
    return 1;
}

/* Pages out one user page. Returns 1 when a frame went back to the free list. */
static int page_out_one(void)
{
    int processes = process_table_size(), wraps = 0;
    pv_flush();                               /* the scan reads page tables directly */
    while (wraps < 3) {                       /* round 1 may only clear A bits; round 2 then finds a victim */
        u64 pml4 = process_pml4_at(hand_process), va = 0;
        u64 *pte = pml4 ? next_present_leaf((u64 *)pml4, 3, 0, hand_va, &va) : 0;
        if (!pte) {
            hand_va = 0;
            if (++hand_process == processes) {
                hand_process = 0;
                wraps++;
                pv_flush();                   /* the next round must read the A bits this one cleared */
            }
            continue;
        }
        hand_va = va + PAGE_SIZE;
        scanned++;
        u64 e = *pte, frame = e & PTE_ADDR;
        if (e & (PTE_IMAGE | PTE_NOSWAP)) continue;
        if (e & PTE_A) {
            /* Second chance. The A bit is only a hint: a stale TLB entry in another address space cannot set it
             * again, but CR3 loads flush those (user pages are not global). */
            pt_set_entry(pte, e & ~PTE_A);
            if (read_cr3() == pml4) invlpg(va);
            second_chances++;
            continue;
        }
        if (frame_refcount(frame) != 1) {
            /* The walk for its other entries may clear their A bits: the next lookups must see that. */
            int out = page_out_shared(frame, va);
            pv_flush();
            if (out) return 1;
            continue;
        }
        i64 slot = slot_alloc();
        if (slot < 0) { swap_full++; return 0; }
        if (write_slot(slot, frame, va) < 0) return 0;
        /* Keep U, W, NX and COW so that the page comes back with the permissions it had. */
        pt_set_entry(pte, ((u64)slot << 12) | PTE_SWAP | (e & (PTE_U | PTE_W | PTE_COW | PTE_NX)));
        if (read_cr3() == pml4) invlpg(va);
        pv_flush();
        frame_unref(frame);
        pages_out++;
        return 1;
    }
    return 0;
}

/* The frame allocator's "frames are low" callback (memory.c). Not reentrant: paging out allocates nothing, and a
 * nested call (a driver allocating while a page is being written) just finds no frame. */
static int frames_low_callback(void)
{
    if (reclaiming) return 0;
    reclaiming = 1;
    int freed = page_out_one();
    reclaiming = 0;
    return freed;
}

void swap_init(void)
{
    if (!device_name[0]) return;
    for (u64 i = 0; block_device_at(i); i++) {
        if (!strcmp(block_device_at(i)->name, device_name)) device = block_device_at(i);
    }
    if (!device) {
        kprintf("NestorOS: swap=%s: there is no block device %s; running without swap (attach a disk with --disk, "
                "its name is on the block device lines above)\n", device_name, device_name);
        return;
    }
    if (device->read_only) {
        kprintf("NestorOS: swap=%s: the disk is read-only; running without swap (attach it writable)\n", device_name);
        device = 0;
        return;
    }
    slot_count = device->sectors / SECTORS_PER_SLOT;
    if (slot_count > SWAP_MAX_SLOTS) slot_count = SWAP_MAX_SLOTS;
    if (!slot_count) {
        kprintf("NestorOS: swap=%s: the disk holds no 4 KiB slot; running without swap\n", device_name);
        device = 0;
        return;
    }
    kprintf("NestorOS: swap on %s: %lu slots of 4 KiB (%lu KiB), clock replacement over user pages\n", device->name,
            slot_count, slot_count * 4);
    frames_low = frames_low_callback;
}

int swap_fault(u64 *pte, u64 va)
{
    major_faults++;
    u64 frame = frame_alloc();                /* may page another page out; never this one, which is not present */
    if (!frame) return -1;
    u64 e = *pte, slot = (e & PTE_ADDR) >> 12;
    if (!pte_is_swap(e)) panic("swap entry at 0x%lx changed while its frame was allocated", va);
    if (block_transfer(device, BLK_OP_READ, slot * SECTORS_PER_SLOT, SECTORS_PER_SLOT, frame) < 0) {
        io_errors++;
        frame_unref(frame);
        kprintf("NestorOS: swap: reading slot %lu of %s failed for the page at 0x%lx\n", slot, device->name, va);
        return -1;
    }
    /* The frame is this entry's own now, so a page that was copy-on-write when it went out comes back writable. */
    u64 flags = e & (PTE_U | PTE_W | PTE_NX);
    if (e & PTE_COW) flags |= PTE_W;
    pt_set_entry(pte, frame | flags | PTE_P | PTE_A);
    slot_put(slot);
    pages_in++;
    return 0;
}

void swap_report(void)
{
    if (!device) return;
    kprintf("RESULT swap device=%s slots=%lu pages_out=%lu pages_in=%lu major_faults=%lu second_chances=%lu scanned=%lu "
            "shared_out=%lu shared_skipped=%lu peak_slots=%lu slots_in_use=%lu swap_full=%lu io_errors=%lu\n",
            device->name, slot_count, pages_out, pages_in, major_faults, second_chances, scanned, shared_out, shared_skipped,
            slots_peak, slots_used, swap_full, io_errors);
}
