using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>One KVM virtual machine: its memory slots and vCPUs (api.rst, "VM ioctls").</summary>
public sealed partial class KvmVm : IDisposable
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
    /// <param name="logDirtyPages">Log the guest's writes to the slot (<c>KVM_MEM_LOG_DIRTY_PAGES</c>, api.rst §4.35),
    /// read with <see cref="GetDirtyLog"/>. Calling again for the same slot with the same range changes only its
    /// flags, which is how logging is switched on and off while the VM runs.</param>
    public unsafe void SetUserMemoryRegion(uint slot, ulong guestPhysicalAddress, ulong size, nint hostAddress, bool readOnly = false, bool logDirtyPages = false)
    {
        if ((guestPhysicalAddress & 0xFFF) != 0 || (size & 0xFFF) != 0 || (hostAddress & 0xFFF) != 0)
        {
            throw new ArgumentException("guest memory slots must be 4 KiB aligned in address, size and host address");
        }
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = slot,
            Flags = (readOnly ? ReadOnlyFlag : 0u) | (logDirtyPages ? LogDirtyPagesFlag : 0u),
            GuestPhysicalAddress = guestPhysicalAddress,
            MemorySize = size,
            UserspaceAddress = (ulong)hostAddress,
        };
        vm.Call(Ioctl.SetUserMemoryRegion, &region, $"KVM_SET_USER_MEMORY_REGION (slot {slot}, 0x{guestPhysicalAddress:x}+0x{size:x})");
        RememberSlot(slot, guestPhysicalAddress, size, hostAddress, readOnly, logDirtyPages);
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

    /// <summary>True once <see cref="CreateIrqChip"/> succeeded.</summary>
    public bool HasIrqChip { get; private set; }

    /// <summary>Creates KVM's in-kernel interrupt controllers (KVM_CREATE_IRQCHIP, api.rst §4.24): on x86 an 8259 pair,
    /// an I/O APIC at 0xFEC00000 and a local APIC per vCPU, which then handle their registers in the kernel. Must come
    /// before <see cref="CreateVcpu"/>.</summary>
    public void CreateIrqChip()
    {
        vm.Call(Ioctl.CreateIrqChip, 0, "KVM_CREATE_IRQCHIP");
        HasIrqChip = true;
    }

    /// <summary>Sets the level of input <paramref name="gsi"/> of the in-kernel interrupt controllers (KVM_IRQ_LINE,
    /// api.rst §4.25): GSIs 0–15 reach both the 8259s and the I/O APIC, 16–23 the I/O APIC only. An edge is a 1 then a 0.</summary>
    public unsafe void SetIrqLine(int gsi, bool level)
    {
        var irq = stackalloc uint[2];
        irq[0] = (uint)gsi;
        irq[1] = level ? 1u : 0u;
        vm.Call(Ioctl.IrqLine, irq, $"KVM_IRQ_LINE (gsi {gsi}, level {(level ? 1 : 0)})");
    }

    /// <summary>The in-kernel I/O APIC's state (KVM_GET_IRQCHIP with chip 2, struct kvm_ioapic_state): its pin
    /// request bits (IRR, bit n for pin n) and its 24 redirection entries.</summary>
    public unsafe (uint Irr, ulong[] Redirection) GetIoApicState()
    {
        // struct kvm_irqchip: u32 chip_id, u32 pad, then 512 bytes; kvm_ioapic_state: u64 base_address, u32 ioregsel,
        // u32 id, u32 irr, u32 pad, u64 redirtbl[24].
        var chip = stackalloc byte[520];
        new Span<byte>(chip, 520).Clear();
        *(uint*)chip = 2; // KVM_IRQCHIP_IOAPIC
        vm.Call(Ioctl.GetIrqChip, chip, "KVM_GET_IRQCHIP (I/O APIC)");
        byte* state = chip + 8;
        var redirection = new ulong[24];
        for (int i = 0; i < 24; i++)
        {
            redirection[i] = *(ulong*)(state + 24 + i * 8);
        }
        return (*(uint*)(state + 16), redirection);
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
