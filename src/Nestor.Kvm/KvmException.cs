using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>A KVM system call failed. <see cref="ErrorNumber"/> is the errno the kernel returned.</summary>
public class KvmException : Exception
{
    public KvmException(string operation, int errorNumber, string? advice = null)
        : base(Compose(operation, errorNumber, advice))
    {
        Operation = operation;
        ErrorNumber = errorNumber;
    }

    /// <summary>The KVM operation that failed, e.g. <c>KVM_CREATE_VM</c>.</summary>
    public string Operation { get; }

    /// <summary>The Linux errno value.</summary>
    public int ErrorNumber { get; }

    private static string Compose(string operation, int errorNumber, string? advice) =>
        $"{operation} failed: {LibC.ErrorText(errorNumber)} (errno {errorNumber})" + (advice is null ? "" : $". {advice}");
}

/// <summary>/dev/kvm cannot be used at all on this host: it is missing, not accessible, or speaks another API version.</summary>
public sealed class KvmUnavailableException : KvmException
{
    public KvmUnavailableException(string operation, int errorNumber, string advice)
        : base(operation, errorNumber, advice)
    {
    }
}
