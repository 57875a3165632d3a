using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.Smp;

/// <summary>Where an interprocessor interrupt goes (Intel SDM Vol. 3A §10.6.2): physical destinations, logical ones
/// in the flat and the cluster model, the shorthands, the broadcast, NMI, lowest priority (to the lowest-numbered APIC
/// named, as the model delivers it), and the I/O APIC's messages by destination.</summary>
public class ApicBusTests
{
    private const uint Apic = 0xFEE0_0000;

    /// <summary>Four processors: the APs' APICs software-enabled, with the given LDRs and DFR.</summary>
    private static SmpMachine Machine(uint dfr, params uint[] ldrs)
    {
        var m = new SmpMachine(4);
        for (int i = 1; i < 4; i++)
        {
            m.Cpus[i].Apic.Write(0xF0, 0x1FF, 0);
            m.Cpus[i].Apic.Write(0xE0, dfr, 0);
            m.Cpus[i].Apic.Write(0xD0, ldrs[i - 1] << 24, 0);
        }
        return m;
    }

    /// <summary>BSP code that enables its APIC and writes each (high, low) pair to the ICR.</summary>
    private static void Send(SmpMachine m, params (uint High, uint Low)[] commands) => m.Load(0, 0x20000, a =>
    {
        a.mov(eax, Apic + 0xF0);
        a.mov(__dword_ptr[rax], 0x1FF);
        foreach (var (high, low) in commands)
        {
            a.mov(eax, Apic + 0x310);
            a.mov(__dword_ptr[rax], high);
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], low);
        }
    }, stack: 0x9000);

    private static int[] Receivers(SmpMachine m, int vector) => [.. Enumerable.Range(0, 4).Where(i => m.Requested(i, vector))];

    [Fact]
    public void Fixed_interrupts_reach_the_processors_their_destination_names()
    {
        var m = Machine(0xFFFF_FFFF, 0x01, 0x02, 0x04);
        Send(m,
            (2u << 24, 0x4040),               // physical APIC 2
            (0x05u << 24, 0x4841),            // logical, flat: LDR bits 0 and 2 (CPUs 1 and 3)
            (0, 0x000C_4042),                 // all excluding self
            (0, 0x0008_4043),                 // all including self
            (0, 0x0004_4044),                 // self
            (0xFFu << 24, 0x4045),            // physical broadcast
            (0x06u << 24, 0x4946));           // lowest priority, logical CPUs 2 and 3: the lowest-numbered
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.Equal([2], Receivers(m, 0x40));
        Assert.Equal([1, 3], Receivers(m, 0x41));
        Assert.Equal([1, 2, 3], Receivers(m, 0x42));
        Assert.Equal([0, 1, 2, 3], Receivers(m, 0x43));
        Assert.Equal([0], Receivers(m, 0x44));
        Assert.Equal([0, 1, 2, 3], Receivers(m, 0x45));
        Assert.Equal([2], Receivers(m, 0x46));
    }

    [Fact]
    public void Logical_destinations_in_the_cluster_model_match_cluster_and_member()
    {
        // DFR model 0 (cluster, §10.6.2.2): LDR bits 31:28 the cluster, 27:24 the members.
        var m = Machine(0x0FFF_FFFF, 0x11, 0x12, 0x21);
        Send(m, (0x13u << 24, 0x4850), (0x21u << 24, 0x4851));
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.Equal([1, 2], Receivers(m, 0x50));
        Assert.Equal([3], Receivers(m, 0x51));
    }

    [Fact]
    public void An_nmi_ipi_waits_at_its_target_and_a_software_disabled_apic_refuses_fixed_ones()
    {
        var m = new SmpMachine(3);
        m.Cpus[1].Apic.Write(0xF0, 0x1FF, 0);
        Send(m, (1u << 24, 0x4400), (2u << 24, 0x4400), (2u << 24, 0x4060));
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.True(m.Cpus[1].Apic.NonMaskableInterruptPending);
        Assert.True(m.Cpus[2].Apic.NonMaskableInterruptPending); // NMI is taken while software-disabled (§10.4.7.2)
        Assert.False(m.Requested(2, 0x60));
        Assert.Equal(1, m.Cpus[0].Apic.UndeliveredCommands);
    }

    [Fact]
    public void The_io_apic_reaches_the_apic_its_destination_names()
    {
        var m = Machine(0xFFFF_FFFF, 0x01, 0x02, 0x04);
        Assert.True(m.Bus.DeliverExternal(3, logical: false, lowestPriority: false, 0x70, levelTriggered: false));
        Assert.True(m.Bus.DeliverExternal(0x03, logical: true, lowestPriority: false, 0x71, levelTriggered: true));
        Assert.False(m.Bus.DeliverExternal(9, logical: false, lowestPriority: false, 0x72, levelTriggered: false));
        Assert.Equal([3], Receivers(m, 0x70));
        Assert.Equal([1, 2], Receivers(m, 0x71));
        Assert.True(m.Cpus[1].Apic.Save().TriggerMode.Get(0x71));
        Assert.Equal(1, m.Bus.Undeliverable);
    }

    [Fact]
    public void A_processor_that_sent_another_an_ipi_ends_its_slice_so_that_the_target_runs_now()
    {
        var m = new SmpMachine(2);
        m.Cpus[1].Apic.Write(0xF0, 0x1FF, 0);
        m.Load(0, 0x20000, a =>
        {
            a.mov(eax, Apic + 0x310);
            a.mov(__dword_ptr[rax], 1 << 24);
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x4060);      // fixed 0x60 to APIC 1
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);                          // as on_cpu spins until the target answers
        }, stack: 0x9000, exit: false);
        Assert.Equal(StopReason.Budget, m.Cpus[0].Run(1_000_000));
        Assert.Equal(4, m.Cpus[0].Counters.InstructionsRetired); // the four up to the ICR write, not a million
        Assert.True(m.Requested(1, 0x60));
        Assert.Equal(StopReason.Budget, m.Cpus[0].Run(1000));
        Assert.Equal(1004, m.Cpus[0].Counters.InstructionsRetired); // the next slice is whole
    }
}
