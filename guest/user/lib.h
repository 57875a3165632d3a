/* The user-space library every NestorOS program uses: system calls, strings, formatted output. */
#ifndef LIB_H
#define LIB_H
#include "../include/nestoros.h"

static inline i64 syscall5(u64 n, u64 a, u64 b, u64 c, u64 d, u64 e)
{
    i64 r;
    register u64 r10 __asm__("r10") = d;
    register u64 r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
    return r;
}

static inline i64 sys_write(int fd, const void *b, usize n) { return syscall5(SYS_WRITE, (u64)fd, (u64)b, n, 0, 0); }
static inline void sys_exit(int s) { syscall5(SYS_EXIT, (u64)s, 0, 0, 0, 0); for (;;) { } }
static inline i64 sys_fork(void) { return syscall5(SYS_FORK, 0, 0, 0, 0, 0); }
static inline i64 sys_waitpid(int pid, int *status) { return syscall5(SYS_WAITPID, (u64)pid, (u64)status, 0, 0, 0); }
static inline i64 sys_getpid(void) { return syscall5(SYS_GETPID, 0, 0, 0, 0, 0); }
static inline i64 sys_brk(u64 a) { return syscall5(SYS_BRK, a, 0, 0, 0, 0); }
static inline void *sys_mmap(usize n) { return (void *)syscall5(SYS_MMAP, n, 0, 0, 0, 0); }
static inline i64 sys_munmap(void *a, usize n) { return syscall5(SYS_MUNMAP, (u64)a, n, 0, 0, 0); }
static inline void sys_yield(void) { syscall5(SYS_YIELD, 0, 0, 0, 0, 0); }
static inline u64 sys_uptime(void) { return (u64)syscall5(SYS_UPTIME, 0, 0, 0, 0, 0); }
static inline i64 sys_exec(const char *name, const char *args) { return syscall5(SYS_EXEC, (u64)name, (u64)args, 0, 0, 0); }
static inline i64 sys_kinfo(void) { return syscall5(SYS_KINFO, 0, 0, 0, 0, 0); }
static inline i64 sys_kinfo_of(u64 what) { return syscall5(SYS_KINFO, what, 0, 0, 0, 0); }
static inline i64 sys_blkinfo(u64 index, struct blk_info *info) { return syscall5(SYS_BLKINFO, index, (u64)info, 0, 0, 0); }
static inline i64 sys_blkio(u64 index, u64 op, u64 sector, void *buffer, u64 bytes)
{
    return syscall5(SYS_BLKIO, index, op, sector, (u64)buffer, bytes);
}

int strcmp(const char *a, const char *b);
usize strlen(const char *s);
void *memset(void *d, int c, usize n);
void *memcpy(void *d, const void *s, usize n);
u64 parse_u64(const char *s, u64 fallback);
/* printf subset: %d %u %x %s %c, with l for 64-bit; the line goes out in one write. */
void print(const char *fmt, ...);

int main_init(int argc, char **argv);
int main_hello(int argc, char **argv);
int main_forkwait(int argc, char **argv);
int main_syscall(int argc, char **argv);
int main_pagefault(int argc, char **argv);
int main_memtouch(int argc, char **argv);
int main_ptchurn(int argc, char **argv);
int main_compute(int argc, char **argv);
int main_sensitive(int argc, char **argv);
int main_fault(int argc, char **argv);
int main_preempt(int argc, char **argv);
int main_mmutest(int argc, char **argv);
int main_nanobench(int argc, char **argv);
int main_disktest(int argc, char **argv);
int main_diskbench(int argc, char **argv);
int main_diskcheck(int argc, char **argv);
int main_balloon(int argc, char **argv);
int main_steal(int argc, char **argv);
int main_swaptouch(int argc, char **argv);
int main_migtouch(int argc, char **argv);
/* MurmurHash3's 64-bit finalizer (Appleby, fmix64): the disk and swap programs' patterns, which the host recomputes. */
static inline u64 fmix64(u64 x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdUL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53UL;
    x ^= x >> 33;
    return x;
}
#endif
