using System.Buffers.Binary;
using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>The ioctls that read and write the vCPU state beyond the registers (api.rst §4.42 KVM_GET_XSAVE,
/// §4.57 KVM_GET_LAPIC, §4.31 KVM_GET_VCPU_EVENTS, §4.39 KVM_GET_CLOCK), numbered as linux/kvm.h defines them. They
/// live here, not in <see cref="Ioctl"/>, so that the vCPU-state binding is one file.</summary>
internal static class StateIoctl
{
    private static nuint Encode(uint direction, uint number, uint size) => (nuint)((direction << 30) | (size << 16) | (0xAEu << 8) | number);

    private const uint Write = 1, Read = 2;

    public static readonly nuint SetClock = Encode(Write, 0x7B, KvmVcpu.ClockBytes);
    public static readonly nuint GetClock = Encode(Read, 0x7C, KvmVcpu.ClockBytes);
    public static readonly nuint GetLapic = Encode(Read, 0x8E, KvmVcpu.LapicBytes);
    public static readonly nuint SetLapic = Encode(Write, 0x8F, KvmVcpu.LapicBytes);
    public static readonly nuint GetVcpuEvents = Encode(Read, 0x9F, KvmVcpu.VcpuEventsBytes);
    public static readonly nuint SetVcpuEvents = Encode(Write, 0xA0, KvmVcpu.VcpuEventsBytes);
    public static readonly nuint GetXsave = Encode(Read, 0xA4, KvmVcpu.XsaveBytes);
    public static readonly nuint SetXsave = Encode(Write, 0xA5, KvmVcpu.XsaveBytes);
    // KVM_GET_XSAVE2 keeps struct kvm_xsave's 4096 in its number but writes KVM_CAP_XSAVE2's size (api.rst §4.136).
    public static readonly nuint GetXsave2 = Encode(Read, 0xCF, KvmVcpu.XsaveBytes);
    public static readonly nuint GetXcrs = Encode(Read, 0xA6, KvmVcpu.XcrsBytes);
    public static readonly nuint SetXcrs = Encode(Write, 0xA7, KvmVcpu.XcrsBytes);
}

// The vCPU's state that KVM_GET_REGS/SREGS do not hold, as the kernel's own byte layouts: a snapshot stores them as
// they are and gives them back to the same kind of host, as QEMU's migration does with the same ioctls.
public sealed unsafe partial class KvmVcpu
{
    /// <summary>sizeof(struct kvm_xsave): the legacy XSAVE area's 4 KiB (asm/kvm.h).</summary>
    public const int XsaveBytes = 4096;

    /// <summary>sizeof(struct kvm_lapic_state): the local APIC's register page as KVM keeps it (KVM_APIC_REG_SIZE).</summary>
    public const int LapicBytes = 0x400;

    /// <summary>sizeof(struct kvm_vcpu_events).</summary>
    public const int VcpuEventsBytes = 64;

    /// <summary>sizeof(struct kvm_xcrs): a count, flags, 16 (index, value) pairs and padding.</summary>
    public const int XcrsBytes = 392;

    /// <summary>sizeof(struct kvm_clock_data).</summary>
    public const int ClockBytes = 48;

    /// <summary>The vCPU's XSAVE area (x87, SSE, AVX and the other components the host's CPUID leaf 0xD lays out):
    /// KVM_GET_XSAVE2 with <paramref name="size"/> bytes when KVM_CAP_XSAVE2 gives more than 4096, else KVM_GET_XSAVE.</summary>
    public byte[] GetXsave(int size = XsaveBytes)
    {
        var area = new byte[Math.Max(size, XsaveBytes)];
        fixed (byte* p = area)
        {
            vcpu.Call(area.Length > XsaveBytes ? StateIoctl.GetXsave2 : StateIoctl.GetXsave, p, "KVM_GET_XSAVE");
        }
        return area;
    }

    /// <summary>Loads an XSAVE area read by <see cref="GetXsave"/> (KVM_SET_XSAVE reads KVM_CAP_XSAVE2's size).</summary>
    public void SetXsave(ReadOnlySpan<byte> area)
    {
        if (area.Length < XsaveBytes)
        {
            throw new ArgumentException($"an XSAVE area is at least {XsaveBytes} bytes, not {area.Length}");
        }
        fixed (byte* p = area)
        {
            vcpu.Call(StateIoctl.SetXsave, p, "KVM_SET_XSAVE");
        }
    }

    /// <summary>The extended control registers (XCR0: which state components XSAVE manages, SDM Vol. 1 §13.3) as
    /// struct kvm_xcrs (KVM_GET_XCRS).</summary>
    public byte[] GetXcrs() => GetBlob(StateIoctl.GetXcrs, XcrsBytes, "KVM_GET_XCRS");

    /// <summary>Loads the extended control registers (KVM_SET_XCRS), before the XSAVE area whose components they enable.</summary>
    public void SetXcrs(ReadOnlySpan<byte> xcrs) => SetBlob(StateIoctl.SetXcrs, xcrs, XcrsBytes, "KVM_SET_XCRS");

    /// <summary>The in-kernel local APIC's registers (KVM_GET_LAPIC; needs KVM_CREATE_IRQCHIP before the vCPU).</summary>
    public byte[] GetLapic() => GetBlob(StateIoctl.GetLapic, LapicBytes, "KVM_GET_LAPIC");

    /// <summary>Loads the in-kernel local APIC's registers (KVM_SET_LAPIC).</summary>
    public void SetLapic(ReadOnlySpan<byte> registers) => SetBlob(StateIoctl.SetLapic, registers, LapicBytes, "KVM_SET_LAPIC");

    /// <summary>Pending and injected exceptions, interrupts and NMIs, the interrupt shadow, NMI masking, SIPI and SMM
    /// state (KVM_GET_VCPU_EVENTS): what is in flight between two instructions.</summary>
    public KvmVcpuEvents GetVcpuEvents() => new(GetBlob(StateIoctl.GetVcpuEvents, VcpuEventsBytes, "KVM_GET_VCPU_EVENTS"));

    /// <summary>Loads events read by <see cref="GetVcpuEvents"/> (KVM_SET_VCPU_EVENTS). The flags KVM returned say
    /// which fields are valid (KVM_VCPUEVENT_VALID_*), so the structure goes back as it came.</summary>
    public void SetVcpuEvents(KvmVcpuEvents events) => SetBlob(StateIoctl.SetVcpuEvents, events.Bytes, VcpuEventsBytes, "KVM_SET_VCPU_EVENTS");

    private byte[] GetBlob(nuint request, int size, string operation)
    {
        var bytes = new byte[size];
        fixed (byte* p = bytes)
        {
            vcpu.Call(request, p, operation);
        }
        return bytes;
    }

    private void SetBlob(nuint request, ReadOnlySpan<byte> bytes, int size, string operation)
    {
        if (bytes.Length != size)
        {
            throw new ArgumentException($"{operation} takes {size} bytes, not {bytes.Length}");
        }
        fixed (byte* p = bytes)
        {
            vcpu.Call(request, p, operation);
        }
    }
}

/// <summary>struct kvm_vcpu_events as bytes, with the fields a VMM looks at (asm/kvm.h; offsets from its layout).</summary>
public sealed class KvmVcpuEvents(byte[] bytes)
{
    /// <summary>KVM_VCPUEVENT_VALID_SHADOW: <see cref="InterruptShadow"/> is meaningful.</summary>
    public const uint ValidShadow = 0x4;

    /// <summary>The structure's 64 bytes.</summary>
    public byte[] Bytes { get; } = bytes.Length == KvmVcpu.VcpuEventsBytes ? bytes : throw new ArgumentException("struct kvm_vcpu_events is 64 bytes");

    /// <summary>exception.injected: an exception KVM is delivering.</summary>
    public bool ExceptionInjected => Bytes[0] != 0;

    /// <summary>exception.nr.</summary>
    public byte ExceptionVector => Bytes[1];

    /// <summary>interrupt.injected: an external interrupt being delivered.</summary>
    public bool InterruptInjected => Bytes[8] != 0;

    /// <summary>interrupt.shadow: the STI / MOV SS blocking of SDM Vol. 3C §25.4.2 (KVM_X86_SHADOW_INT_MOV_SS 1, _STI 2).</summary>
    public byte InterruptShadow { get => Bytes[11]; set => Bytes[11] = value; }

    /// <summary>nmi.injected.</summary>
    public bool NmiInjected => Bytes[12] != 0;

    /// <summary>nmi.pending.</summary>
    public bool NmiPending => Bytes[13] != 0;

    /// <summary>nmi.masked: NMIs blocked until the next IRET (SDM Vol. 3A §6.7.1).</summary>
    public bool NmiMasked { get => Bytes[14] != 0; set => Bytes[14] = value ? (byte)1 : (byte)0; }

    /// <summary>flags: which fields are valid (KVM_VCPUEVENT_VALID_*).</summary>
    public uint Flags { get => BinaryPrimitives.ReadUInt32LittleEndian(Bytes.AsSpan(20)); set => BinaryPrimitives.WriteUInt32LittleEndian(Bytes.AsSpan(20), value); }
}

// kvmclock: the VM-wide clock in nanoseconds that KVM's paravirtual clock pages derive from.
public sealed partial class KvmVm
{
    /// <summary>The kvmclock's value in nanoseconds (KVM_GET_CLOCK's <c>clock</c>).</summary>
    public unsafe ulong GetClock()
    {
        byte* data = stackalloc byte[KvmVcpu.ClockBytes];
        new Span<byte>(data, KvmVcpu.ClockBytes).Clear();
        vm.Call(StateIoctl.GetClock, data, "KVM_GET_CLOCK");
        return *(ulong*)data;
    }

    /// <summary>Sets the kvmclock (KVM_SET_CLOCK with no flags: <paramref name="nanoseconds"/> is the value from now
    /// on), as a restore does so that the guest's clock continues from the saved one instead of jumping.</summary>
    public unsafe void SetClock(ulong nanoseconds)
    {
        byte* data = stackalloc byte[KvmVcpu.ClockBytes];
        new Span<byte>(data, KvmVcpu.ClockBytes).Clear();
        *(ulong*)data = nanoseconds;
        vm.Call(StateIoctl.SetClock, data, "KVM_SET_CLOCK");
    }
}
