/* User-space entry: the kernel enters here with RDI = argc, RSI = argv. */
    .section .text.start, "ax"
    .globl _start
_start:
    and $-16, %rsp
    call user_main
    mov %eax, %edi
    mov $2, %eax            /* SYS_EXIT */
    syscall
1:  jmp 1b

    .section .note.GNU-stack, "", @progbits
