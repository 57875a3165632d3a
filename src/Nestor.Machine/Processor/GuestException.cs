using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

/// <summary>An exception a guest instruction raised, as data (for a VMM that emulated the instruction and must decide
/// what the guest sees).</summary>
/// <param name="FaultAddress">CR2 for a page fault.</param>
public readonly record struct GuestException(ExceptionVector Vector, uint ErrorCode, bool HasErrorCode, ulong FaultAddress);
