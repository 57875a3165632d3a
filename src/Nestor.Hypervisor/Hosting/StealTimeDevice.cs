using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Scheduling;

namespace Nestor.Hypervisor.Hosting;

/// <summary>How a paravirtual guest on a host of many VMs reads its steal time (docs/paravirt.md, "Steal time"): the
/// virtual time its vCPU was runnable but waiting for a host CPU, in nanoseconds of the host's virtual clock, as KVM's
/// steal-time area reports it (struct kvm_steal_time's <c>steal</c>, Documentation/virt/kvm/x86/msr.rst). A 32-bit IN
/// from port 0x5F0 gives the low half, from 0x5F4 the high half. The value changes only between the guest's slices,
/// so a guest that reads high, low, high and retries when the two highs differ gets a consistent 64-bit value, as
/// with KVM's version field. The device has no state of its own: nothing to snapshot (the steal time is the host's
/// books, not the VM's).</summary>
public sealed class StealTimeDevice(ScheduledVcpu vcpu, HostClock clock) : IPortDevice
{
    /// <summary>The first of its two 32-bit ports.</summary>
    public const ushort Port = 0x5F0;

    /// <summary>It claims eight ports: low half at 0x5F0, high half at 0x5F4.</summary>
    public const int PortCount = 8;

    /// <inheritdoc/>
    public string Name => "steal-time";

    /// <summary>Gives <paramref name="vm"/> the device for <paramref name="vcpu"/>.</summary>
    public static void Attach(Vm vm, ScheduledVcpu vcpu, HostClock clock) => vm.Bus.Claim(new StealTimeDevice(vcpu, clock), Port, PortCount);

    /// <summary>The steal time now, in nanoseconds.</summary>
    public ulong StealNanoseconds => (ulong)(vcpu.ReadyCycles * (1_000_000.0 / clock.CyclesPerMillisecond));

    /// <inheritdoc/>
    public uint Read(ushort port, int size)
    {
        ulong steal = StealNanoseconds;
        return port - Port < 4 ? (uint)steal : (uint)(steal >> 32);
    }

    /// <summary>Writes are ignored: the guest cannot change its steal time.</summary>
    public void Write(ushort port, int size, uint value)
    {
    }
}
