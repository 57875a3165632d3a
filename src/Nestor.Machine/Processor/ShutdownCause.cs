using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

/// <summary>What kind of event the CPU was delivering through the IDT.</summary>
public enum DeliveredEvent : byte
{
    /// <summary>An exception an instruction raised (a fault or a trap such as INT3), or one a VMM injected.</summary>
    Exception,
    /// <summary>INT n.</summary>
    SoftwareInterrupt,
    /// <summary>An interrupt from the local APIC.</summary>
    ExternalInterrupt,
}

/// <summary>The start of the cascade that shut the CPU down (SDM Vol. 3A §6.15, Interrupt 8): the event the CPU was
/// delivering when a fault got in the way, and that fault. What followed, a double fault that could not be
/// delivered either, is the same for every triple fault; this is what differs.</summary>
/// <param name="Vector">The event's vector.</param>
/// <param name="Kind">Exception, INT n or external interrupt.</param>
/// <param name="ErrorCode">The error code it carried, if any.</param>
/// <param name="Rip">The instruction that raised it, or for an external interrupt the one it interrupted.</param>
/// <param name="FaultAddress">For a page fault, the linear address (CR2).</param>
/// <param name="DeliveryFault">The exception its delivery raised (an IDT entry beyond the limit or not present, a
/// stack that is not mapped, …); null when the first event was itself the double fault.</param>
/// <param name="DeliveryErrorCode">That exception's error code (for a #GP or #NP on an IDT entry: vector × 8 + 2).</param>
public readonly record struct ShutdownCause(ExceptionVector Vector, DeliveredEvent Kind, uint? ErrorCode, ulong Rip,
    ulong? FaultAddress, ExceptionVector? DeliveryFault, uint? DeliveryErrorCode)
{
    /// <summary>For messages: "#PF (page fault) at rip=0x1000, error code 0x2, address 0x0".</summary>
    public string Describe()
    {
        string what = Kind switch
        {
            DeliveredEvent.SoftwareInterrupt => $"INT 0x{(int)Vector:x}",
            DeliveredEvent.ExternalInterrupt => $"external interrupt (vector 0x{(int)Vector:x})",
            _ => ExceptionNames.Describe(Vector),
        };
        string text = Kind == DeliveredEvent.ExternalInterrupt ? $"{what} at rip=0x{Rip:x}" : $"{what} raised at rip=0x{Rip:x}";
        if (ErrorCode is { } e)
        {
            text += $", error code 0x{e:x}";
        }
        if (FaultAddress is { } a)
        {
            text += $", address 0x{a:x}";
        }
        return text;
    }

    /// <summary>For messages: "#GP (general protection), error code 0x72 (IDT entry 14)", or null.</summary>
    public string? DescribeDeliveryFault()
    {
        if (DeliveryFault is not { } fault)
        {
            return null;
        }
        string text = ExceptionNames.Describe(fault);
        if (DeliveryErrorCode is { } e)
        {
            text += $", error code 0x{e:x}";
            if (fault != ExceptionVector.PageFault && (e & 2) != 0)
            {
                text += $" (IDT entry {e >> 3})"; // the IDT bit of a selector error code (SDM Vol. 3A §6.13)
            }
        }
        return text;
    }
}

/// <summary>The last instruction the machine does not model that a guest executed: the CPU raised #UD for it, as a
/// processor without the feature does.</summary>
/// <param name="Mnemonic">Iced's mnemonic ("Fld", "Movaps", "Sysenter"), or what was not modelled.</param>
/// <param name="Rip">Its address.</param>
/// <param name="Feature">The CPUID feature it belongs to ("FPU", "SSE2", "AVX", "XSAVE", "SEP"), if any.</param>
/// <param name="Count">Unmodelled instructions executed so far in all, this one included.</param>
public readonly record struct UnmodelledInstruction(string Mnemonic, ulong Rip, string? Feature, long Count);

/// <summary>The SDM's names of the architectural exceptions (Vol. 3A Table 6-1).</summary>
public static class ExceptionNames
{
    /// <summary>"#PF", "#GP", …, or "vector 22" for one without a mnemonic.</summary>
    public static string Mnemonic(ExceptionVector vector) => vector switch
    {
        ExceptionVector.DivideError => "#DE",
        ExceptionVector.Debug => "#DB",
        ExceptionVector.NonMaskableInterrupt => "NMI",
        ExceptionVector.Breakpoint => "#BP",
        ExceptionVector.Overflow => "#OF",
        ExceptionVector.BoundRangeExceeded => "#BR",
        ExceptionVector.InvalidOpcode => "#UD",
        ExceptionVector.DeviceNotAvailable => "#NM",
        ExceptionVector.DoubleFault => "#DF",
        ExceptionVector.InvalidTss => "#TS",
        ExceptionVector.SegmentNotPresent => "#NP",
        ExceptionVector.StackFault => "#SS",
        ExceptionVector.GeneralProtection => "#GP",
        ExceptionVector.PageFault => "#PF",
        ExceptionVector.FloatingPointError => "#MF",
        ExceptionVector.AlignmentCheck => "#AC",
        ExceptionVector.MachineCheck => "#MC",
        ExceptionVector.SimdFloatingPoint => "#XM",
        ExceptionVector.Virtualization => "#VE",
        ExceptionVector.ControlProtection => "#CP",
        _ => $"vector {(int)vector}",
    };

    /// <summary>"#PF (page fault)".</summary>
    public static string Describe(ExceptionVector vector)
    {
        string? name = vector switch
        {
            ExceptionVector.DivideError => "divide error",
            ExceptionVector.Debug => "debug",
            ExceptionVector.NonMaskableInterrupt => "non-maskable interrupt",
            ExceptionVector.Breakpoint => "breakpoint",
            ExceptionVector.Overflow => "overflow",
            ExceptionVector.BoundRangeExceeded => "BOUND range exceeded",
            ExceptionVector.InvalidOpcode => "invalid opcode",
            ExceptionVector.DeviceNotAvailable => "device not available",
            ExceptionVector.DoubleFault => "double fault",
            ExceptionVector.InvalidTss => "invalid TSS",
            ExceptionVector.SegmentNotPresent => "segment not present",
            ExceptionVector.StackFault => "stack-segment fault",
            ExceptionVector.GeneralProtection => "general protection",
            ExceptionVector.PageFault => "page fault",
            ExceptionVector.FloatingPointError => "x87 floating-point error",
            ExceptionVector.AlignmentCheck => "alignment check",
            ExceptionVector.MachineCheck => "machine check",
            ExceptionVector.SimdFloatingPoint => "SIMD floating-point",
            ExceptionVector.Virtualization => "virtualization exception",
            ExceptionVector.ControlProtection => "control protection",
            _ => null,
        };
        return name is null ? Mnemonic(vector) : $"{Mnemonic(vector)} ({name})";
    }
}
