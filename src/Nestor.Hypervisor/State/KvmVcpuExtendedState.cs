using System.Runtime.InteropServices;
using Nestor.Hypervisor.Persistence;
using Nestor.Kvm;

namespace Nestor.Hypervisor.State;

/// <summary>What a KVM vCPU holds beyond <see cref="VcpuState"/> (the registers, segments and SYSCALL MSRs the VM's
/// <c>CPU0</c> section keeps): the XSAVE area (x87, SSE, AVX; the legacy FPU area where KVM has no XSAVE) with the
/// XCRs, the MSRs the guest changed, the in-kernel local APIC, the events in flight (KVM_GET_VCPU_EVENTS) and the
/// kvmclock. The KVM engine reads it after each run and loads it before the next, so a second run, or a snapshot
/// restored into a new KVM VM, continues with it; it is the KVM engine's snapshot section <c>KVMS</c>, as the VMM's
/// state is the software machine's. Each part is kept as the kernel's own bytes, as QEMU's migration stream does with
/// the same ioctls, and is loaded back only into a KVM of the same layout (a snapshot of one host kind).</summary>
public sealed class KvmVcpuExtendedState : ISnapshottable
{
    /// <summary>MSRs the <c>CPU0</c> section already holds, set by the engine from <see cref="VcpuState"/>: EFER,
    /// STAR, LSTAR, CSTAR, SFMASK, FS.base, GS.base, KERNEL_GS_BASE (SDM Vol. 4, Table 2-2).</summary>
    private static readonly HashSet<uint> InRegisters = [0xC000_0080, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0100, 0xC000_0101, 0xC000_0102];

    /// <summary>How the floating-point state was read.</summary>
    public enum FloatingPoint : byte
    {
        /// <summary>Not read (no run yet).</summary>
        None,

        /// <summary>KVM_GET_XSAVE (or XSAVE2): the XSAVE area in the host's CPUID leaf 0xD layout.</summary>
        Xsave,

        /// <summary>KVM_GET_FPU: struct kvm_fpu, where KVM has no KVM_CAP_XSAVE.</summary>
        Fpu,
    }

    /// <summary>How <see cref="FloatingPointArea"/> was read.</summary>
    public FloatingPoint FloatingPointKind { get; private set; }

    /// <summary>The XSAVE area or struct kvm_fpu.</summary>
    public byte[] FloatingPointArea { get; private set; } = [];

    /// <summary>struct kvm_xcrs, or empty without KVM_CAP_XCRS.</summary>
    public byte[] ExtendedControlRegisters { get; private set; } = [];

    /// <summary>The MSRs of KVM_GET_MSR_INDEX_LIST whose value differs from a fresh vCPU's (and that the CPU0
    /// section does not hold): the ones the guest (or time, for IA32_TSC) changed.</summary>
    public IReadOnlyList<KvmMsrEntry> Msrs { get; private set; } = [];

    /// <summary>The in-kernel local APIC's registers (only with KVM_CREATE_IRQCHIP), or empty.</summary>
    public byte[] Lapic { get; private set; } = [];

    /// <summary>struct kvm_vcpu_events, or empty without KVM_CAP_VCPU_EVENTS.</summary>
    public byte[] Events { get; private set; } = [];

    /// <summary>The kvmclock in nanoseconds, if KVM has KVM_CAP_ADJUST_CLOCK.</summary>
    public ulong? Clock { get; private set; }

    /// <summary>True once a run (or a snapshot) gave it state to load.</summary>
    public bool HasState => FloatingPointKind != FloatingPoint.None;

    /// <summary>The MSRs worth comparing: KVM's list without those the registers section holds.</summary>
    public static uint[] Candidates(KvmSystem system) => [.. system.GetMsrIndexList().Where(i => !InRegisters.Contains(i))];

