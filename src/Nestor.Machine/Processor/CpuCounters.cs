using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

/// <summary>The scalar counted events of <see cref="CpuCounters"/>, as indices of its vector of counts. The order
/// is the order in which engines report them.</summary>
public enum CpuCounter
{
    /// <summary>Instructions retired.</summary>
    InstructionsRetired,
    /// <summary>Data reads made by instructions (one per access).</summary>
    MemoryReads,
    /// <summary>Data writes made by instructions (one per access).</summary>
    MemoryWrites,
    /// <summary>Instructions decoded (decoded-instruction cache misses).</summary>
    DecodedInstructions,
    /// <summary>Decoded pages dropped because their bytes were written.</summary>
    DecodeCacheInvalidations,
    /// <summary>Decoded pages dropped to keep the decoded-instruction cache within its bounds (not because of a write).</summary>
    DecodeCacheEvictions,
    /// <summary>SYSCALLs executed.</summary>
    SystemCalls,
    /// <summary>INT n delivered, whatever the vector.</summary>
    SoftwareInterrupts,
    /// <summary>External interrupts delivered, whatever the vector.</summary>
    ExternalInterrupts,
    /// <summary>Reads of I/O ports.</summary>
    PortReads,
    /// <summary>Writes of I/O ports.</summary>
    PortWrites,
}

/// <summary>Event counters of one CPU model. The scalar counts are a vector indexed by <see cref="CpuCounter"/> (so
/// that subtraction and reports are loops), with a field-like <c>ref</c> accessor per counter for the interpreter.</summary>
public sealed class CpuCounters
{
    // The names engines report the counters under (the CLI prints them and JSON writes them): a contract, not a
    // spelling of the enum's names ("instructions_decoded" for DecodedInstructions). Null: not reported.
    private static readonly string?[] ReportedNames =
    [
        "instructions_retired", "memory_reads", "memory_writes", "instructions_decoded", "decode_cache_invalidations",
        "decode_cache_evictions", "system_calls", "software_interrupts", "external_interrupts", null, null,
    ];

    // The vector lives inside the object (an inline array), so that a counter is one field access away, as the
    // fields it replaced were; its length is checked against the enum by a test.
    internal const int Length = 11;

    private CpuCounterVector counts;

    /// <summary>Retired instructions by <see cref="InstructionClass"/>.</summary>
    public readonly long[] RetiredByClass = new long[Enum.GetValues<InstructionClass>().Length];
    /// <summary>Exceptions delivered (or attempted), by vector; INT n and external interrupts are counted apart, in
    /// <see cref="SoftwareInterrupts"/> and <see cref="ExternalInterrupts"/>, whatever their vector.</summary>
    public readonly long[] ExceptionsByVector = new long[32];
    /// <summary>Instructions that raised #UD because the model does not implement them, by mnemonic.</summary>
    public readonly Dictionary<string, long> UnimplementedByMnemonic = [];

    /// <summary>The count of one counter, as a reference (read, written or incremented in place).</summary>
    public ref long this[CpuCounter counter]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ref counts[(int)counter];
    }

    /// <summary>Every scalar counter with its count, in <see cref="CpuCounter"/> order.</summary>
    public IEnumerable<(CpuCounter Counter, long Count)> Counts => Enum.GetValues<CpuCounter>().Select(c => (c, this[c]));

    /// <summary>The name an engine reports <paramref name="counter"/> under (snake case), or null if it is not reported.</summary>
    public static string? ReportedName(CpuCounter counter) => ReportedNames[(int)counter];

    /// <summary>Instructions retired.</summary>
    public ref long InstructionsRetired => ref At(CpuCounter.InstructionsRetired);
    /// <summary>Data reads made by instructions (one per access).</summary>
    public ref long MemoryReads => ref At(CpuCounter.MemoryReads);
    /// <summary>Data writes made by instructions (one per access).</summary>
    public ref long MemoryWrites => ref At(CpuCounter.MemoryWrites);
    /// <summary>Instructions decoded (decoded-instruction cache misses).</summary>
    public ref long DecodedInstructions => ref At(CpuCounter.DecodedInstructions);
    /// <summary>Decoded pages dropped because their bytes were written.</summary>
    public ref long DecodeCacheInvalidations => ref At(CpuCounter.DecodeCacheInvalidations);
    /// <summary>Decoded pages dropped to keep the decoded-instruction cache within its bounds (not because of a write).</summary>
    public ref long DecodeCacheEvictions => ref At(CpuCounter.DecodeCacheEvictions);
    /// <summary>SYSCALLs executed.</summary>
    public ref long SystemCalls => ref At(CpuCounter.SystemCalls);
    /// <summary>INT n delivered, whatever the vector.</summary>
    public ref long SoftwareInterrupts => ref At(CpuCounter.SoftwareInterrupts);
    /// <summary>External interrupts delivered, whatever the vector.</summary>
    public ref long ExternalInterrupts => ref At(CpuCounter.ExternalInterrupts);
    /// <summary>Reads of I/O ports.</summary>
    public ref long PortReads => ref At(CpuCounter.PortReads);
    /// <summary>Writes of I/O ports.</summary>
    public ref long PortWrites => ref At(CpuCounter.PortWrites);

    // The interpreter bumps these once per instruction or memory reference: the index is a constant and within
    // the vector by construction (the vector has one slot per enum member), so skip the bounds check and make the
    // accessor as cheap as the field it replaces.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref long At(CpuCounter counter) => ref Unsafe.Add(ref Unsafe.As<CpuCounterVector, long>(ref counts), (int)counter);

    internal void Exception(ExceptionVector v)
    {
        if ((int)v < ExceptionsByVector.Length)
        {
            ExceptionsByVector[(int)v]++;
        }
    }
}

[InlineArray(11)]
internal struct CpuCounterVector
{
    private long element;
}
