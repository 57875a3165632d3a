/* Exception entry, system-call entry and the context switch. */
    .text

/* Exceptions 0-31: vectors with a CPU-pushed error code (SDM Vol. 3A Table 6-1): 8, 10-14, 17, 21. Vector 32 is the
 * timer, 33-43 the disk controllers' interrupts, 44 the split driver's event channel (kernel/block.h). */
.macro ISR vector
isr_\vector:
    .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21)
    .else
    pushq $0
    .endif
    pushq $\vector
    jmp isr_common
.endm

.altmacro
.set i, 0
.rept 45
    ISR %i
    .set i, i + 1
.endr

.macro ISR_ADDRESS vector
    .quad isr_\vector
.endm
    .section .rodata
    .globl isr_table
isr_table:
.set i, 0
.rept 45
    ISR_ADDRESS %i
    .set i, i + 1
.endr
    .text

.macro SAVE_REGISTERS
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
.endm

.macro RESTORE_REGISTERS
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
.endm

isr_common:
    SAVE_REGISTERS
    mov %rsp, %rdi
    call trap_handler
    call pv_flush               /* paravirtual: queued page-table writes reach the hypervisor before user mode runs */
    .globl trap_return
trap_return:
    RESTORE_REGISTERS
    add $16, %rsp               /* vector, error code */
    /* Back to user mode: set IF with STI rather than relying on IRETQ to load it. Natively it changes nothing (the
     * frame's IF is 1 and STI's interrupt shadow covers the IRETQ); under a trap-and-emulate VMM, whose ring-1 kernel
     * cannot load IF with IRET (CPL > IOPL), the STI traps and is emulated, so user mode runs with interrupts on. */
    testb $3, 8(%rsp)           /* the frame's CS */
    jz 1f
    sti
1:  iretq

/* SYSCALL (SDM Vol. 2B): RCX = user RIP, R11 = user RFLAGS, IF cleared by SFMASK, still on the user stack.
 * Builds the same trap frame as an exception so fork and the fault paths see one format. */
    .globl syscall_entry
syscall_entry:
    mov %rsp, user_rsp_scratch(%rip)
    mov kernel_stack_top(%rip), %rsp
    pushq $0x1B                 /* SS */
    pushq user_rsp_scratch(%rip)
    push %r11                   /* RFLAGS */
    pushq $0x23                 /* CS */
    push %rcx                   /* RIP */
    pushq $0
    pushq $0x100                /* pseudo-vector: system call */
    SAVE_REGISTERS
    mov %rsp, %rdi
    call syscall_dispatch
    mov %rax, 14*8(%rsp)        /* frame->rax = result */
    call pv_flush
    RESTORE_REGISTERS
    add $16, %rsp
    /* Return with SYSRETQ: RIP from RCX, RFLAGS from R11, then the user stack. */
    mov 0(%rsp), %rcx
    mov 16(%rsp), %r11
    mov 24(%rsp), %rsp
    sysretq

/* switch_context(save_rsp, new_rsp): callee-saved registers on the old stack, resume the new one. */
    .globl switch_context
switch_context:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .data
    .globl kernel_stack_top
kernel_stack_top: .quad 0
user_rsp_scratch: .quad 0

    .section .note.GNU-stack, "", @progbits