    /// <summary>Reads each of <paramref name="indices"/> on its own (KVM_GET_MSRS stops at the first it cannot read);
    /// those it cannot read are left out.</summary>
    public static Dictionary<uint, ulong> ReadMsrs(KvmVcpu vcpu, uint[] indices)
    {
        var values = new Dictionary<uint, ulong>();
        Span<KvmMsrEntry> one = stackalloc KvmMsrEntry[1];
        foreach (uint index in indices)
        {
            one[0] = new KvmMsrEntry(index, 0);
            try
            {
                if (vcpu.GetMsrs(one) == 1)
                {
                    values[index] = one[0].Data;
                }
            }
            catch (KvmException)
            {
                // Listed but not readable for this vCPU (e.g. a PMU MSR without a guest PMU): not state it has.
            }
        }
        return values;
    }

    /// <summary>Reads the vCPU's state after a run; <paramref name="fresh"/> are the MSRs as the vCPU had them before
    /// anything was loaded into it.</summary>
    public void Capture(KvmVm vm, KvmVcpu vcpu, bool inKernelApic, Dictionary<uint, ulong> fresh)
    {
        var system = vm.System;
        if (system.CheckCapability(KvmCapability.Xsave) > 0)
        {
            FloatingPointArea = vcpu.GetXsave(vm.CheckCapability(KvmCapability.Xsave2));
            FloatingPointKind = FloatingPoint.Xsave;
        }
        else
        {
            var fpu = vcpu.GetFpu();
            FloatingPointArea = MemoryMarshal.AsBytes(new ReadOnlySpan<KvmFpu>(ref fpu)).ToArray();
            FloatingPointKind = FloatingPoint.Fpu;
        }
        ExtendedControlRegisters = system.CheckCapability(KvmCapability.ExtendedControlRegisters) > 0 ? vcpu.GetXcrs() : [];
        var now = ReadMsrs(vcpu, [.. fresh.Keys]);
        Msrs = [.. now.Where(m => fresh[m.Key] != m.Value).OrderBy(m => m.Key).Select(m => new KvmMsrEntry(m.Key, m.Value))];
        Lapic = inKernelApic ? vcpu.GetLapic() : [];
        Events = system.CheckCapability(KvmCapability.VcpuEvents) > 0 ? vcpu.GetVcpuEvents().Bytes : [];
        Clock = system.CheckCapability(KvmCapability.AdjustClock) > 0 ? vm.GetClock() : null;
    }

    /// <summary>Loads the state into a vCPU whose registers are already loaded, in QEMU's order (kvm_arch_put_registers):
    /// XCRs before the XSAVE area whose components they enable, the local APIC, the events, the MSRs, the clock.</summary>
    /// <exception cref="KvmException">KVM refused a part, naming it (an MSR by its index).</exception>
    public void Apply(KvmVm vm, KvmVcpu vcpu, bool inKernelApic)
    {
        if (!HasState)
        {
            return;
        }
        if (ExtendedControlRegisters.Length > 0)
        {
            vcpu.SetXcrs(ExtendedControlRegisters);
        }
        if (FloatingPointKind == FloatingPoint.Xsave)
        {
            vcpu.SetXsave(FloatingPointArea);
        }
        else
        {
            vcpu.SetFpu(MemoryMarshal.Read<KvmFpu>(FloatingPointArea));
        }
        if (Lapic.Length > 0)
        {
            if (!inKernelApic)
            {
                throw new KvmException("KVM_SET_LAPIC", 22, "the snapshot holds an in-kernel local APIC, and this VM has none: restore it with the interrupt controller in KVM");
            }
            vcpu.SetLapic(Lapic);
        }
        if (Events.Length > 0)
        {
            vcpu.SetVcpuEvents(new KvmVcpuEvents((byte[])Events.Clone()));
        }
        foreach (var msr in Msrs)
        {
            if (vcpu.SetMsrs([msr]) != 1)
            {
                throw new KvmException($"KVM_SET_MSRS of MSR 0x{msr.Index:x} = 0x{msr.Data:x}", 22, "KVM refused an MSR of the snapshot: restore it on a host of the same kind");
            }
        }
        if (Clock is { } clock)
        {
            vm.SetClock(clock);
        }
    }

