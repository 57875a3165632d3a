using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Engines;

/// <summary>What the software machine's outcome messages say about how the guest stopped: which exception started a
/// triple fault, and which instruction the machine does not model, if the guest ran into one.</summary>
public static class SimStopMessages
{
    /// <summary>What the triple-fault message (<see cref="Exits.VmOutcomes.TripleFault"/>) says about the cascade: the event
    /// whose delivery failed first, the fault that got in the way, and, when that event was the #UD of an instruction
    /// the machine does not model, that instruction (<c>Cause</c>); an earlier unmodelled instruction
    /// (<c>Note</c>).</summary>
    public static (string? Cause, string? Note) TripleFault(Cpu cpu)
    {
        var unmodelled = cpu.LastUnmodelledInstruction;
        string? start;
        string? note = null;
        if (cpu.ShutdownCause is not { } cause)
        {
            start = null;
        }
        else
        {
            string? deliveryFault = cause.DescribeDeliveryFault();
            string failed = deliveryFault is null ? "could not be delivered" : $"could not be delivered (its delivery raised {deliveryFault})";
            if (unmodelled is { } u && cause.Kind == DeliveredEvent.Exception && cause.Vector == ExceptionVector.InvalidOpcode && cause.Rip == u.Rip)
            {
                start = $"{Unmodelled(u)}; the CPU raised #UD for it, as a processor without it does, and the #UD {failed}";
            }
            else
            {
                start = $"{cause.Describe()} {failed}";
                if (unmodelled is { } earlier)
                {
                    note = $"Before that, the guest executed {Unmodelled(earlier)} (it raised #UD).";
                }
            }
        }
        return (start, note);
    }

    /// <summary>A sentence naming the last instruction the machine does not model that the guest executed, for the
    /// end of another message (a guest stopped while looping on its #UD, say); null if there was none.</summary>
    public static string? UnmodelledNote(Cpu cpu) => cpu.LastUnmodelledInstruction is { } u
        ? $"The guest executed {Unmodelled(u)}{(u.Count > 1 ? $" ({u.Count:N0} such instructions raised #UD in all)" : "")}."
        : null;

    /// <summary>"fld1 at rip=0x100000 (an x87 FPU instruction), which is not modelled by the software machine".</summary>
    private static string Unmodelled(UnmodelledInstruction u)
    {
        string what = u.Feature switch
        {
            null => "",
            "FPU" => " (an x87 FPU instruction)",
            "SEP" => " (SYSENTER/SYSEXIT)",
            var f => $" ({f})",
        };
        return $"{u.Mnemonic.ToLowerInvariant()} at rip=0x{u.Rip:x}{what}, which is not modelled by the software machine";
    }
}
