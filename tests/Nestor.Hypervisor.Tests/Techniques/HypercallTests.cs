using System.Text.RegularExpressions;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.Paravirtual;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Tests;

/// <summary>The paravirtual interface: each hypercall handed to the VMM as the VMCALL exit the CPU raises, and the
/// <see cref="Hypercall"/> numbers checked against the guest's own header.</summary>
public partial class HypercallTests
{
    private const int VmcallLength = 3;
    private const ulong Buffer = 0x40_0000; // guest RAM the kernel does not use

    private static (VmExitAction Action, ulong Result) Call(MonitorBench bench, ulong number, ulong a = 0, ulong b = 0)
    {
        var cpu = bench.Cpu;
        cpu.Registers[0] = number;
        cpu.Registers[7] = a;
        cpu.Registers[6] = b;
        ulong rip = cpu.Rip;
        var action = bench.Exit(ExitReason.Vmcall, VmcallLength);
        Assert.Equal(rip + VmcallLength, cpu.Rip); // the guest goes on after the VMCALL
        return (action, cpu.Registers[0]);
    }

    private static MonitorBench Paravirtual() => MonitorBench.Create(Technique.Paravirtual, MemoryVirtualization.Shadow);

    [Fact]
    public void Set_interrupts_sets_the_virtual_if_and_returns_the_previous_one()
    {
        using var bench = Paravirtual();
        bench.Cpu.Rflags |= FlagBits.Interrupt;
        Assert.Equal((VmExitAction.Skip, 1UL), Call(bench, (ulong)Hypercall.SetInterrupts, 0));
        Assert.Equal(0UL, bench.Cpu.Rflags & FlagBits.Interrupt);
        Assert.Equal((VmExitAction.Skip, 0UL), Call(bench, (ulong)Hypercall.SetInterrupts, 1));
        Assert.NotEqual(0UL, bench.Cpu.Rflags & FlagBits.Interrupt);
        Assert.Equal(2, bench.Monitor.Hypercalls);
        Assert.Equal(2, bench.Vm.Exits.Count(VmExitReason.Hypercall));
    }

    [Fact]
    public void Events_pending_says_whether_the_vmm_holds_an_interrupt_for_the_virtual_if()
    {
        using var bench = Paravirtual();
        var cpu = bench.Cpu;
        Assert.Equal(0UL, Call(bench, (ulong)Hypercall.EventsPending).Result);
        cpu.Apic.Write(0xF0, 0x1FF, 0);
        cpu.Apic.RequestInterrupt(0x40, levelTriggered: false);
        Call(bench, (ulong)Hypercall.SetInterrupts, 0);
        Assert.Equal(VmExitAction.Resume, bench.Exit(ExitReason.ExternalInterrupt));
        Assert.Equal(1UL, Call(bench, (ulong)Hypercall.EventsPending).Result);
    }

    [Fact]
    public void Vcpu_info_writes_the_virtual_cpu_as_bare_metal_would_show_it()
    {
        using var bench = Paravirtual();
        var cpu = bench.Cpu;
        Assert.Equal((VmExitAction.Skip, 0UL), Call(bench, (ulong)Hypercall.VcpuInfo, Buffer));
        var memory = bench.Vm.Memory;
        Assert.Equal((ulong)cpu.GdtLimit, memory.ReadUInt64(new GuestPhysical(Buffer + 8)));
        Assert.Equal(cpu.GdtBase, memory.ReadUInt64(new GuestPhysical(Buffer + 16)));
        Assert.Equal(cpu.IdtBase, memory.ReadUInt64(new GuestPhysical(Buffer + 32)));
        Assert.Equal(cpu.Cr0, memory.ReadUInt64(new GuestPhysical(Buffer + 56)));
        // Outside guest RAM: refused.
        Assert.Equal(ParavirtualTechnique.Refused, Call(bench, (ulong)Hypercall.VcpuInfo, 0x1_0000_0000).Result);
    }

