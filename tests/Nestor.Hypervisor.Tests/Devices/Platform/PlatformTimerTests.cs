using Iced.Intel;
using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Devices.Platform.Timers;
using Nestor.Hypervisor.Hosting;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>The 8254 PIT, the ACPI PM timer and the HPET count in the software machine's virtual time: one cycle
/// (one TSC tick) is a nanosecond (<see cref="PlatformClock"/>), so each is checked against RDTSC in the same guest.</summary>
public class PlatformTimerTests
{
    private const int Vector = 0x40;

    [Fact]
    public void PIT_counter_2_gated_through_port_0x61_reaches_terminal_count_after_its_count_times_838_ns()
    {
        const int Count = 1193; // ~1 ms
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            var poll = a.CreateLabel();
            a.mov(al, 0);                  // gate 2 low while programming
            a.@out((byte)Pit8254.SystemControlPort, al);
            a.mov(al, 0b10_11_000_0);      // counter 2, LSB then MSB, mode 0, binary
            a.@out((byte)Pit8254.ControlPort, al);
            a.mov(al, Count & 0xFF);
            a.@out((byte)0x42, al);
            a.mov(al, Count >> 8);
            a.@out((byte)0x42, al);
            PlatformGuest.ReadTsc(a);
            a.mov(rbx, rax);
            a.mov(al, 1);                  // gate 2 high: counting starts
            a.@out((byte)Pit8254.SystemControlPort, al);
            a.Label(ref poll);
            a.@in(al, (byte)Pit8254.SystemControlPort);
            a.test(al, 0x20);              // OUT2
            a.jz(poll);
            PlatformGuest.ReadTsc(a);
            a.sub(rax, rbx);
            a.mov(__qword_ptr[r15], rax);
            // The count latched just after: mode 0 counts on through 0 and 0xFFFF downwards.
            a.mov(al, 0b10_00_0000);       // latch counter 2
            a.@out((byte)Pit8254.ControlPort, al);
            a.@in(al, (byte)0x42);
            a.movzx(ecx, al);
            a.@in(al, (byte)0x42);
            a.movzx(eax, al);
            a.shl(eax, 8);
            a.or(eax, ecx);
            a.mov(__qword_ptr[r15 + 8], rax);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            long expected = Count * 1_000_000_000L / Pit8254.InputHertz;
            long measured = (long)PlatformGuest.Slot(vm, 0);
            Assert.InRange(measured, expected - 50, expected + 2_000); // one poll iteration, a few port accesses
            // Latched a few instructions (well under one 838 ns input tick) after the terminal count: 0, or just
            // wrapped through 0xFFFF.
            ulong latched = PlatformGuest.Slot(vm, 1);
            Assert.True(latched == 0 || latched >= 0xFFFE, $"latched count 0x{latched:x}");
        }
    }

    [Fact]
    public void PIT_counter_0_in_rate_generator_mode_interrupts_through_GSI_2_once_per_period()
    {
        const int Count = 1193, Interrupts = 5;
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            var wait = a.CreateLabel();
            PlatformGuest.InterruptHandler(a, Vector, counter: 16, logTsc: true); // the TSC at each interrupt
            GuestInterruptSetup.RouteIoApicPin(a, rsi, Pit8254.Gsi, Vector);     // edge, active high, unmasked
            a.mov(al, 0b00_11_010_0);                   // counter 0, LSB then MSB, mode 2
            a.@out((byte)Pit8254.ControlPort, al);
            a.mov(al, Count & 0xFF);
            a.@out((byte)0x40, al);
            a.mov(al, Count >> 8);
            a.@out((byte)0x40, al);
            a.sti();
            a.Label(ref wait);
            a.cmp(__qword_ptr[r15 + 16], Interrupts);
            a.jb(wait);
            a.cli();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal((ulong)Interrupts, PlatformGuest.Slot(vm, 2));
            long period = Count * 1_000_000_000L / Pit8254.InputHertz;
            for (int i = 1; i < Interrupts; i++)
            {
                long gap = (long)(PlatformGuest.Slot(vm, 3 + i) - PlatformGuest.Slot(vm, 2 + i));
                Assert.InRange(gap, period - 100, period + 100);
            }
            Assert.True(vm.PcPlatform.Pit.Interrupts >= Interrupts);
        }
    }

    [Fact]
    public void The_PM_timer_counts_at_3_579545_MHz_of_the_guest_TSC()
    {
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            var spin = a.CreateLabel();
            PlatformGuest.ReadTsc(a);
            a.mov(rbx, rax);
            a.mov(dx, AcpiPowerManagement.TimerPort);
            a.@in(eax, dx);
            a.mov(r8d, eax);
            a.mov(ecx, 500_000);
            a.Label(ref spin);
            a.dec(ecx);
            a.jnz(spin);
            a.@in(eax, dx);
            a.mov(r9d, eax);
            PlatformGuest.ReadTsc(a);
            a.sub(rax, rbx);
            a.mov(__qword_ptr[r15], rax);
            a.sub(r9d, r8d);
            a.and(r9d, 0xFF_FFFF);                      // 24 bits
            a.mov(__qword_ptr[r15 + 8], r9);
            a.mov(dx, AcpiPowerManagement.ControlBlock);
            a.@in(ax, dx);
            a.movzx(eax, ax);
            a.mov(__qword_ptr[r15 + 16], rax);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            double nanoseconds = PlatformGuest.Slot(vm, 0);
            double expected = nanoseconds * AcpiPowerManagement.TimerHertz / 1e9;
            Assert.InRange((double)PlatformGuest.Slot(vm, 1), expected - 2, expected + 1);
            Assert.True(expected > 3000, $"the spin took {nanoseconds} ns");
            Assert.Equal(1UL, PlatformGuest.Slot(vm, 2) & 1); // SCI_EN: always in ACPI mode
        }
    }

    [Fact]
    public void The_HPET_counts_in_10_ns_ticks_and_a_comparator_interrupts_through_its_route()
    {
        const int Gsi = 20;
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            var spin = a.CreateLabel();
            var wait = a.CreateLabel();
            PlatformGuest.InterruptHandler(a, Vector, counter: 32);
            GuestInterruptSetup.RouteIoApicPin(a, rsi, Gsi, Vector);
            a.mov(rdi, Hpet.BaseAddress);
            a.mov(rax, __qword_ptr[rdi]);                // capabilities
            a.mov(__qword_ptr[r15], rax);
            a.mov(__qword_ptr[rdi + 0x10], 1);           // ENABLE_CNF
            PlatformGuest.ReadTsc(a);
            a.mov(r8, rax);
            a.mov(r9, __qword_ptr[rdi + 0xF0]);
            a.mov(ecx, 200_000);
            a.Label(ref spin);
            a.dec(ecx);
            a.jnz(spin);
            a.mov(r10, __qword_ptr[rdi + 0xF0]);
            PlatformGuest.ReadTsc(a);
            a.sub(rax, r8);
            a.mov(__qword_ptr[r15 + 8], rax);
            a.sub(r10, r9);
            a.mov(__qword_ptr[r15 + 16], r10);
            // Timer 2: one-shot, edge, routed to GSI 20, 20 µs from now.
            a.mov(__qword_ptr[rdi + 0x140], (Gsi << 9) | (1 << 2));
            a.mov(rax, __qword_ptr[rdi + 0xF0]);
            a.add(rax, 2000);
            a.mov(__qword_ptr[rdi + 0x148], rax);
            a.mov(rax, __qword_ptr[rdi + 0x140]);
            a.mov(__qword_ptr[r15 + 24], rax);
            a.sti();
            a.Label(ref wait);
            a.cmp(__qword_ptr[r15 + 32], 0);
            a.je(wait);
            a.cli();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(Hpet.Capabilities, PlatformGuest.Slot(vm, 0));
            Assert.Equal(2UL, PlatformGuest.Slot(vm, 0) >> 8 & 0x1F);             // three comparators
            Assert.Equal(10_000_000UL, PlatformGuest.Slot(vm, 0) >> 32);          // 10 ns in femtoseconds
            double ticks = PlatformGuest.Slot(vm, 8 / 8 + 0) / 10.0;
            Assert.InRange((double)PlatformGuest.Slot(vm, 2), ticks - 2, ticks + 1);
            ulong timer2 = PlatformGuest.Slot(vm, 3);
            Assert.Equal((ulong)Hpet.RouteCapability, timer2 >> 32);
            Assert.Equal((ulong)Gsi, timer2 >> 9 & 0x1F);
            Assert.Equal(1UL, PlatformGuest.Slot(vm, 4));
            Assert.Equal(1, vm.PcPlatform.Hpet.Interrupts);
        }
    }

    [Fact]
    public void Timers_and_the_clock_survive_a_snapshot()
    {
        var clock = new PlatformClock();
        long cycles = 0;
        clock.Attach(() => cycles);
        var pit = new Pit8254(clock, null);
        var hpet = new Hpet(clock, null);
        var pm = new AcpiPowerManagement(clock);
        pit.Write(Pit8254.ControlPort, 1, 0b00_11_010_0);
        pit.Write(0x40, 1, 0x00);
        pit.Write(0x40, 1, 0x10);                      // 4096
        hpet.Write(Hpet.BaseAddress + 0x10, 8, 1);
        cycles = 1_000_000;
        var writer = new Persistence.SnapshotWriter();
        foreach (Persistence.ISnapshottable part in (Persistence.ISnapshottable[])[clock, pit, hpet, pm])
        {
            writer.WriteSection(part);
        }
        uint pitCount() => pit.Read(0x40, 1) | pit.Read(0x40, 1) << 8;
        uint before = pitCount();
        ulong hpetBefore = hpet.MainCounter;
        long pmBefore = pm.TimerTicks;

        var clock2 = new PlatformClock();
        var pit2 = new Pit8254(clock2, null);
        var hpet2 = new Hpet(clock2, null);
        var pm2 = new AcpiPowerManagement(clock2);
        var reader = new Persistence.SnapshotReader(writer.ToArray());
        foreach (Persistence.ISnapshottable part in (Persistence.ISnapshottable[])[clock2, pit2, hpet2, pm2])
        {
            reader.ReadSection(part);
        }
        Assert.Equal(1_000_000, clock2.Nanoseconds);
        Assert.Equal(before, pit2.Read(0x40, 1) | pit2.Read(0x40, 1) << 8);
        Assert.Equal(hpetBefore, hpet2.MainCounter);
        Assert.Equal(100_000UL, hpet2.MainCounter);
        Assert.Equal(pmBefore, pm2.TimerTicks);
        // And time goes on from there.
        long cycles2 = 0;
        clock2.Attach(() => cycles2);
        cycles2 = 500;
        Assert.Equal(100_050UL, hpet2.MainCounter);
    }
}
