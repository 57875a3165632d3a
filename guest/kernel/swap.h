/* NestorOS demand paging with a swap area on a block device (kernel/swap.c, docs/overcommit.md "Guest swapping").
 * A user page that is paged out leaves a swap entry in its page-table entry: P clear, PTE_SWAP set and the slot
 * number where a frame address would be, as Linux's swap entries (the SDM Vol. 3A §4.5 leaves every other bit of a
 * not-present entry to software). */
#ifndef SWAP_H
#define SWAP_H
#include "kernel.h"

#define PTE_A    (1UL << 5)      /* accessed: set by the MMU on any access (SDM Vol. 3A §4.8) */
/* Bit 52 (ignored by the MMU, SDM Vol. 3A Table 4-19) means one thing in a not-present entry and another in a present
 * one. Not present: the page is in swap slot PTE_ADDR >> 12. Present: the page must stay in memory whatever the clock
 * says, the bit the balloon driver sets on the pages a process pins into the balloon (virtio_balloon.h's PTE_PINNED):
 * their frames are the host's now. */
#define PTE_SWAP (1UL << 52)
#define PTE_NOSWAP (1UL << 52)

static inline int pte_is_swap(u64 e) { return !(e & PTE_P) && (e & PTE_SWAP); }

/* Takes the kernel option swap=DEV off the start of s (DEV a block device's name, e.g. vdb or ata1); returns what
 * follows, or s itself when it does not start with that option. */
const char *swap_parse_option(const char *s);
/* After the block layer has probed: opens the device named by swap=, prints one line, and from then on the frame
 * allocator pages out a user page when it runs dry. */
void swap_init(void);
int swap_enabled(void);
/* A fault on a swap entry: reads the page back into a fresh frame and maps it. 0 when mapped, -1 when there is no
 * frame or the read failed (the reason is printed). */
int swap_fault(u64 *pte, u64 va);
/* A swap entry copied by fork (the slot gains a user) and one dropped by unmap or exit (the slot is freed with its
 * last user). */
void swap_entry_dup(u64 entry);
void swap_entry_free(u64 entry);
/* The counters, as one RESULT line (only when swap is on). */
void swap_report(void);

/* process.c: the page-table root of process-table entry index, or 0 when it has no user space (free, zombie, or
 * between two address spaces in exec). The clock visits address spaces through it. */
u64 process_pml4_at(int index);
int process_table_size(void);
#endif
