/* NestorOS entry points.
 * - entry64: the Nestor boot protocol (docs/boot-protocol.md): long mode, paging on, RDI = boot information.
 * - entry32: Multiboot v1 (QEMU -kernel): 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = info.
 *   It builds a temporary identity map, enters long mode (Intel SDM Vol. 3A §9.8.5) and joins entry64's path.
 * The kernel then builds its own page tables (paging.c), so the boot tables are only used until then. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS ((1 << 1) | (1 << 16))   /* memory info, a.out kludge (addresses below) */

    .section .multiboot, "a"
    .align 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long multiboot_header      /* header_addr */
    .long __image_start         /* load_addr */
    .long __load_end            /* load_end_addr */
    .long __bss_end             /* bss_end_addr */
    .long entry32               /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .globl entry32
entry32:
    cli
    mov %ebx, %esi                      /* multiboot info */
    mov $boot_stack_top, %esp
    /* Boot page tables: PML4 -> PDPT -> 4 page directories of 2 MiB pages = first 4 GiB. */
    mov $boot_pml4, %edi
    mov $(6 * 4096 / 4), %ecx
    xor %eax, %eax
    rep stosl
    movl $(boot_pdpt + 3), boot_pml4
    movl $(boot_pd + 3), boot_pdpt
    movl $(boot_pd + 0x1000 + 3), boot_pdpt + 8
    movl $(boot_pd + 0x2000 + 3), boot_pdpt + 16
    movl $(boot_pd + 0x3000 + 3), boot_pdpt + 24
    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    dec %ecx
    jnz 1b
    lgdt boot_gdt_pointer
    mov $0x20, %eax                     /* CR4.PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx               /* EFER: LME | NXE */
    rdmsr
    or $0x900, %eax
    wrmsr
    mov $0x80010033, %eax               /* PG WP NE ET MP PE */
    mov %eax, %cr0
    ljmp $0x08, $from_multiboot

    .code64
from_multiboot:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %esi, %esi                      /* zero-extend the multiboot info pointer */
    mov $1, %edi                        /* boot kind 1: Multiboot */
    jmp common64

    .globl entry64
entry64:
    cli
    mov %rdi, %rsi                      /* Nestor boot information */
    mov $0, %edi                        /* boot kind 0: Nestor boot protocol */
common64:
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    call kernel_main
2:  hlt
    jmp 2b

    .section .rodata
    .align 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 0x08 64-bit code */
    .quad 0x00CF92000000FFFF            /* 0x10 data */
boot_gdt_pointer:
    .word . - boot_gdt - 1
    .quad boot_gdt

    .section .bss
    .align 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4 * 4096
    .align 16
boot_stack: .skip 16384
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
