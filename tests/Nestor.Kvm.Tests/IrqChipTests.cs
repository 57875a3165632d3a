namespace Nestor.Kvm.Tests;

/// <summary>The in-kernel interrupt controllers (KVM_CREATE_IRQCHIP, KVM_IRQ_LINE). This host's /dev/kvm is nested and
/// does not deliver interrupts into a running guest reliably, so these tests check what the binding can: the ioctls
/// succeed and the in-kernel I/O APIC's state follows the line.</summary>
public class IrqChipTests
{
    [Fact]
    public void Creating_the_irqchip_gives_a_masked_ioapic_whose_irr_follows_a_line()
    {
        RequiresKvm.Check();
        using var kvm = KvmSystem.Open();
        Assert.True(kvm.CheckCapability(KvmCapability.InterruptController) > 0);
        using var vm = kvm.CreateVm();
        Assert.False(vm.HasIrqChip);
        vm.CreateIrqChip();
        Assert.True(vm.HasIrqChip);
        var (irr, redirection) = vm.GetIoApicState();
        Assert.Equal(0u, irr);
        Assert.Equal(24, redirection.Length);
        Assert.All(redirection, entry => Assert.NotEqual(0UL, entry & (1UL << 16))); // masked at reset
        vm.SetIrqLine(5, true);
        Assert.Equal(1u << 5, vm.GetIoApicState().Irr & (1u << 5));
        vm.SetIrqLine(5, false);
        Assert.Equal(0u, vm.GetIoApicState().Irr & (1u << 5));
        // A vCPU can be created after the irqchip (its local APIC is then in the kernel).
        using var vcpu = vm.CreateVcpu(0);
        Assert.Throws<KvmException>(() => vm.CreateIrqChip()); // only once per VM
    }
}
