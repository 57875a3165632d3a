namespace Nestor.Machine.Processor;

/// <summary>A segment register: selector and the descriptor cache the CPU loaded with it.</summary>
public struct Segment
{
    public ushort Selector;
    public ulong Base;
    public uint Limit;
    /// <summary>Access byte (type, S, DPL, P) in bits 0–7 and flags (AVL, L, D/B, G) in bits 12–15, as a descriptor
    /// holds them in bits 40–55.</summary>
    public ushort Attributes;

    public readonly bool LongMode => (Attributes & 0x2000) != 0;
    public readonly int PrivilegeLevel => (Attributes >> 5) & 3;
}

/// <summary>RFLAGS bits (Intel SDM Vol. 1 §3.4.3).</summary>
public static class FlagBits
{
    public const ulong Carry = 1 << 0, Reserved1 = 1 << 1, Parity = 1 << 2, Adjust = 1 << 4, Zero = 1 << 6, Sign = 1 << 7,
        Trap = 1 << 8, Interrupt = 1 << 9, Direction = 1 << 10, Overflow = 1 << 11, IoPrivilege = 3 << 12, Nested = 1 << 14,
        Resume = 1 << 16, Virtual8086 = 1 << 17, AlignmentCheck = 1 << 18, Identification = 1 << 21;

    /// <summary>The six arithmetic status flags.</summary>
    public const ulong Status = Carry | Parity | Adjust | Zero | Sign | Overflow;
}
