using System.Runtime.InteropServices;
using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>Port I/O exit data (<c>kvm_run.io</c>). For an OUT, <see cref="Data"/> holds what the guest wrote; for an
/// IN, the VMM fills it before the next KVM_RUN. A string instruction (<c>rep outsb</c>) arrives as
/// <see cref="Count"/> items of <see cref="Size"/> bytes.</summary>
public readonly ref struct KvmIoExit
{
    internal KvmIoExit(bool isOut, int size, ushort port, int count, Span<byte> data)
    {
        IsOut = isOut;
        Size = size;
        Port = port;
        Count = count;
        Data = data;
    }

    public bool IsOut { get; }
    public int Size { get; }
    public ushort Port { get; }
    public int Count { get; }
    public Span<byte> Data { get; }
}

/// <summary>MMIO exit data (<c>kvm_run.mmio</c>): an access to a guest-physical address that no memory slot covers.</summary>
public readonly ref struct KvmMmioExit
{
    internal KvmMmioExit(ulong address, bool isWrite, Span<byte> data)
    {
        Address = address;
        IsWrite = isWrite;
        Data = data;
    }

    public ulong Address { get; }
    public bool IsWrite { get; }
    /// <summary>The bytes written, or the buffer to fill for a read (1–8 bytes).</summary>
    public Span<byte> Data { get; }
}

/// <summary>One virtual CPU: register state, CPUID, MSRs and the KVM_RUN loop primitive (api.rst, "vCPU ioctls").</summary>
public sealed unsafe partial class KvmVcpu : IDisposable
{
    private const int ExitReasonOffset = 8;
    private const int ExitDataOffset = 32;
    private const int ImmediateExitOffset = 1;

    private readonly FileDescriptor vcpu;
    private readonly int runSize;
    private byte* run;
    private nuint runThread;
    private volatile bool kickable;

    internal KvmVcpu(KvmVm vm, FileDescriptor vcpu, int id, int runSize)
    {
        Vm = vm;
        this.vcpu = vcpu;
        Id = id;
        this.runSize = runSize;
        nint map;
        try
        {
            map = Nestor.Host.MemoryCalls.MapShared(vcpu.Value, (ulong)runSize);
        }
        catch (Nestor.Host.HostCallException e)
        {
            vcpu.Dispose();
            throw new KvmException("mmap of the kvm_run area", e.ErrorNumber);
        }
        run = (byte*)map;
    }

    public KvmVm Vm { get; }

    /// <summary>The vCPU's index within its VM.</summary>
    public int Id { get; }

    /// <summary>The reason of the last exit (valid after <see cref="Run"/> returned).</summary>
    public KvmExitReason ExitReason => (KvmExitReason)(*(uint*)(Run0 + ExitReasonOffset));

    private byte* Run0 => run != null ? run : throw new ObjectDisposedException(nameof(KvmVcpu));

    public KvmRegisters GetRegisters()
    {
        KvmRegisters r;
        vcpu.Call(Ioctl.GetRegs, &r, "KVM_GET_REGS");
        return r;
    }

    public void SetRegisters(in KvmRegisters registers)
    {
        fixed (KvmRegisters* p = &registers)
        {
            vcpu.Call(Ioctl.SetRegs, p, "KVM_SET_REGS");
        }
    }

    public KvmSpecialRegisters GetSpecialRegisters()
    {
        KvmSpecialRegisters r;
        vcpu.Call(Ioctl.GetSregs, &r, "KVM_GET_SREGS");
        return r;
    }

    public void SetSpecialRegisters(in KvmSpecialRegisters registers)
    {
        fixed (KvmSpecialRegisters* p = &registers)
        {
            vcpu.Call(Ioctl.SetSregs, p, "KVM_SET_SREGS");
        }
    }

    public KvmFpu GetFpu()
    {
        KvmFpu f;
        vcpu.Call(Ioctl.GetFpu, &f, "KVM_GET_FPU");
        return f;
    }

    public void SetFpu(in KvmFpu fpu)
    {
        fixed (KvmFpu* p = &fpu)
        {
            vcpu.Call(Ioctl.SetFpu, p, "KVM_SET_FPU");
        }
    }

