using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Devices.Platform.Timers;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>The HPET's periodic and level-triggered comparators and legacy replacement routing (IA-PC HPET 1.0a
/// §2.3.9.2), driven through its registers in virtual time.</summary>
public class HpetTests
{
    private sealed class RecordingSink : IInterruptSink
    {
        public readonly List<(int Gsi, bool Asserted)> Changes = [];

        public void SetLine(int gsi, bool asserted) => Changes.Add((gsi, asserted));
    }

    private static (Hpet Hpet, RecordingSink Sink, Action<long> At) Build()
    {
        var clock = new PlatformClock();
        long cycles = 0;
        clock.Attach(() => cycles);
        var sink = new RecordingSink();
        var hpet = new Hpet(clock, new InterruptController(sink));
        void At(long ns)
        {
            cycles = ns;
            hpet.Advance(clock.Nanoseconds);
        }
        return (hpet, sink, At);
    }

    [Fact]
    public void A_periodic_comparator_in_legacy_replacement_mode_interrupts_on_GSI_2_every_period()
    {
        var (hpet, sink, at) = Build();
        const ulong Timer0 = Hpet.BaseAddress + 0x100;
        hpet.Write(Timer0, 8, (1 << 2) | (1 << 3) | (1 << 6)); // enabled, periodic, value set
        hpet.Write(Timer0 + 8, 8, 1000);                       // first at tick 1000 (10 µs), then every 1000
        hpet.Write(Timer0 + 8, 8, 1000);                       // the period
        hpet.Write(Hpet.BaseAddress + 0x10, 8, 3);             // ENABLE_CNF | LEG_RT_CNF
        at(9_990);
        Assert.Empty(sink.Changes);
        at(10_000);
        Assert.Equal([(2, true), (2, false)], sink.Changes);
        at(19_990);
        Assert.Equal(2, sink.Changes.Count);
        at(20_000);
        Assert.Equal(4, sink.Changes.Count);
        Assert.Equal(3000UL, hpet.Read(Timer0 + 8, 8));         // the comparator moved on by the period
        at(55_000);                                             // missed periods merge into one interrupt
        Assert.Equal(6, sink.Changes.Count);
        Assert.Equal(6000UL, hpet.Read(Timer0 + 8, 8));
        Assert.Equal(3, hpet.Interrupts);
    }

    [Fact]
    public void A_level_triggered_one_shot_holds_its_line_until_its_status_bit_is_cleared()
    {
        var (hpet, sink, at) = Build();
        const ulong Timer1 = Hpet.BaseAddress + 0x120;
        hpet.Write(Timer1, 4, (21 << 9) | (1 << 8) | (1 << 2) | (1 << 1)); // GSI 21, 32-bit, enabled, level
        hpet.Write(Timer1 + 8, 4, 50);
        hpet.Write(Hpet.BaseAddress + 0x10, 4, 1);
        at(500);
        Assert.Equal([(21, true)], sink.Changes);
        Assert.Equal(2UL, hpet.Read(Hpet.BaseAddress + 0x20, 4));
        at(5_000);                                              // a one-shot fires once
        Assert.Single(sink.Changes);
        hpet.Write(Hpet.BaseAddress + 0x20, 4, 2);
        Assert.Equal([(21, true), (21, false)], sink.Changes);
        Assert.Equal(0UL, hpet.Read(Hpet.BaseAddress + 0x20, 4));
        // A route outside Tn_INT_ROUTE_CAP is not taken.
        hpet.Write(Timer1, 4, (5 << 9) | (1 << 2));
        Assert.Equal(21UL, hpet.Read(Timer1, 4) >> 9 & 0x1F);
    }

    [Fact]
    public void The_main_counter_stands_still_while_halted_and_32_bit_reads_split_it()
    {
        var (hpet, _, at) = Build();
        at(1_000);
        Assert.Equal(0UL, hpet.MainCounter);
        hpet.Write(Hpet.BaseAddress + 0xF0, 8, 0x1_0000_0000UL - 5);
        hpet.Write(Hpet.BaseAddress + 0x10, 8, 1);
        at(1_100);                                              // 10 ticks later
        Assert.Equal(0x1_0000_0005UL, hpet.MainCounter);
        Assert.Equal(5UL, hpet.Read(Hpet.BaseAddress + 0xF0, 4));
        Assert.Equal(1UL, hpet.Read(Hpet.BaseAddress + 0xF4, 4));
        hpet.Write(Hpet.BaseAddress + 0x10, 8, 0);
        at(9_000);
        Assert.Equal(0x1_0000_0005UL, hpet.MainCounter);
    }
}
