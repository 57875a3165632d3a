using System.Runtime.CompilerServices;
using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

public sealed partial class Cpu
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Mask(int size) => size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong SignBit(int size) => 1UL << (size * 8 - 1);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong SignExtend(ulong value, int size) => size switch
    {
        1 => (ulong)(sbyte)value,
        2 => (ulong)(short)value,
        4 => (ulong)(int)value,
        _ => value,
    };

    /// <summary>Size in bytes of operand <paramref name="n"/>.</summary>
    private static int OperandSize(in Instruction i, int n)
    {
        switch (i.GetOpKind(n))
        {
            case OpKind.Register:
                return i.GetOpRegister(n).GetSize();
            case OpKind.Memory:
                return i.MemorySize.GetSize();
            case OpKind.Immediate8:
                return 1;
            case OpKind.Immediate16:
            case OpKind.Immediate8to16:
                return 2;
            case OpKind.Immediate32:
            case OpKind.Immediate8to32:
                return 4;
            default:
                return 8;
        }
    }

    /// <summary>The effective (linear) address of the memory operand: base + index × scale + displacement, plus the
    /// FS or GS base (the other segment bases are zero in 64-bit mode, SDM Vol. 3A §3.2.4).</summary>
    private ulong EffectiveAddress(in Instruction i) => EffectiveAddress(i, 0);

    /// <summary>The effective address with <paramref name="extra"/> added to the offset before it is reduced to the
    /// address size: BT/BTS/BTR/BTC's byte displacement from a register bit offset is part of the address
    /// computation, so with a 32-bit address size (67h) the sum wraps at 2^32 too (SDM Vol. 1 §3.3.7; found by the
    /// differential tests against KVM). The segment base is added after the reduction.</summary>
    private ulong EffectiveAddress(in Instruction i, ulong extra)
    {
        ulong address;
        if (i.IsIPRelativeMemoryOperand)
        {
            address = i.IPRelativeMemoryAddress + extra;
            if (i.MemoryBase == Register.EIP)
            {
                address = (uint)address;
            }
        }
        else
        {
            address = i.MemoryDisplacement64 + extra;
            if (i.MemoryBase != Register.None)
            {
                address += ReadRegister(i.MemoryBase);
            }
            if (i.MemoryIndex != Register.None)
            {
                address += ReadRegister(i.MemoryIndex) * (ulong)i.MemoryIndexScale;
            }
            if (i.MemoryBase.GetSize() == 4 || i.MemoryIndex.GetSize() == 4)
            {
                address = (uint)address; // 32-bit address size (67h prefix)
            }
        }
        if (Bitness != 64)
        {
            return LegacyLinear(i, address); // every segment has a base (Cpu.RealMode)
        }
        var segment = i.MemorySegment;
        if (segment == Register.FS)
        {
            address += Fs.Base;
        }
        else if (segment == Register.GS)
        {
            address += Gs.Base;
        }
        return address;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong ReadRegister(Register r)
    {
        if (r >= Register.RAX && r <= Register.R15)
        {
            return Registers[r - Register.RAX];
        }
        if (r >= Register.EAX && r <= Register.R15D)
        {
            return (uint)Registers[r - Register.EAX];
        }
        if (r >= Register.AX && r <= Register.R15W)
        {
            return (ushort)Registers[r - Register.AX];
        }
        if (r >= Register.AL && r <= Register.R15L)
        {
            if (r >= Register.AH && r <= Register.BH)
            {
                return (byte)(Registers[r - Register.AH] >> 8);
            }
            return (byte)Registers[Gpr8Index(r)];
        }
        if (r == Register.RIP)
        {
            return Rip;
        }
        return ReadSegmentRegister(r);
    }

    private static int Gpr8Index(Register r) => r switch
    {
        >= Register.SPL and <= Register.DIL => r - Register.SPL + 4,
        >= Register.R8L => r - Register.R8L + 8,
        _ => r - Register.AL,
    };

    /// <summary>Writes a register with x86-64's rules: a 32-bit write zeroes the upper half, 8- and 16-bit writes keep
    /// the rest (SDM Vol. 1 §3.4.1.1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void WriteRegister(Register r, ulong value)
    {
        if (r >= Register.RAX && r <= Register.R15)
        {
            Registers[r - Register.RAX] = value;
        }
        else if (r >= Register.EAX && r <= Register.R15D)
        {
            Registers[r - Register.EAX] = (uint)value;
        }
        else if (r >= Register.AX && r <= Register.R15W)
        {
            ref ulong g = ref Registers[r - Register.AX];
            g = (g & ~0xFFFFUL) | (ushort)value;
        }
        else if (r >= Register.AH && r <= Register.BH)
        {
            ref ulong g = ref Registers[r - Register.AH];
            g = (g & ~0xFF00UL) | ((value & 0xFF) << 8);
        }
        else if (r >= Register.AL && r <= Register.R15L)
        {
            ref ulong g = ref Registers[Gpr8Index(r)];
            g = (g & ~0xFFUL) | (byte)value;
        }
        else
        {
            WriteSegmentRegister(r, (ushort)value);
            if (r == Register.SS)
            {
                // MOV SS and POP SS inhibit interrupts and debug traps until the next instruction completes (SDM Vol.
                // 3A §6.8.3), so that a stack switch's MOV SS; MOV RSP is never split (Cpu.Debug.cs).
                StackSegmentLoaded();
            }
        }
    }

    /// <summary>Reads operand <paramref name="n"/> (register, memory or immediate), zero-extended.</summary>
    private ulong ReadOperand(in Instruction i, int n, int size)
    {
        switch (i.GetOpKind(n))
        {
            case OpKind.Register:
                return ReadRegister(i.GetOpRegister(n));
            case OpKind.Memory:
                return ReadLinear(EffectiveAddress(i), size);
            default:
                return i.GetImmediate(n) & Mask(size);
        }
    }

    private void WriteOperand(in Instruction i, int n, int size, ulong value)
    {
        if (i.GetOpKind(n) == OpKind.Register)
        {
            WriteRegister(i.GetOpRegister(n), value & Mask(size));
        }
        else
        {
            WriteLinear(EffectiveAddress(i), size, value);
        }
    }

    private ulong ReadSegmentRegister(Register r) => r switch
    {
        // Sensitive: a ring-compressed kernel reads its hardware RPL.
        Register.CS => DeprivilegedKernel(sensitiveOnly: true) ? (ulong)((Cs.Selector & ~3) | ringCompression!.KernelRing) : Cs.Selector,
        Register.DS => Ds.Selector,
        Register.ES => Es.Selector,
        Register.FS => Fs.Selector,
        Register.GS => Gs.Selector,
        Register.SS => Ss.Selector,
        _ => throw GuestFault.InvalidOpcode(),
    };

    /// <summary>MOV to a data segment register loads its descriptor (null selectors allowed except in SS at CPL 3).</summary>
    private void WriteSegmentRegister(Register r, ushort selector)
    {
        if (RealMode)
        {
            WriteRealModeSegmentRegister(r, selector);
            return;
        }
        switch (r)
        {
            case Register.DS: Ds = LoadDescriptor(selector); break;
            case Register.ES: Es = LoadDescriptor(selector); break;
            case Register.SS: Ss = LoadDescriptor(selector); break;
            case Register.FS: { ulong keep = Fs.Base; Fs = LoadDescriptor(selector); Fs.Base = (selector & ~3) == 0 ? keep : Fs.Base; break; }
            case Register.GS: { ulong keep = Gs.Base; Gs = LoadDescriptor(selector); Gs.Base = (selector & ~3) == 0 ? keep : Gs.Base; break; }
            default: throw GuestFault.InvalidOpcode();
        }
    }

    private void Push(ulong value, int size = 8)
    {
        if (Bitness != 64)
        {
            PushLegacy(value, size); // SS's base, SP or ESP (Cpu.RealMode)
            return;
        }
        ulong rsp = Registers[Rsp] - (ulong)size;
        WriteLinear(rsp, size, value);
        Registers[Rsp] = rsp;
    }

    private ulong Pop(int size = 8)
    {
        if (Bitness != 64)
        {
            return PopLegacy(size);
        }
        ulong value = ReadLinear(Registers[Rsp], size);
        Registers[Rsp] += (ulong)size;
        return value;
    }

    /// <summary>A privileged instruction: #GP unless the hardware runs at CPL 0 (so a ring-compressed kernel traps).</summary>
    private void RequirePrivilege0()
    {
        if (PrivilegeLevel != 0 || DeprivilegedKernel(sensitiveOnly: false))
        {
            throw GuestFault.GeneralProtection();
        }
    }

    private StopReason? Unimplemented(in Instruction i)
    {
        RecordUnmodelled(i.Mnemonic.ToString(), i.Code.CpuidFeatures());
        throw GuestFault.InvalidOpcode();
    }

    private static readonly ExceptionVector[] NoVectors = [];
}
