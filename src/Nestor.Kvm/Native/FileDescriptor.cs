using System.Runtime.InteropServices;

namespace Nestor.Kvm.Native;

/// <summary>An owned Linux file descriptor, closed exactly once.</summary>
internal sealed class FileDescriptor : SafeHandle
{
    public FileDescriptor(int fd)
        : base(-1, ownsHandle: true)
    {
        SetHandle(fd);
    }

    public override bool IsInvalid => handle < 0;

    /// <summary>The raw descriptor for an ioctl. Callers keep this object alive across the call.</summary>
    public int Value => IsClosed ? throw new ObjectDisposedException("KVM file descriptor") : (int)handle;

    protected override bool ReleaseHandle() => LibC.Close((int)handle) == 0;

    /// <summary>Issues an ioctl with an integer argument; throws <see cref="KvmException"/> on failure.</summary>
    public int Call(nuint request, nint argument, string operation)
    {
        int result = LibC.Ioctl(Value, request, argument);
        if (result < 0)
        {
            throw new KvmException(operation, Marshal.GetLastPInvokeError());
        }
        return result;
    }

    /// <summary>Issues an ioctl with a pointer argument; throws <see cref="KvmException"/> on failure.</summary>
    public unsafe int Call(nuint request, void* argument, string operation)
    {
        int result = LibC.Ioctl(Value, request, argument);
        if (result < 0)
        {
            throw new KvmException(operation, Marshal.GetLastPInvokeError());
        }
        return result;
    }
}
