using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>One KVM virtual machine: its memory slots and vCPUs (api.rst, "VM ioctls").</summary>
public sealed class KvmVm : IDisposable
{
    private readonly FileDescriptor vm;
    private readonly List<KvmVcpu> vcpus = [];

    internal KvmVm(KvmSystem system, FileDescriptor vm)
    {
        System = system;
        this.vm = vm;
    }

    /// <summary>The KVM subsystem this VM belongs to.</summary>
    public KvmSystem System { get; }

    /// <summary>KVM_CHECK_EXTENSION on the VM fd (some capabilities, e.g. the memory-slot count, are per VM).</summary>
    public int CheckCapability(KvmCapability capability)
    {
        int result = LibC.Ioctl(vm.Value, Ioctl.CheckExtension, (nint)capability);
        return result < 0 ? 0 : result;
    }

    /// <summary>Maps guest-physical <paramref name="guestPhysicalAddress"/>..+<paramref name="size"/> onto host
    /// memory at <paramref name="hostAddress"/> (KVM_SET_USER_MEMORY_REGION). Guest accesses to addresses outside
    /// every slot leave KVM as MMIO exits.</summary>
    public unsafe void SetUserMemoryRegion(uint slot, ulong guestPhysicalAddress, ulong size, nint hostAddress, bool readOnly = false)
    {
        if ((guestPhysicalAddress & 0xFFF) != 0 || (size & 0xFFF) != 0 || (hostAddress & 0xFFF) != 0)
        {
            throw new ArgumentException("guest memory slots must be 4 KiB aligned in address, size and host address");
        }
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = slot,
            Flags = readOnly ? 2u : 0u, // KVM_MEM_READONLY
            GuestPhysicalAddress = guestPhysicalAddress,
            MemorySize = size,
            UserspaceAddress = (ulong)hostAddress,
        };
        vm.Call(Ioctl.SetUserMemoryRegion, &region, $"KVM_SET_USER_MEMORY_REGION (slot {slot}, 0x{guestPhysicalAddress:x}+0x{size:x})");
    }

    /// <summary>Places the three pages Intel VMX needs for real-mode emulation (KVM_SET_TSS_ADDR). Must lie outside
    /// guest RAM; required on Intel hosts before the first KVM_RUN.</summary>
    public void SetTssAddress(ulong guestPhysicalAddress) =>
        vm.Call(Ioctl.SetTssAddress, (nint)guestPhysicalAddress, "KVM_SET_TSS_ADDR");

    /// <summary>Creates vCPU number <paramref name="id"/> and maps its shared <c>kvm_run</c> area.</summary>
    public KvmVcpu CreateVcpu(int id)
    {
        int fd = vm.Call(Ioctl.CreateVcpu, id, $"KVM_CREATE_VCPU {id}");
        var vcpu = new KvmVcpu(this, new FileDescriptor(fd), id, System.VcpuMmapSize);
        vcpus.Add(vcpu);
        return vcpu;
    }

    /// <summary>Opens the VM-wide binary statistics (KVM_GET_STATS_FD on the VM fd).</summary>
    public KvmStatistics OpenStatistics() =>
        new(new FileDescriptor(vm.Call(Ioctl.GetStatsFd, 0, "KVM_GET_STATS_FD (VM)")));

    public void Dispose()
    {
        foreach (var vcpu in vcpus)
        {
            vcpu.Dispose();
        }
        vcpus.Clear();
        vm.Dispose();
    }
}
