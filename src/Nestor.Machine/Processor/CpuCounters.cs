using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

/// <summary>Event counters of one CPU model.</summary>
public sealed class CpuCounters
{
    public long InstructionsRetired;
    /// <summary>Retired instructions by <see cref="InstructionClass"/>.</summary>
    public readonly long[] RetiredByClass = new long[Enum.GetValues<InstructionClass>().Length];
    public long MemoryReads;
    public long MemoryWrites;
    public long DecodedInstructions;
    public long DecodeCacheInvalidations;
    /// <summary>Decoded pages dropped to keep the decoded-instruction cache within its bounds (not because of a write).</summary>
    public long DecodeCacheEvictions;
    /// <summary>Exceptions delivered (or attempted), by vector; INT n and external interrupts are counted apart, in
    /// <see cref="SoftwareInterrupts"/> and <see cref="ExternalInterrupts"/>, whatever their vector.</summary>
    public readonly long[] ExceptionsByVector = new long[32];
    public long SoftwareInterrupts;
    public long ExternalInterrupts;
    public long SystemCalls;
    public long PortReads;
    public long PortWrites;
    /// <summary>Instructions that raised #UD because the model does not implement them, by mnemonic.</summary>
    public readonly Dictionary<string, long> UnimplementedByMnemonic = [];

    internal void Exception(ExceptionVector v)
    {
        if ((int)v < ExceptionsByVector.Length)
        {
            ExceptionsByVector[(int)v]++;
        }
    }
}
