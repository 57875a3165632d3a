using System.Runtime.CompilerServices;

namespace Nestor.Machine.Processor;

/// <summary>One 80-bit x87 data register (SDM Vol. 1 §8.1.2, double extended-precision format §4.2.2): the 64-bit
/// significand with its explicit integer bit, and the sign and 15-bit biased exponent.</summary>
public struct X87Register
{
    /// <summary>Bits 63:0: the significand, bit 63 the integer bit.</summary>
    public ulong Significand;

    /// <summary>Bits 79:64: bit 15 the sign, bits 14:0 the biased exponent.</summary>
    public ushort SignExponent;
}

/// <summary>The eight physical data registers R0–R7 (not ST(i): ST(i) is R((TOP + i) mod 8)).</summary>
[InlineArray(8)]
public struct X87Registers
{
    private X87Register register;
}

/// <summary>The x87 FPU's architectural state (SDM Vol. 1 §8.1): control word, status word (its TOP field the stack
/// top), the full 16-bit tag word (two bits per physical register: 00 valid, 01 zero, 10 special, 11 empty), the
/// last instruction's opcode, the last instruction and operand pointers with their selectors, and the eight data
/// registers. A value, saved with the rest of <see cref="CpuState"/>.</summary>
public struct X87State
{
    public ushort Control, Status, Tag, Opcode;
    public ulong InstructionPointer, OperandPointer;
    public ushort InstructionSelector, OperandSelector;
    public X87Registers Registers;

    /// <summary>After RESET (SDM Vol. 3A §9.1.1, Table 9-1): FCW 0x0040, FSW 0, FTW 0x5555 (every register tagged
    /// zero, their contents +0.0), pointers 0.</summary>
    public static X87State PowerUp => new() { Control = 0x0040, Tag = 0x5555 };

    /// <summary>After FINIT/FNINIT (SDM Vol. 2A "FINIT/FNINIT", Vol. 1 §8.1.5): FCW 0x037F (round to nearest,
    /// 64-bit precision, every exception masked), FSW 0, FTW 0xFFFF (all empty), opcode and pointers 0; the data
    /// registers keep their contents.</summary>
    public void Initialize()
    {
        Control = 0x037F;
        Status = 0;
        Tag = 0xFFFF;
        Opcode = 0;
        InstructionPointer = OperandPointer = 0;
        InstructionSelector = OperandSelector = 0;
    }

    /// <summary>FSW bit 7 (ES, error summary) and bit 15 (B) follow the unmasked exception flags: set when an
    /// exception flag in bits 5:0 is set whose mask in FCW is clear (SDM Vol. 1 §8.1.3.1).</summary>
    public void UpdateErrorSummary()
    {
        bool pending = (Status & ~Control & 0x3F) != 0;
        Status = pending ? (ushort)(Status | 0x8080) : (ushort)(Status & ~0x8080);
    }
}
