using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Nestor.Kvm;

/// <summary>General-purpose registers, RIP and RFLAGS of a vCPU (<c>struct kvm_regs</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmRegisters
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

/// <summary>A segment register with its hidden descriptor cache (<c>struct kvm_segment</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    /// <summary>Descriptor type field (bits 8–11 of the descriptor's access byte).</summary>
    public byte Type;
    public byte Present, Dpl, DefaultSize, System, Long, Granularity, Available, Unusable;
    private byte padding;

    /// <summary>True for a code/data segment (descriptor S bit set), false for a system segment.</summary>
    public readonly bool IsCodeOrData => System != 0;
}

/// <summary>A descriptor-table register, GDTR or IDTR (<c>struct kvm_dtable</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmDescriptorTable
{
    public ulong Base;
    public ushort Limit;
    private ushort padding0, padding1, padding2;
}

/// <summary>Segment, descriptor-table and control registers of a vCPU (<c>struct kvm_sregs</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmSpecialRegisters
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public KvmDescriptorTable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8;
    public ulong Efer;
    public ulong ApicBase;
    /// <summary>Bitmap of pending external interrupts (256 bits).</summary>
    public InterruptBitmap PendingInterrupts;

    [InlineArray(4)]
    public struct InterruptBitmap
    {
        private ulong element;
    }
}

/// <summary>x87 and SSE state of a vCPU (<c>struct kvm_fpu</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmFpu
{
    public X87Registers Registers;
    public ushort ControlWord;
    public ushort StatusWord;
    /// <summary>Abridged tag word (one bit per register, as FXSAVE stores it).</summary>
    public byte AbridgedTagWord;
    private byte padding1;
    public ushort LastOpcode;
    public ulong LastInstructionPointer;
    public ulong LastDataPointer;
    public XmmRegisters Xmm;
    public uint Mxcsr;
    private uint padding2;

    [InlineArray(128)]
    public struct X87Registers
    {
        private byte element;
    }

    [InlineArray(256)]
    public struct XmmRegisters
    {
        private byte element;
    }
}

/// <summary>One model-specific register and its value (<c>struct kvm_msr_entry</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrEntry
{
    public uint Index;
    private uint reserved;
    public ulong Data;

    public KvmMsrEntry(uint index, ulong data)
    {
        Index = index;
        reserved = 0;
        Data = data;
    }
}

/// <summary>One CPUID leaf/subleaf as the vCPU reports it (<c>struct kvm_cpuid_entry2</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmCpuidEntry
{
    public uint Function;
    public uint Index;
    /// <summary><see cref="SignificantIndex"/> when <see cref="Index"/> selects a subleaf.</summary>
    public uint Flags;
    public uint Eax, Ebx, Ecx, Edx;
    private uint padding0, padding1, padding2;

    public const uint SignificantIndex = 1;
}

/// <summary>Result of translating a guest linear address through the vCPU's current paging state
/// (<c>struct kvm_translation</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmTranslation
{
    public ulong LinearAddress;
    public ulong PhysicalAddress;
    public byte Valid, Writeable, UserMode;
    private byte padding0, padding1, padding2, padding3, padding4;
}

/// <summary>A guest memory slot (<c>struct kvm_userspace_memory_region</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmUserspaceMemoryRegion
{
    public uint Slot;
    public uint Flags;
    public ulong GuestPhysicalAddress;
    public ulong MemorySize;
    public ulong UserspaceAddress;
}
