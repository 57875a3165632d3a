/* 16550 console and kernel printf. */
#include "kernel.h"
#include <stdarg.h>

#define COM1 0x3F8

void console_init(void)
{
    outb(COM1 + 1, 0x00);   /* no interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB */
    outb(COM1 + 0, 0x01);   /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1 */
    outb(COM1 + 2, 0xC7);   /* FIFOs on */
    outb(COM1 + 4, 0x03);
}

static void put(char c)
{
    while (!(inb(COM1 + 5) & 0x20)) { }
    outb(COM1, (u8)c);
}

void console_write(const char *s, usize n)
{
    for (usize i = 0; i < n; i++) put(s[i]);
}

/* REP STOSB / REP MOVSB: one instruction per call, as kernels do on CPUs with fast string operations (Intel SDM
 * Vol. 1 §7.3.9.3). Zeroing a frame is then one instruction, not 4096 byte stores, so fork's cost is the kernel's
 * work rather than a byte loop's (and under shadow paging one trap per page, not one per byte). */
void *memset(void *d, int c, usize n)
{
    void *p = d;
    __asm__ volatile("rep stosb" : "+D"(p), "+c"(n) : "a"(c) : "memory");
    return d;
}

void *memcpy(void *d, const void *s, usize n)
{
    void *p = d;
    __asm__ volatile("rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory");
    return d;
}
int strcmp(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return (u8)*a - (u8)*b; }
usize strlen(const char *s) { usize n = 0; while (s[n]) n++; return n; }

static void print_number(u64 v, int base, int is_signed)
{
    char buf[24];
    int i = 0;
    if (is_signed && (i64)v < 0) { put('-'); v = (u64)(-(i64)v); }
    do { u64 d = v % (u64)base; buf[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10); v /= (u64)base; } while (v);
    while (i) put(buf[--i]);
}

static void vprint(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') { put(*fmt); continue; }
        fmt++;
        int is_long = 0;
        while (*fmt == 'l') { is_long = 1; fmt++; }
        switch (*fmt) {
        case 'd': print_number(is_long ? (u64)va_arg(ap, i64) : (u64)(i64)va_arg(ap, int), 10, 1); break;
        case 'u': print_number(is_long ? va_arg(ap, u64) : va_arg(ap, u32), 10, 0); break;
        case 'x': print_number(is_long ? va_arg(ap, u64) : va_arg(ap, u32), 16, 0); break;
        case 'p': put('0'); put('x'); print_number(va_arg(ap, u64), 16, 0); break;
        case 's': { const char *s = va_arg(ap, const char *); while (*s) put(*s++); break; }
        case 'c': put((char)va_arg(ap, int)); break;
        case '%': put('%'); break;
        default: put('%'); put(*fmt); break;
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
}

void machine_exit(u32 status)
{
    /* Debug-exit port (docs/boot-protocol.md): ends the VM on Nestor and on QEMU's isa-debug-exit. */
    outl(0xF4, status);
    for (;;) __asm__ volatile("cli; hlt");
}

void panic(const char *fmt, ...)
{
    va_list ap;
    kprintf("\nNestorOS panic: ");
    va_start(ap, fmt);
    vprint(fmt, ap);
    va_end(ap);
    kprintf("\n");
    machine_exit(PANIC_STATUS);
}
