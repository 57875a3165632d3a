/* NestorOS kernel: shared declarations. */
#ifndef KERNEL_H
#define KERNEL_H
#include "../include/nestoros.h"

#define PAGE_SIZE 4096UL
#define PTE_P   (1UL << 0)
#define PTE_W   (1UL << 1)
#define PTE_U   (1UL << 2)
#define PTE_PS  (1UL << 7)
#define PTE_COW (1UL << 9)       /* software bit: copy-on-write page */
#define PTE_IMAGE (1UL << 10)    /* software bit: frame of the program image, shared, never freed */
#define PTE_NX  (1UL << 63)
#define PTE_ADDR 0x000FFFFFFFFFF000UL

#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS   0x1B
#define USER_CS   0x23
#define TSS_SEL   0x28

#define PANIC_STATUS 100

struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;
};

/* console.c */
void console_init(void);
void console_write(const char *s, usize n);
void kprintf(const char *fmt, ...);
void panic(const char *fmt, ...) __attribute__((noreturn));
void machine_exit(u32 status) __attribute__((noreturn));
void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
int strcmp(const char *a, const char *b);
usize strlen(const char *s);
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
static inline u64 read_cr2(void) { u64 v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
/* CR3 loads, INVLPG and page-table writes go through paging.c, which makes hypercalls instead when NestorOS runs
 * paravirtualized (docs/paravirt.md). */
void write_cr3(u64 v);
void invlpg(u64 va);
extern int paravirtual;
u64 hypercall(u64 number, u64 a, u64 b);
void pv_flush(void);
static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline u64 rdmsr(u32 msr) { u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return ((u64)hi << 32) | lo; }

/* memory.c: physical frames with reference counts (for copy-on-write sharing). */
void frames_add_range(u64 start, u64 end);
u64 frame_alloc(void);           /* zeroed frame, refcount 1; 0 when out of memory */
void frame_ref(u64 frame);
void frame_unref(u64 frame);     /* frees at refcount 0 */
u32 frame_refcount(u64 frame);
u64 frames_free_count(void);
void frames_init_refcounts(u64 top);
/* Called by frame_alloc when the free list is empty (swap.c pages a user page out); nonzero when it freed a frame. */
extern int (*frames_low)(void);

/* paging.c: every page-table write goes through pt_set_entry (the paravirtual hook). */
void paging_init(void);
u64 address_space_create(void);
void address_space_destroy(u64 pml4);
u64 *pte_lookup(u64 pml4, u64 va, int create);
int map_page(u64 pml4, u64 va, u64 frame, u64 flags);
void unmap_page(u64 pml4, u64 va);
int address_space_fork(u64 parent, u64 child);
void pt_set_entry(u64 *entry, u64 value);
extern u64 kernel_pml4;

/* trap.c */
void cpu_init(void);
void set_kernel_stack(u64 top);
void trap_handler(struct trap_frame *f);

/* process.c */
struct process;
void process_start_init(const char *cmdline);
u64 syscall_dispatch(struct trap_frame *f);
void preempt_current(void);
int user_page_fault(u64 addr, u64 error);
void kill_current(struct trap_frame *f, u64 vector, u64 addr) __attribute__((noreturn));
extern int current_pid;

/* entry.S */
extern void trap_return(void);
extern void syscall_entry(void);
extern u64 kernel_stack_top;
void switch_context(u64 *save_rsp, u64 new_rsp);
extern u64 isr_table[45];   /* vectors 0-44: exceptions, the timer, device interrupts, the event channel */

/* The local APIC timer (vector 32): preemption of user processes. */
#define TIMER_VECTOR 32
void timer_init(void);
void timer_interrupt(struct trap_frame *f);
extern u64 timer_ticks, preemptions;

/* paravirtual hook: set when CPUID 0x40000000 says "NestorNestor" */
extern int running_on_nestor;
#endif
