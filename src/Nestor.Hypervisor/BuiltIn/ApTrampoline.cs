using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.BuiltIn;

/// <summary>The low-memory start-up code of an SMP guest's application processors, as an SMP kernel places it
/// (Intel SDM Vol. 3A §8.4.4, "MP initialization example"): a start-up IPI of vector 8 starts an AP in real mode at
/// 0x8000, which loads a GDT, enters protected mode, turns on PAE with the CR3 the bootstrap processor left in
/// <see cref="Cr3Slot"/>, sets EFER.LME (and NXE), turns on paging and jumps in 64-bit mode to the address in
/// <see cref="EntrySlot"/>. Shared by the built-in <c>smp-spin</c> guest and the tests' SMP guest.</summary>
public static class ApTrampoline
{
    /// <summary>Where the real-mode code starts (the start-up vector 8 × 4 KiB).</summary>
    public const ulong Trampoline = 0x8000;

    /// <summary>The start-up IPI's vector for <see cref="Trampoline"/>.</summary>
    public const int StartupVector = (int)(Trampoline >> 12);

    private const ulong Protected = 0x8100, Long = 0x8200, Data = 0x8F00;
    private const ulong GdtPointer = Data, Gdt = Data + 0x10;

    /// <summary>Where the APs read the CR3 to use (the BSP's; 8 bytes).</summary>
    public const ulong Cr3Slot = Data + 0xF0;

    /// <summary>Where the APs read their 64-bit entry point (8 bytes).</summary>
    public const ulong EntrySlot = Data + 0xF8;

    /// <summary>The bytes of low memory from <see cref="Trampoline"/> up to and including the slots (the slots zero):
    /// the three stages and the GDT (0x08 64-bit code, so that the boot GDT's selector serves, 0x10 data, 0x20 32-bit
    /// code).</summary>
    public static byte[] LowMemory()
    {
        var image = new byte[Data + 0x100 - Trampoline];
        GuestAssembler.Assemble(RealMode, 0, bitness: 16).CopyTo(image, 0);
        GuestAssembler.Assemble(ProtectedMode, Protected, bitness: 32).CopyTo(image, (int)(Protected - Trampoline));
        GuestAssembler.Assemble(a =>
        {
            a.mov(rax, __qword_ptr[(long)EntrySlot]);
            a.jmp(rax);
        }, Long).CopyTo(image, (int)(Long - Trampoline));
        void Put(ulong at, ulong value) => BitConverter.GetBytes(value).CopyTo(image, (int)(at - Trampoline));
        Put(GdtPointer, (Gdt << 16) | 0x27);
        Put(Gdt + 0x08, 0x00AF_9A00_0000_FFFFUL);
        Put(Gdt + 0x10, 0x00CF_9200_0000_FFFFUL);
        Put(Gdt + 0x20, 0x00CF_9A00_0000_FFFFUL);
        return image;
    }

    private static void RealMode(Assembler a)
    {
        a.cli();
        a.mov(ax, cs);
        a.mov(ds, ax);
        a.AddInstruction(Instruction.Create(Code.Lgdt_m1632, new MemoryOperand(Register.None, (long)(GdtPointer - Trampoline), 2)));
        a.mov(eax, cr0);
        a.or(eax, 1);
        a.mov(cr0, eax);
        a.AddInstruction(Instruction.CreateBranch(Code.Jmp_ptr1632, 0x20, (uint)Protected));
    }

    private static void ProtectedMode(Assembler a)
    {
        a.mov(ax, 0x10);
        a.mov(ds, ax);
        a.mov(es, ax);
        a.mov(ss, ax);
        a.mov(eax, cr4);
        a.or(eax, 0x20);                                  // PAE
        a.mov(cr4, eax);
        a.mov(eax, __dword_ptr[(long)Cr3Slot]);
        a.mov(cr3, eax);
        a.mov(ecx, 0xC000_0080);
        a.rdmsr();
        a.or(eax, 0x900);                                 // EFER.LME, NXE (the boot tables may use NX)
        a.wrmsr();
        a.mov(eax, cr0);
        a.or(eax, 0x8000_0000);
        a.mov(cr0, eax);
        a.AddInstruction(Instruction.CreateBranch(Code.Jmp_ptr1632, 0x08, (uint)Long));
    }
}
