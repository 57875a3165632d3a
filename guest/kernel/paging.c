/* The kernel's page tables and per-process address spaces (Intel SDM Vol. 3A §4.5, 4-level paging).
 * PML4 entry 0 (the first 512 GiB) is the kernel's identity map of the first 4 GiB, supervisor-only, shared by
 * every address space; user space lives in PML4 entries 1..255. Page 0 is left unmapped so null pointers fault. */
#include "swap.h"

u64 kernel_pml4;
int running_on_nestor;
int paravirtual;

/* Paravirtual mode (Xen-style, docs/paravirt.md): page-table writes are queued and handed to the hypervisor in
 * batches (one hypercall for up to 32), which applies them and updates its shadow tables without a trap per write.
 * The queue is flushed before any page-table entry is read (pte_lookup), before CR3 loads and INVLPG, and before
 * returning to user mode, so nothing ever sees a queued entry as unwritten. */
#define PV_BATCH 32
static struct { u64 address, value; } pv_queue[PV_BATCH];
static int pv_queued;

u64 hypercall(u64 number, u64 a, u64 b)
{
    u64 r;
    __asm__ volatile("vmcall" : "=a"(r) : "a"(number), "D"(a), "S"(b) : "memory");
    return r;
}

void pv_flush(void)
{
    if (pv_queued) {
        hypercall(HC_MMU_UPDATE, (u64)pv_queue, (u64)pv_queued);
        pv_queued = 0;
    }
}

/* Reading an entry whose write is still queued would see the old value: flush first (only then). */
static u64 *pv_settled(u64 *e)
{
    for (int i = 0; i < pv_queued; i++) {
        if (pv_queue[i].address == (u64)e) { pv_flush(); break; }
    }
    return e;
}

/* The single place where the kernel writes a page-table entry. */
void pt_set_entry(u64 *entry, u64 value)
{
    if (!paravirtual) {
        *entry = value;
        return;
    }
    pv_queue[pv_queued].address = (u64)entry;   /* identity-mapped: also its guest-physical address */
    pv_queue[pv_queued].value = value;
    if (++pv_queued == PV_BATCH) pv_flush();
}

void write_cr3(u64 v)
{
    if (paravirtual) {
        pv_flush();
        hypercall(HC_SET_CR3, v, 0);
        return;
    }
    __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory");
}