    /// <summary>Reads the MSRs named in <paramref name="entries"/> (their <see cref="KvmMsrEntry.Data"/> is filled in).
    /// Returns how many were read; KVM stops at the first MSR it does not know.</summary>
    public int GetMsrs(Span<KvmMsrEntry> entries) => TransferMsrs(Ioctl.GetMsrs, entries, "KVM_GET_MSRS");

    /// <summary>Writes the given MSRs. Returns how many were written; KVM stops at the first it refuses.</summary>
    public int SetMsrs(ReadOnlySpan<KvmMsrEntry> entries) =>
        TransferMsrs(Ioctl.SetMsrs, MemoryMarshal.CreateSpan(ref MemoryMarshal.GetReference(entries), entries.Length), "KVM_SET_MSRS");

    private int TransferMsrs(nuint request, Span<KvmMsrEntry> entries, string operation)
    {
        int bytes = 8 + entries.Length * sizeof(KvmMsrEntry);
        byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            *(uint*)buffer = (uint)entries.Length;
            var native = new Span<KvmMsrEntry>(buffer + 8, entries.Length);
            entries.CopyTo(native);
            int done = vcpu.Call(request, buffer, operation);
            native.CopyTo(entries);
            return done;
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>Sets the CPUID leaves the guest sees (KVM_SET_CPUID2).</summary>
    public void SetCpuid(ReadOnlySpan<KvmCpuidEntry> entries)
    {
        int bytes = 8 + entries.Length * sizeof(KvmCpuidEntry);
        byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            *(uint*)buffer = (uint)entries.Length;
            entries.CopyTo(new Span<KvmCpuidEntry>(buffer + 8, entries.Length));
            vcpu.Call(Ioctl.SetCpuid2, buffer, "KVM_SET_CPUID2");
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>Translates a guest linear address through the vCPU's current page tables (KVM_TRANSLATE).
    /// Returns null when the address is not mapped.</summary>
    public ulong? Translate(ulong linearAddress)
    {
        var t = new KvmTranslation { LinearAddress = linearAddress };
        if (LibC.Ioctl(vcpu.Value, Ioctl.Translate, &t) < 0 || t.Valid == 0)
        {
            return null;
        }
        return t.PhysicalAddress;
    }

    /// <summary>Opens this vCPU's binary statistics (KVM_GET_STATS_FD on the vCPU fd).</summary>
    public KvmStatistics OpenStatistics() =>
        new(new FileDescriptor(vcpu.Call(Ioctl.GetStatsFd, 0, "KVM_GET_STATS_FD (vCPU)")));

    /// <summary>Enters the guest until the next exit that KVM hands to user space (KVM_RUN). Returns the exit reason;
    /// <see cref="KvmExitReason.Interrupted"/> when a signal or <see cref="Kick"/> ended the run early.</summary>
    public KvmExitReason Run()
    {
        int result = LibC.Ioctl(vcpu.Value, Ioctl.Run, 0);
        if (result < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is LibC.EINTR or LibC.EAGAIN)
            {
                ConsumeKick();
                return KvmExitReason.Interrupted;
            }
            throw new KvmException("KVM_RUN", errno, errno == LibC.EFAULT
                ? "KVM could not access guest memory; a memory slot's host mapping may be gone"
                : null);
        }
        return ExitReason;
    }

    /// <summary>The port I/O data of the last exit (valid when <see cref="ExitReason"/> is <see cref="KvmExitReason.Io"/>).</summary>
    public KvmIoExit IoExit
    {
        get
        {
            byte* e = Run0 + ExitDataOffset;
            int size = e[1];
            int count = (int)*(uint*)(e + 4);
            ulong dataOffset = *(ulong*)(e + 8);
            long length = (long)size * count;
            if (dataOffset + (ulong)length > (ulong)runSize)
            {
                throw new KvmException("KVM_EXIT_IO", LibC.EINVAL, "KVM reported I/O data outside the kvm_run area");
            }
            return new KvmIoExit(e[0] == 1, size, *(ushort*)(e + 2), count, new Span<byte>(Run0 + dataOffset, (int)length));
        }
    }

    /// <summary>The MMIO data of the last exit (valid when <see cref="ExitReason"/> is <see cref="KvmExitReason.Mmio"/>).</summary>
    public KvmMmioExit MmioExit
    {
        get
        {
            byte* e = Run0 + ExitDataOffset;
            uint length = Math.Min(*(uint*)(e + 16), 8u);
            return new KvmMmioExit(*(ulong*)e, e[20] != 0, new Span<byte>(e + 8, (int)length));
        }
    }

    /// <summary>Sub-reason and auxiliary data of a <see cref="KvmExitReason.InternalError"/> exit.</summary>
    public (KvmInternalError Suberror, ulong[] Data) InternalError
    {
        get
        {
            byte* e = Run0 + ExitDataOffset;
            uint count = Math.Min(*(uint*)(e + 4), 16u);
            return ((KvmInternalError)(*(uint*)e), new ReadOnlySpan<ulong>(e + 8, (int)count).ToArray());
        }
    }

    /// <summary>The hardware's entry-failure reason of a <see cref="KvmExitReason.FailEntry"/> exit.</summary>
    public ulong FailEntryReason => *(ulong*)(Run0 + ExitDataOffset);

    /// <summary>The hardware exit reason of a <see cref="KvmExitReason.Unknown"/> exit.</summary>
    public ulong UnknownExitReason => *(ulong*)(Run0 + ExitDataOffset);

    /// <summary>The event type of a <see cref="KvmExitReason.SystemEvent"/> exit (1 shutdown, 2 reset, 3 crash).</summary>
    public uint SystemEventType => *(uint*)(Run0 + ExitDataOffset);

    /// <summary>Makes the calling thread the one that runs this vCPU and can be kicked out of KVM_RUN by
    /// <see cref="Kick"/>. SIGUSR2 is blocked on the thread but unblocked inside KVM_RUN (KVM_SET_SIGNAL_MASK), so a
    /// kick makes KVM_RUN return EINTR and leaves the signal pending, where it is consumed without any signal
    /// handler running (api.rst §4.21; the same scheme keeps the .NET runtime's own handlers out of the way).</summary>
    public void BindToCurrentThread()
    {
        ulong* set = stackalloc ulong[16];
        ulong* old = stackalloc ulong[16];
        new Span<ulong>(set, 16).Clear();
        set[0] = 1UL << (LibC.SIGUSR2 - 1);
        if (LibC.PthreadSigmask(LibC.SIG_BLOCK, set, old) != 0)
        {
            throw new KvmException("pthread_sigmask", LibC.EINVAL);
        }
        // The mask in force during KVM_RUN: the thread's previous mask with SIGUSR2 open.
        byte* mask = stackalloc byte[12];
        *(uint*)mask = 8; // the kernel's sigset_t is 64 bits on x86-64
        *(ulong*)(mask + 4) = old[0] & ~(1UL << (LibC.SIGUSR2 - 1));
        vcpu.Call(Ioctl.SetSignalMask, mask, "KVM_SET_SIGNAL_MASK");
        runThread = LibC.PthreadSelf();
        kickable = true;
    }

    /// <summary>Makes the vCPU leave KVM_RUN soon with <see cref="KvmExitReason.Interrupted"/>. Safe from any thread,
    /// after <see cref="BindToCurrentThread"/>; a kick that arrives outside KVM_RUN ends the next KVM_RUN at once.</summary>
    public void Kick()
    {
        if (run == null || !kickable)
        {
            return;
        }
        Volatile.Write(ref run[ImmediateExitOffset], 1);
        LibC.PthreadKill(runThread, LibC.SIGUSR2);
    }

    private void ConsumeKick()
    {
        run[ImmediateExitOffset] = 0;
        if (!kickable)
        {
            return;
        }
        ulong* set = stackalloc ulong[16];
        new Span<ulong>(set, 16).Clear();
        set[0] = 1UL << (LibC.SIGUSR2 - 1);
        var zero = new LibC.Timespec();
        while (LibC.Sigtimedwait(set, null, &zero) > 0)
        {
        }
    }

    public void Dispose()
    {
        if (run != null)
        {
            kickable = false;
            Nestor.Host.MemoryCalls.Unmap((nint)run, (ulong)runSize);
            run = null;
        }
        vcpu.Dispose();
    }
}
