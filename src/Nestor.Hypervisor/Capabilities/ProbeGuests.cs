using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Devices;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Capabilities;

/// <summary>Tiny guests that each test one thing a host's KVM may or may not do. Each ends with status
/// <see cref="Success"/> on the debug-exit port when the feature worked.</summary>
internal static class ProbeGuests
{
    public const uint Success = 0x4E; // 'N'

    // Scratch memory the probes use, inside the usable RAM between the boot data and the 1 MiB load address.
    private const ulong Idt = 0x90000;
    private const ulong Gdt = 0x91000;
    private const ulong UserStack = 0x98000;
    private const ulong Data = 0x99000;

    /// <summary>Straight-line ring-0 code with port I/O: the baseline every KVM runs.</summary>
    public static byte[] RingZeroIo() => GuestAssembler.Assemble(a =>
    {
        a.mov(ecx, 1000);
        var loop = a.CreateLabel();
        a.Label(ref loop);
        a.mov(dx, 0x3F8 + 7); // scratch register: a harmless OUT
        a.mov(al, cl);
        a.@out(dx, al);
        a.sub(ecx, 1);
        a.jnz(loop);
        Exit(a, Success);
    });

    /// <summary>An invalid opcode (#UD, vector 6) delivered through the guest's IDT to a ring-0 handler.</summary>
    public static byte[] ExceptionDelivery() => GuestAssembler.Assemble(a =>
    {
        var handler = a.CreateLabel();
        InstallGate(a, 6, handler);
        a.ud2();
        Exit(a, 1);
        a.Label(ref handler);
        Exit(a, Success);
    });

    /// <summary>A software interrupt (<c>int 0x40</c>) through the guest's IDT.</summary>
    public static byte[] SoftwareInterrupt() => GuestAssembler.Assemble(a =>
    {
        var handler = a.CreateLabel();
        InstallGate(a, 0x40, handler);
        a.@int(0x40);
        Exit(a, 1);
        a.Label(ref handler);
        Exit(a, Success);
    });

    /// <summary>IRETQ from CPL 0 to CPL 3 code (IOPL 3, so the user code may write the debug-exit port itself).</summary>
    public static byte[] UserModeEntry() => GuestAssembler.Assemble(a =>
    {
        var user = a.CreateLabel();
        PrepareUserMode(a);
        EnterUserMode(a, user);
        a.Label(ref user);
        Exit(a, Success);
    });

    /// <summary>SYSCALL from CPL 3 to a CPL 0 handler (after IRETQ to CPL 3).</summary>
    public static byte[] SystemCall() => GuestAssembler.Assemble(a =>
    {
        var user = a.CreateLabel();
        var kernel = a.CreateLabel();
        PrepareUserMode(a);
        PrepareSyscall(a, kernel);
        EnterUserMode(a, user);
        a.Label(ref user);
        a.syscall();
        Exit(a, 1);
        a.Label(ref kernel);
        Exit(a, Success);
    });

    /// <summary>SYSRETQ from CPL 0 to CPL 3 code.</summary>
    public static byte[] SystemReturn() => GuestAssembler.Assemble(a =>
    {
        var user = a.CreateLabel();
        var kernel = a.CreateLabel();
        PrepareUserMode(a);
        PrepareSyscall(a, kernel);
        a.lea(rcx, __[user]);
        a.mov(r11d, 0x3002); // RFLAGS for user code: IOPL 3
        a.mov(rsp, UserStack);
        a.sysretq();
        a.Label(ref kernel);
        Exit(a, 1);
        a.Label(ref user);
        Exit(a, Success);
    });

    /// <summary>POPCNT of 0xF0F0 must be 8.</summary>
    public static byte[] Popcnt() => GuestAssembler.Assemble(a =>
    {
        a.mov(ebx, 0xF0F0);
        a.popcnt(rax, rbx);
        a.cmp(rax, 8);
        var ok = a.CreateLabel();
        a.je(ok);
        Exit(a, 1);
        a.Label(ref ok);
        Exit(a, Success);
    });

    /// <summary>CMPXCHG16B on matching memory must store RCX:RBX and set ZF.</summary>
    public static byte[] Cmpxchg16b() => GuestAssembler.Assemble(a =>
    {
        a.mov(rdi, Data);
        a.mov(__qword_ptr[rdi], 5);
        a.mov(__qword_ptr[rdi + 8], 6);
        a.mov(eax, 5);
        a.mov(edx, 6);
        a.mov(ebx, 7);
        a.mov(ecx, 8);
        a.cmpxchg16b(__xmmword_ptr[rdi]);
        var ok = a.CreateLabel();
        a.jnz(ok);
        a.cmp(__qword_ptr[rdi], 7);
        a.jne(ok);
        Exit(a, Success);
        a.Label(ref ok);
        Exit(a, 1);
    });