    [Fact]
    public void Set_cr3_loads_cr3_and_switches_the_shadow_address_space()
    {
        using var bench = Paravirtual();
        var shadow = bench.Monitor.Shadow!;
        long switches = shadow.AddressSpaceSwitches;
        ulong cr3 = bench.Cpu.Cr3;
        Assert.Equal((VmExitAction.Skip, 0UL), Call(bench, (ulong)Hypercall.SetCr3, cr3));
        Assert.Equal(switches + 1, shadow.AddressSpaceSwitches);
        Assert.Equal(cr3, bench.Cpu.Cr3);
        Assert.NotNull(shadow.RootFor(cr3));
    }

    [Fact]
    public void Mmu_update_applies_a_batch_of_page_table_writes_and_refuses_a_batch_outside_ram()
    {
        using var bench = Paravirtual();
        Assert.Equal((VmExitAction.Skip, 0UL), Call(bench, (ulong)Hypercall.MmuUpdate, Buffer, 0));
        Assert.Equal(ParavirtualTechnique.Refused, Call(bench, (ulong)Hypercall.MmuUpdate, Buffer, 513).Result);
        Assert.Equal(ParavirtualTechnique.Refused, Call(bench, (ulong)Hypercall.MmuUpdate, 0x1_0000_0000, 1).Result);
        Assert.Equal(2, ((ParavirtualTechnique)bench.Monitor.CpuVirtualization).RefusedHypercalls);
    }

    [Fact]
    public void Invlpg_and_release_table_answer_as_documented()
    {
        using var bench = Paravirtual();
        Assert.Equal((VmExitAction.Skip, 0UL), Call(bench, (ulong)Hypercall.Invlpg, MonitorBench.CodeAddress));
        // The buffer page was never a page table: nothing to release.
        Assert.Equal((VmExitAction.Skip, 0UL), Call(bench, (ulong)Hypercall.ReleaseTable, Buffer));
    }

    [Theory]
    [InlineData(0UL)]
    [InlineData(8UL)]
    [InlineData(0xFFFF_FFFFUL)]
    public void An_unknown_hypercall_is_refused_and_counted(ulong number)
    {
        using var bench = Paravirtual();
        var (action, result) = Call(bench, number, 1, 2);
        Assert.Equal(VmExitAction.Skip, action);
        Assert.Equal(ParavirtualTechnique.Refused, result);
        Assert.Equal(1, bench.Monitor.Hypercalls);
        Assert.Equal(1, ((ParavirtualTechnique)bench.Monitor.CpuVirtualization).RefusedHypercalls);
    }

    [Fact]
    public void The_hypercall_numbers_are_those_of_the_guests_header()
    {
        string header = File.ReadAllText(Path.Combine(RepositoryRoot(), "guest", "include", "nestoros.h"));
        var defined = HypercallDefinition().Matches(header)
            .ToDictionary(m => m.Groups[1].Value, m => ulong.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
        var expected = Enum.GetValues<Hypercall>().ToDictionary(ConstantName, h => (ulong)h);
        Assert.Equal(expected.OrderBy(e => e.Key), defined.OrderBy(d => d.Key));
        Assert.Equal(7, defined.Count);
    }

    /// <summary>MmuUpdate → HC_MMU_UPDATE.</summary>
    private static string ConstantName(Hypercall call) =>
        "HC_" + string.Concat(call.ToString().Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + c : char.ToUpperInvariant(c).ToString()));

    [GeneratedRegex(@"^#define\s+(HC_[A-Z0-9_]+)\s+(\d+)", RegexOptions.Multiline)]
    private static partial Regex HypercallDefinition();

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "guest", "include", "nestoros.h")))
            {
                return directory.FullName;
            }
        }
        throw new InvalidOperationException($"no guest/include/nestoros.h above {AppContext.BaseDirectory}");
    }
}