void invlpg(u64 va)
{
    if (paravirtual) {
        pv_flush();
        hypercall(HC_INVLPG, va, 0);
        return;
    }
    __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

static u64 alloc_table(void)
{
    u64 f = frame_alloc();
    if (!f) panic("out of memory for page tables");
    return f;
}

void paging_init(void)
{
    kernel_pml4 = alloc_table();
    u64 pdpt = alloc_table();
    pt_set_entry((u64 *)kernel_pml4, pdpt | PTE_P | PTE_W);
    for (u64 g = 0; g < 4; g++) {
        u64 pd = alloc_table();
        pt_set_entry((u64 *)pdpt + g, pd | PTE_P | PTE_W);
        for (u64 e = 0; e < 512; e++) {
            u64 pa = (g << 30) | (e << 21);
            if (pa == 0) {
                /* First 2 MiB in 4 KiB pages, page 0 not present. */
                u64 pt = alloc_table();
                for (u64 i = 1; i < 512; i++) pt_set_entry((u64 *)pt + i, (i << 12) | PTE_P | PTE_W);
                pt_set_entry((u64 *)pd + e, pt | PTE_P | PTE_W);
            } else {
                pt_set_entry((u64 *)pd + e, pa | PTE_P | PTE_W | PTE_PS);
            }
        }
    }
    write_cr3(kernel_pml4);
}

u64 address_space_create(void)
{
    u64 pml4 = alloc_table();
    pt_set_entry((u64 *)pml4, *(u64 *)kernel_pml4);
    return pml4;
}

/* The entry for va at the last level, creating intermediate tables (user-accessible) when asked. */
u64 *pte_lookup(u64 pml4, u64 va, int create)
{
    u64 *table = (u64 *)pml4;
    for (int level = 3; level > 0; level--) {
        u64 *e = pv_settled(&table[(va >> (12 + 9 * level)) & 511]);
        if (!(*e & PTE_P)) {
            if (!create) return 0;
            u64 t = frame_alloc();
            if (!t) return 0;
            pt_set_entry(e, t | PTE_P | PTE_W | PTE_U);
            table = (u64 *)t;           /* not *e: a paravirtual write may still be queued */
            continue;
        }
        table = (u64 *)(*e & PTE_ADDR);
    }
    return pv_settled(&table[(va >> 12) & 511]);
}

int map_page(u64 pml4, u64 va, u64 frame, u64 flags)
{
    u64 *e = pte_lookup(pml4, va, 1);
    if (!e) return -E_NOMEM;
    pt_set_entry(e, frame | flags | PTE_P);
    return 0;
}

void unmap_page(u64 pml4, u64 va)
{
    u64 *e = pte_lookup(pml4, va, 0);
    if (e && pte_is_swap(*e)) {          /* paged out: only its swap slot to give back */
        swap_entry_free(*e);
        pt_set_entry(e, 0);
        return;
    }
    if (!e || !(*e & PTE_P)) return;
    u64 old = *e;
    pt_set_entry(e, 0);
    if (read_cr3() == pml4) invlpg(va);
    if (!(old & PTE_IMAGE)) frame_unref(old & PTE_ADDR);
}

/* Visits every present user leaf entry below `table` (level 3 = PML4, whose user entries are 1..255; level 0 = page
 * table), and every swap entry (swap.h: a paged-out page, not present), so that fork and exit see those too. With
 * `release`, each page-table page is freed once everything below it has been visited. */
typedef void (*leaf_visitor)(u64 *entry, u64 va, void *context);

static void walk_level(u64 *table, int level, u64 base, leaf_visitor visit, void *context, int release)
{
    u64 first = level == 3 ? 1 : 0, last = level == 3 ? 256 : 512;
    for (u64 i = first; i < last; i++) {
        if (!(table[i] & PTE_P)) {
            if (level == 0 && pte_is_swap(table[i])) visit(&table[i], base | (i << 12), context);
            continue;
        }
        u64 va = base | (i << (12 + 9 * level));
        if (level == 0) {
            visit(&table[i], va, context);
            continue;
        }
        u64 *next = (u64 *)(table[i] & PTE_ADDR);
        walk_level(next, level - 1, va, visit, context, release);
        if (release) {
            pv_flush();                 /* queued writes into `next` land before the frame can be reused */
            if (paravirtual) hypercall(HC_RELEASE_TABLE, (u64)next, 0); /* no longer a page table (Xen's unpin) */
            frame_unref((u64)next);
        }
    }
}

static void walk_user(u64 pml4, leaf_visitor visit, void *context)
{
    pv_flush(); /* the walk reads the tables directly */
    walk_level((u64 *)pml4, 3, 0, visit, context, 0);
}

static void release_leaf(u64 *entry, u64 va, void *context)
{
    (void)va; (void)context;
    if (pte_is_swap(*entry)) swap_entry_free(*entry);
    else if (!(*entry & PTE_IMAGE)) frame_unref(*entry & PTE_ADDR);
    pt_set_entry(entry, 0);
}

void address_space_destroy(u64 pml4)
{
    pv_flush();
    walk_level((u64 *)pml4, 3, 0, release_leaf, 0, 1);
    pv_flush();
    if (paravirtual) hypercall(HC_RELEASE_TABLE, pml4, 0);
    frame_unref(pml4);
}

struct fork_context { u64 child; int failed; };

static void share_leaf(u64 *entry, u64 va, void *context)
{
    struct fork_context *c = context;
    u64 e = *entry;
    if (pte_is_swap(e)) {
        /* A paged-out page: the child names the same slot, which now has one more user (swap.c). */
        swap_entry_dup(e);
        u64 *child = pte_lookup(c->child, va, 1);
        if (!child) { c->failed = 1; swap_entry_free(e); return; }
        pt_set_entry(child, e);
        return;
    }
    if (e & PTE_W) {
        /* Copy-on-write: both sides lose write permission until one of them writes. */
        e = (e & ~PTE_W) | PTE_COW;
        pt_set_entry(entry, e);
    }
    if (!(e & PTE_IMAGE)) frame_ref(e & PTE_ADDR);
    u64 *child = pte_lookup(c->child, va, 1);
    if (!child) { c->failed = 1; if (!(e & PTE_IMAGE)) frame_unref(e & PTE_ADDR); return; }
    pt_set_entry(child, e);
}

int address_space_fork(u64 parent, u64 child)
{
    struct fork_context c = { child, 0 };
    walk_user(parent, share_leaf, &c);
    write_cr3(read_cr3()); /* the parent's entries lost W: flush its TLB */
    return c.failed ? -E_NOMEM : 0;
}