    /// <summary>Makes this the state <paramref name="other"/> holds (a snapshot's, read and checked apart first).</summary>
    public void CopyFrom(KvmVcpuExtendedState other) =>
        (FloatingPointKind, FloatingPointArea, ExtendedControlRegisters, Msrs, Lapic, Events, Clock) =
        (other.FloatingPointKind, other.FloatingPointArea, other.ExtendedControlRegisters, other.Msrs, other.Lapic, other.Events, other.Clock);

    /// <inheritdoc/>
    public string SectionTag => "KVMS";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <inheritdoc/>
    public void Save(SnapshotWriter writer)
    {
        writer.WriteByte((byte)FloatingPointKind);
        WriteBlob(writer, FloatingPointArea);
        WriteBlob(writer, ExtendedControlRegisters);
        writer.WriteInt32(Msrs.Count);
        foreach (var msr in Msrs)
        {
            writer.WriteUInt32(msr.Index);
            writer.WriteUInt64(msr.Data);
        }
        WriteBlob(writer, Lapic);
        WriteBlob(writer, Events);
        writer.WriteBoolean(Clock.HasValue);
        writer.WriteUInt64(Clock ?? 0);
    }

    /// <inheritdoc/>
    public void Restore(SnapshotReader reader, ushort version)
    {
        byte kind = reader.ReadByte();
        if (kind > (byte)FloatingPoint.Fpu)
        {
            throw reader.Invalid($"floating-point state of kind {kind}");
        }
        var area = ReadBlob(reader, 1 << 20);
        if ((FloatingPoint)kind == FloatingPoint.Xsave && area.Length < KvmVcpu.XsaveBytes || (FloatingPoint)kind == FloatingPoint.Fpu && area.Length != Marshal.SizeOf<KvmFpu>())
        {
            throw reader.Invalid($"a floating-point area of {area.Length} bytes");
        }
        var xcrs = ReadBlob(reader, KvmVcpu.XcrsBytes);
        int count = reader.ReadInt32();
        if (count is < 0 or > 4096)
        {
            throw reader.Invalid($"{count} MSRs");
        }
        var msrs = new List<KvmMsrEntry>(count);
        for (int i = 0; i < count; i++)
        {
            uint index = reader.ReadUInt32();
            msrs.Add(new KvmMsrEntry(index, reader.ReadUInt64()));
        }
        var lapic = ReadBlob(reader, KvmVcpu.LapicBytes);
        var events = ReadBlob(reader, KvmVcpu.VcpuEventsBytes);
        bool hasClock = reader.ReadBoolean();
        ulong clock = reader.ReadUInt64();
        if (xcrs.Length is not (0 or KvmVcpu.XcrsBytes) || lapic.Length is not (0 or KvmVcpu.LapicBytes) || events.Length is not (0 or KvmVcpu.VcpuEventsBytes))
        {
            throw reader.Invalid($"KVM structures of {xcrs.Length}, {lapic.Length} and {events.Length} bytes (XCRs, LAPIC, events)");
        }
        (FloatingPointKind, FloatingPointArea, ExtendedControlRegisters, Msrs, Lapic, Events, Clock) =
            ((FloatingPoint)kind, area, xcrs, msrs, lapic, events, hasClock ? clock : null);
    }

    private static void WriteBlob(SnapshotWriter writer, byte[] bytes)
    {
        writer.WriteInt32(bytes.Length);
        writer.WriteBytes(bytes);
    }

    private static byte[] ReadBlob(SnapshotReader reader, int most)
    {
        int length = reader.ReadInt32();
        if (length < 0 || length > most)
        {
            throw reader.Invalid($"a KVM structure of {length} bytes (at most {most})");
        }
        return reader.ReadBytes(length).ToArray();
    }
}
