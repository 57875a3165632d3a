using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

/// <summary>An exception the guest raised while executing an instruction (a fault, in SDM terms: RIP still points at
/// the instruction). Thrown inside the interpreter and delivered through the guest's IDT by <see cref="Cpu"/>.</summary>
internal sealed class GuestFault(ExceptionVector vector, uint errorCode = 0, bool hasErrorCode = false, ulong faultAddress = 0)
    : Exception
{
    public ExceptionVector Vector { get; } = vector;
    public uint ErrorCode { get; } = errorCode;
    public bool HasErrorCode { get; } = hasErrorCode;
    /// <summary>CR2 for a page fault.</summary>
    public ulong FaultAddress { get; } = faultAddress;

    public static GuestFault InvalidOpcode() => new(ExceptionVector.InvalidOpcode);

    public static GuestFault GeneralProtection(uint selector = 0) => new(ExceptionVector.GeneralProtection, selector, true);
}
