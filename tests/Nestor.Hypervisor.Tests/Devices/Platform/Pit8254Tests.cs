using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Devices.Platform.Timers;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>The 8254's counting modes, latches and read-back command (Intel 8254 data sheet), in virtual time.</summary>
public class Pit8254Tests
{
    private static (Pit8254 Pit, Action<long> AtTick) Build()
    {
        var clock = new PlatformClock();
        long cycles = 0;
        clock.Attach(() => cycles);
        return (new Pit8254(clock, null), ticks => cycles = Pit8254.TimeOfTick(ticks));
    }

    private static uint ReadCount(Pit8254 pit, ushort port) => pit.Read(port, 1) | pit.Read(port, 1) << 8;

    [Fact]
    public void Rate_generator_counts_down_and_reloads_and_square_wave_counts_by_two()
    {
        var (pit, at) = Build();
        at(100);
        pit.Write(Pit8254.ControlPort, 1, 0b00_11_010_0); // counter 0, mode 2
        pit.Write(0x40, 1, 100);
        pit.Write(0x40, 1, 0);
        at(101 + 30);                                        // loaded on the next clock, 30 clocks ago
        Assert.Equal(70u, ReadCount(pit, 0x40));
        at(101 + 130);
        Assert.Equal(70u, ReadCount(pit, 0x40));             // reloaded at 100
        pit.Write(Pit8254.ControlPort, 1, 0b01_11_011_0);    // counter 1, mode 3
        pit.Write(0x41, 1, 100);
        pit.Write(0x41, 1, 0);
        at(101 + 130 + 1 + 10);
        Assert.Equal(80u, ReadCount(pit, 0x41));             // ten clocks, two per clock
    }

    [Fact]
    public void Read_back_latches_status_then_count_and_a_low_gate_pauses_mode_0()
    {
        var (pit, at) = Build();
        pit.Write(Pit8254.SystemControlPort, 1, 0);          // gate 2 low
        pit.Write(Pit8254.ControlPort, 1, 0b10_11_000_0);    // counter 2, mode 0
        Assert.Equal(0x40u | 0b11_000_0, ReadBack(pit));      // null count until a count is written; OUT low
        pit.Write(0x42, 1, 0x00);
        pit.Write(0x42, 1, 0x10);                             // 4096
        pit.Write(Pit8254.SystemControlPort, 1, 1);           // gate high: counting
        at(1 + 96);
        Assert.Equal(4000u, ReadCount(pit, 0x42));
        pit.Write(Pit8254.SystemControlPort, 1, 0);           // paused
        at(2000);
        Assert.Equal(4000u, ReadCount(pit, 0x42));
        pit.Write(Pit8254.SystemControlPort, 1, 1);           // resumes on the next clock
        at(2000 + 1 + 4000);
        Assert.Equal(0u, ReadCount(pit, 0x42));
        Assert.Equal(0x20u, pit.Read(Pit8254.SystemControlPort, 1) & 0x20); // OUT2 high at terminal count
        Assert.Equal(0x80u | 0b11_000_0, ReadBack(pit));
    }

    private static uint ReadBack(Pit8254 pit)
    {
        pit.Write(Pit8254.ControlPort, 1, 0b11_10_100_0);     // read-back: status only (COUNT# set), counter 2
        return pit.Read(0x42, 1);
    }
}
