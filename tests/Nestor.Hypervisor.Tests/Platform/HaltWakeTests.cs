using Iced.Intel;
using Nestor.Hypervisor.Devices.Platform.Timers;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Tests.Devices.Platform;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Platform;

/// <summary>A halted CPU is woken by a platform timer's interrupt (SDM Vol. 3A §8.10.2: HLT is left by an enabled
/// interrupt), the software machine's clock skipping to the device's deadline as it does to the local APIC timer's:
/// without it, HLT with only the HPET or the PIT armed ends the run as "halted".</summary>
public class HaltWakeTests
{
    private const int Vector = 0x41;

    [Fact]
    public void HLT_sleeps_through_a_comparator_on_a_masked_pin_and_wakes_at_the_HPET_interrupt_that_is_delivered()
    {
        const int MaskedGsi = 20, Gsi = 21;
        const long FirstTicks = 100_000, SecondTicks = 200_000; // 1 ms and 2 ms in 10 ns ticks
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            var sleep = a.CreateLabel();
            PlatformGuest.InterruptHandler(a, Vector, counter: 16);
            GuestInterruptSetup.RouteIoApicPin(a, rsi, Gsi, Vector);        // edge, unmasked; GSI 20 stays masked (reset)
            a.mov(rdi, Hpet.BaseAddress);
            a.mov(__qword_ptr[rdi + 0x100], (MaskedGsi << 9) | (1 << 2)); // timer 0: one-shot to the masked pin
            a.mov(__qword_ptr[rdi + 0x120], (Gsi << 9) | (1 << 2));       // timer 1: one-shot to GSI 21
            a.mov(__qword_ptr[rdi + 0xF0], 0);
            a.mov(__qword_ptr[rdi + 0x108], (int)FirstTicks);
            a.mov(__qword_ptr[rdi + 0x128], (int)SecondTicks);
            PlatformGuest.ReadTsc(a);
            a.mov(r8, rax);
            a.mov(__qword_ptr[rdi + 0x10], 1);             // ENABLE_CNF: the counter runs from 0
            a.sti();
            a.Label(ref sleep);
            a.hlt();
            a.cmp(__qword_ptr[r15 + 16], 0);
            a.je(sleep);
            a.cli();
            PlatformGuest.ReadTsc(a);
            a.sub(rax, r8);
            a.mov(__qword_ptr[r15], rax);
            a.mov(rax, __qword_ptr[rdi + 0xF0]);
            a.mov(__qword_ptr[r15 + 8], rax);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1UL, PlatformGuest.Slot(vm, 2));
            long slept = (long)PlatformGuest.Slot(vm, 0);
            Assert.InRange(slept, SecondTicks * 10, SecondTicks * 10 + 2_000); // woken at the second deadline, not the first
            Assert.InRange((long)PlatformGuest.Slot(vm, 1), SecondTicks, SecondTicks + 200);
            Assert.Equal(1L, vm.IoApic.MaskedEdges);                            // the first comparator's edge, lost
        }
    }

    [Fact]
    public void HLT_wakes_at_each_PIT_rate_generator_interrupt()
    {
        const int Count = 11932, Interrupts = 4; // 10 ms periods
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            var sleep = a.CreateLabel();
            PlatformGuest.InterruptHandler(a, Vector, counter: 16, logTsc: true); // the TSC at each interrupt
            GuestInterruptSetup.RouteIoApicPin(a, rsi, Pit8254.Gsi, Vector);
            a.mov(al, 0b00_11_010_0);                       // counter 0, LSB then MSB, mode 2
            a.@out((byte)Pit8254.ControlPort, al);
            a.mov(al, Count & 0xFF);
            a.@out((byte)0x40, al);
            a.mov(al, Count >> 8);
            a.@out((byte)0x40, al);
            a.sti();
            a.Label(ref sleep);
            a.hlt();
            a.inc(__qword_ptr[r15 + 8]);                    // wake-ups
            a.cmp(__qword_ptr[r15 + 16], Interrupts);
            a.jb(sleep);
            a.cli();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal((ulong)Interrupts, PlatformGuest.Slot(vm, 2));
            Assert.Equal((ulong)Interrupts, PlatformGuest.Slot(vm, 1)); // one wake-up per interrupt
            long period = Count * 1_000_000_000L / Pit8254.InputHertz;
            for (int i = 1; i < Interrupts; i++)
            {
                long gap = (long)(PlatformGuest.Slot(vm, 3 + i) - PlatformGuest.Slot(vm, 2 + i));
                Assert.InRange(gap, period - 100, period + 100);
            }
        }
    }
}
