using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>A host system call failed; <see cref="ErrorNumber"/> is the errno it returned.</summary>
public sealed class HostCallException : Exception
{
    public HostCallException(string operation, int errorNumber)
        : base($"{operation} failed: {LibC.ErrorText(errorNumber)} (errno {errorNumber})")
    {
        Operation = operation;
        ErrorNumber = errorNumber;
    }

    /// <summary>What was attempted, e.g. <c>mmap of 4096 bytes</c>.</summary>
    public string Operation { get; }

    /// <summary>The Linux errno value.</summary>
    public int ErrorNumber { get; }

    /// <summary>Throws with the calling thread's last errno.</summary>
    internal static HostCallException LastError(string operation) =>
        new(operation, System.Runtime.InteropServices.Marshal.GetLastPInvokeError());
}
