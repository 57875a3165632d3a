#include "lib.h"
#include <stdarg.h>

int strcmp(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return (u8)*a - (u8)*b; }
usize strlen(const char *s) { usize n = 0; while (s[n]) n++; return n; }
void *memset(void *d, int c, usize n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, usize n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }

u64 parse_u64(const char *s, u64 fallback)
{
    if (!s || !*s) return fallback;
    u64 v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return fallback;
        v = v * 10 + (u64)(*s - '0');
    }
    return v;
}

struct buffer { char data[512]; usize n; };

static void put(struct buffer *b, char c) { if (b->n < sizeof(b->data)) b->data[b->n++] = c; }

static void number(struct buffer *b, u64 v, int base, int is_signed)
{
    char t[24];
    int i = 0;
    if (is_signed && (i64)v < 0) { put(b, '-'); v = (u64)(-(i64)v); }
    do { u64 d = v % (u64)base; t[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10); v /= (u64)base; } while (v);
    while (i) put(b, t[--i]);
}

void print(const char *fmt, ...)
{
    struct buffer b;
    b.n = 0;
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') { put(&b, *fmt); continue; }
        fmt++;
        int is_long = 0;
        while (*fmt == 'l') { is_long = 1; fmt++; }
        switch (*fmt) {
        case 'd': number(&b, is_long ? (u64)va_arg(ap, i64) : (u64)(i64)va_arg(ap, int), 10, 1); break;
        case 'u': number(&b, is_long ? va_arg(ap, u64) : va_arg(ap, u32), 10, 0); break;
        case 'x': number(&b, is_long ? va_arg(ap, u64) : va_arg(ap, u32), 16, 0); break;
        case 's': { const char *s = va_arg(ap, const char *); while (*s) put(&b, *s++); break; }
        case 'c': put(&b, (char)va_arg(ap, int)); break;
        default: put(&b, *fmt); break;
        }
    }
    va_end(ap);
    sys_write(1, b.data, b.n);
}

/* Dispatch on argv[0]: every program is linked into one image (no table of pointers, so the image works at
 * any address the kernel maps it). */
int user_main(int argc, char **argv)
{
    const char *p = argv[0];
    if (!strcmp(p, "init")) return main_init(argc, argv);
    if (!strcmp(p, "hello")) return main_hello(argc, argv);
    if (!strcmp(p, "forkwait")) return main_forkwait(argc, argv);
    if (!strcmp(p, "syscall")) return main_syscall(argc, argv);
    if (!strcmp(p, "pagefault")) return main_pagefault(argc, argv);
    if (!strcmp(p, "memtouch")) return main_memtouch(argc, argv);
    if (!strcmp(p, "ptchurn")) return main_ptchurn(argc, argv);
    if (!strcmp(p, "compute")) return main_compute(argc, argv);
    if (!strcmp(p, "sensitive")) return main_sensitive(argc, argv);
    if (!strcmp(p, "fault")) return main_fault(argc, argv);
    if (!strcmp(p, "preempt")) return main_preempt(argc, argv);
    if (!strcmp(p, "mmutest")) return main_mmutest(argc, argv);
    if (!strcmp(p, "nanobench")) return main_nanobench(argc, argv);
    if (!strcmp(p, "disktest")) return main_disktest(argc, argv);
    if (!strcmp(p, "diskbench")) return main_diskbench(argc, argv);
    if (!strcmp(p, "diskcheck")) return main_diskcheck(argc, argv);
    if (!strcmp(p, "balloon")) return main_balloon(argc, argv);
    if (!strcmp(p, "steal")) return main_steal(argc, argv);
    if (!strcmp(p, "swaptouch")) return main_swaptouch(argc, argv);
    if (!strcmp(p, "migtouch")) return main_migtouch(argc, argv);
    print("no such program: %s\n", p);
    return 127;
}
