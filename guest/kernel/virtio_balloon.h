/* virtio-balloon (virtio 1.2 §5.5): NestorOS's balloon driver (virtio_balloon.c). */
#ifndef VIRTIO_BALLOON_H
#define VIRTIO_BALLOON_H
#include "kernel.h"

/* Software PTE bit of a present entry (bits 62:52 are ignored by the MMU, SDM Vol. 3A §4.5, Table 4-20): a user page
 * pinned for the balloon (sys_balloon BALLOON_PIN). Its frame is the host's until it is unpinned, so nothing may page
 * it out, copy it or free it: demand paging and swap must leave such pages alone. */
#define PTE_PINNED (1UL << 52)

/* Finds the device (after the block layer's probe); `total_frames` is the guest's memory, for the statistics. */
void virtio_balloon_probe(u64 total_frames);
/* From the timer interrupt, only when it interrupted user code (the kernel is then in no allocation or I/O): takes a
 * configuration change (a new target) and a statistics request. */
void balloon_tick(void);
/* DEFLATE_ON_OOM (§5.5.6.1): the frame allocator ran dry; gives pages of the kernel's balloon back. 1 if it freed any. */
int balloon_deflate_on_oom(void);
/* A process exits: the pages it pinned leave the balloon before its address space goes. */
void balloon_process_exit(int pid, u64 pml4);
/* The system call (SYS_BALLOON). */
i64 sys_balloon(u64 op, u64 address, u64 pages, u64 pml4, int pid);
#endif