    private static void Exit(Assembler a, uint status)
    {
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, status);
        a.@out(dx, eax);
        a.hlt();
    }

    /// <summary>Writes a 64-bit interrupt gate for <paramref name="vector"/> to <paramref name="handler"/> into an
    /// IDT at <see cref="Idt"/> and loads IDTR (SDM Vol. 3A §6.14.1, Figure 6-8).</summary>
    private static void InstallGate(Assembler a, int vector, Label handler)
    {
        a.mov(rdi, Idt + (ulong)vector * 16);
        a.lea(rax, __[handler]);
        a.mov(__word_ptr[rdi], ax);                   // offset 15:0
        a.mov(__word_ptr[rdi + 2], 0x08);             // code selector
        a.mov(__word_ptr[rdi + 4], 0x8E00);           // present, DPL 0, 64-bit interrupt gate
        a.shr(rax, 16);
        a.mov(__word_ptr[rdi + 6], ax);               // offset 31:16
        a.shr(rax, 16);
        a.mov(__dword_ptr[rdi + 8], eax);             // offset 63:32
        a.mov(__dword_ptr[rdi + 12], 0);
        a.mov(rax, Data);
        a.mov(__word_ptr[rax], 256 * 16 - 1);
        a.mov(rbx, Idt);
        a.mov(__qword_ptr[rax + 2], rbx);
        a.lidt(__[rax]);
    }

    /// <summary>Makes the first 2 MiB user-accessible and loads a GDT with user segments: 0x08 kernel code,
    /// 0x10 kernel data, 0x18 user data, 0x20 user code (the order SYSRET expects, SDM Vol. 2B SYSRET).</summary>
    private static void PrepareUserMode(Assembler a)
    {
        // Set U/S on the PML4E, PDPTE and PDE that map the first 2 MiB (the boot tables are supervisor-only).
        a.mov(rax, cr3);
        a.and(rax, -4096);
        a.or(__qword_ptr[rax], 4);
        a.mov(rbx, __qword_ptr[rax]);
        a.and(rbx, -4096);
        a.or(__qword_ptr[rbx], 4);
        a.mov(rcx, __qword_ptr[rbx]);
        a.and(rcx, -4096);
        a.or(__qword_ptr[rcx], 4);
        a.mov(cr3, rax);
        a.mov(rdi, Gdt);
        a.mov(__qword_ptr[rdi], 0);
        a.mov(rax, 0x00AF_9A00_0000_FFFFUL);
        a.mov(__qword_ptr[rdi + 0x08], rax);
        a.mov(rax, 0x00CF_9200_0000_FFFFUL);
        a.mov(__qword_ptr[rdi + 0x10], rax);
        a.mov(rax, 0x00CF_F200_0000_FFFFUL);
        a.mov(__qword_ptr[rdi + 0x18], rax);
        a.mov(rax, 0x00AF_FA00_0000_FFFFUL);
        a.mov(__qword_ptr[rdi + 0x20], rax);
        a.mov(rax, Data + 0x100);
        a.mov(__word_ptr[rax], 0x27);
        a.mov(__qword_ptr[rax + 2], rdi);
        a.lgdt(__[rax]);
    }

    private static void PrepareSyscall(Assembler a, Label kernel)
    {
        a.mov(ecx, 0xC000_0080); // EFER.SCE
        a.rdmsr();
        a.or(eax, 1);
        a.wrmsr();
        a.mov(ecx, 0xC000_0081); // STAR: SYSCALL CS 0x08, SYSRET base 0x10 (CS 0x20|3, SS 0x18|3)
        a.xor(eax, eax);
        a.mov(edx, 0x0010_0008);
        a.wrmsr();
        a.mov(ecx, 0xC000_0082); // LSTAR
        a.lea(rax, __[kernel]);
        a.mov(rdx, rax);
        a.shr(rdx, 32);
        a.wrmsr();
    }

    private static void EnterUserMode(Assembler a, Label user)
    {
        a.push(0x1B);                 // SS: user data, RPL 3
        a.mov(rax, UserStack);
        a.push(rax);                  // RSP
        a.push(0x3002);               // RFLAGS: IOPL 3
        a.push(0x23);                 // CS: user code, RPL 3
        a.lea(rax, __[user]);
        a.push(rax);                  // RIP
        a.iretq();
    }
}
