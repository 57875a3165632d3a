using Nestor.Hypervisor.Devices;

namespace Nestor.Hypervisor.Tests;

public class DeviceTests
{
    private const ushort Com1 = Uart16550.Com1;

    [Fact]
    public void Uart_transmits_to_its_output_when_flushed_or_at_end_of_line()
    {
        var output = new MemoryStream();
        var uart = new Uart16550(output);
        foreach (char c in "hi")
        {
            uart.Write(Com1, 1, c);
        }
        Assert.Equal(0, output.Length); // line-buffered
        uart.Write(Com1, 1, '\n');
        Assert.Equal("hi\n", System.Text.Encoding.ASCII.GetString(output.ToArray()));
        Assert.Equal(3, uart.BytesTransmitted);
    }

    [Fact]
    public void Uart_does_not_hold_a_partial_line_for_long()
    {
        var output = new MemoryStream();
        var uart = new Uart16550(output);
        uart.Write(Com1, 1, '>');
        Thread.Sleep(Uart16550.PartialLineDelayMilliseconds + 20);
        uart.Write(Com1, 1, ' ');
        Assert.Equal("> ", System.Text.Encoding.ASCII.GetString(output.ToArray()));
    }

    [Fact]
    public void Uart_divisor_latch_is_behind_lcr_dlab()
    {
        var uart = new Uart16550(Stream.Null);
        uart.Write(Com1 + 3, 1, 0x80);
        uart.Write(Com1 + 0, 1, 0x01);
        uart.Write(Com1 + 1, 1, 0x00);
        Assert.Equal(1u, uart.Read(Com1, 1));
        uart.Write(Com1 + 3, 1, 0x03);
        Assert.Equal((ushort)1, uart.Divisor);
        Assert.Equal(0x03u, uart.Read(Com1 + 3, 1));
        Assert.Equal(0u, uart.Read(Com1 + 1, 1)); // IER, not the divisor's high byte
    }

    [Fact]
    public void Uart_scratch_register_remembers_and_line_status_says_ready()
    {
        var uart = new Uart16550(Stream.Null);
        uart.Write(Com1 + 7, 1, 0xA5);
        Assert.Equal(0xA5u, uart.Read(Com1 + 7, 1));
        Assert.Equal(0x60u, uart.Read(Com1 + 5, 1)); // THRE | TEMT, no data ready
    }

    [Fact]
    public void Uart_loopback_returns_transmitted_bytes_and_wires_modem_lines()
    {
        var output = new MemoryStream();
        var uart = new Uart16550(output);
        uart.Write(Com1 + 4, 1, 0x1E); // loopback, OUT1, OUT2, RTS
        uart.Write(Com1, 1, 0xAE);
        Assert.Equal(0x61u, uart.Read(Com1 + 5, 1)); // data ready now
        Assert.Equal(0xAEu, uart.Read(Com1, 1));
        Assert.Equal(0xD0u, uart.Read(Com1 + 6, 1) & 0xF0); // CTS (from RTS), RI (OUT1), DCD (OUT2)
        uart.Flush();
        Assert.Equal(0, output.Length); // nothing left the chip
    }

    [Fact]
    public void Uart_reports_fifo_and_a_pending_transmitter_interrupt_in_iir()
    {
        var uart = new Uart16550(Stream.Null);
        Assert.Equal(0x01u, uart.Read(Com1 + 2, 1));
        uart.Write(Com1 + 2, 1, 0x01);
        uart.Write(Com1 + 1, 1, 0x02);
        Assert.Equal(0xC2u, uart.Read(Com1 + 2, 1));
        Assert.Equal(0xC1u, uart.Read(Com1 + 2, 1)); // reading IIR cleared it
    }

    [Fact]
    public void Bus_routes_claimed_ports_and_reports_unclaimed_ones_once()
    {
        var log = new StringWriter();
        var bus = new DeviceBus(log);
        uint? status = null;
        bus.Claim(new DebugExitPort(v => status = v), DebugExitPort.Port, DebugExitPort.PortCount);
        bus.WritePort(0xF4, 4, 0x1234);
        Assert.Equal(0x1234u, status);
        Assert.Equal(0xFFu, bus.ReadPort(0x80, 1));
        Assert.Equal(0xFFFFu, bus.ReadPort(0x80, 2));
        bus.WritePort(0x80, 1, 7);
        Assert.Equal(0xFFFF_FFFF_FFFF_FFFFUL, bus.ReadMemory(0xD000_0000, 8));
        string text = log.ToString();
        Assert.Single(text.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.Contains("I/O port 0x80"));
        Assert.Contains("MMIO address 0xd0000000", text);
        var port80 = bus.UnclaimedAccesses.Accesses.Single(a => a.Space == AccessSpace.Port);
        Assert.Equal((2L, 1L), (port80.Reads, port80.Writes));
        Assert.Equal(4, bus.UnclaimedAccesses.Total);
    }

    [Fact]
    public void Overlapping_claims_are_a_programming_error()
    {
        var bus = new DeviceBus(TextWriter.Null);
        bus.Claim(new Uart16550(Stream.Null), Com1, 8);
        Assert.Throws<InvalidOperationException>(() => bus.Claim(new DebugExitPort(_ => { }), 0x3FC, 4));
    }
}

/// <summary>A guest cannot make the unclaimed-access log flood the host's terminal or grow its memory without bound.</summary>
public class UnclaimedAccessBoundTests
{
    [Fact]
    public void Reports_are_capped_and_tracking_is_bounded_however_many_addresses_the_guest_touches()
    {
        var log = new StringWriter();
        var bus = new DeviceBus(log);
        const int ports = 65536, pages = 200_000;
        for (int port = 0; port < ports; port++)
        {
            bus.WritePort((ushort)port, 1, 0);
        }
        for (ulong page = 0; page < pages; page++)
        {
            bus.ReadMemory(0xD000_0000UL + page * 0x1000 + 8, 4);
        }
        var lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(UnclaimedAccessLog.ReportedAddresses + 1, lines.Length);
        Assert.Contains("counted, not reported", lines[^1]);
        Assert.Equal(lines.Length, bus.UnclaimedAccesses.LinesWritten);
        var accesses = bus.UnclaimedAccesses.Accesses;
        Assert.True(accesses.Count <= UnclaimedAccessLog.TrackedEntries + 2, $"{accesses.Count} entries kept");
        // Nothing is lost from the counts: every access is in exactly one entry.
        Assert.Equal(ports + pages, bus.UnclaimedAccesses.Total);
        Assert.Equal(ports, accesses.Where(a => a.Space == AccessSpace.Port).Sum(a => a.Writes));
        Assert.Equal(pages, accesses.Where(a => a.Space == AccessSpace.Memory).Sum(a => a.Reads));
        // The first addresses are counted one by one, later ones by range, the rest in one overflow count.
        Assert.Equal("0x0", accesses.First(a => a.Space == AccessSpace.Port).Where);
        Assert.Contains(accesses, a => a.Space == AccessSpace.Port && a.Where == "0x100-0x1ff");
        Assert.Contains(accesses, a => a.Length == 0 && a.Where == "other");
    }

    /// <summary>An empty device place (docs/devices.md's map) reads as an open bus without a diagnostic, a stray
    /// address next to it is still reported, and a device claimed there later answers instead.</summary>
    [Fact]
    public void Probe_windows_answer_quietly_until_a_device_claims_them()
    {
        var log = new StringWriter();
        var bus = new DeviceBus(log);
        bus.AddProbeWindow(AccessSpace.Memory, 0xFEB0_0000, 0x1000);
        bus.AddProbeWindow(AccessSpace.Port, 0x1F0, 8);
        Assert.Equal(0xFFFF_FFFFUL, bus.ReadMemory(0xFEB0_0000, 4));
        Assert.Equal(0xFFu, bus.ReadPort(0x1F7, 1));
        bus.WriteMemory(0xFEB0_0070, 4, 1);
        Assert.Equal(3, bus.ProbeAccesses);
        Assert.Equal(0, bus.UnclaimedAccesses.Total);
        Assert.Equal("", log.ToString());
        Assert.Equal(0xFFFF_FFFFUL, bus.ReadMemory(0xFEB0_1000, 4)); // past the window: reported
        Assert.Equal(1, bus.UnclaimedAccesses.Total);
        uint? status = null;
        bus.Claim(new DebugExitPort(v => status = v), 0x1F0, 8);
        bus.WritePort(0x1F0, 4, 5);
        Assert.Equal(5u, status);
        Assert.Equal(3, bus.ProbeAccesses);
    }

    [Fact]
    public void Repeated_accesses_to_one_address_stay_one_entry_and_one_line()
    {
        var log = new StringWriter();
        var bus = new DeviceBus(log);
        for (int k = 0; k < 100_000; k++)
        {
            bus.WriteMemory(0xE000_0000, 8, (ulong)k);
        }
        Assert.Single(log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        var only = Assert.Single(bus.UnclaimedAccesses.Accesses);
        Assert.Equal((0L, 100_000L, "0xe0000000"), (only.Reads, only.Writes, only.Where));
    }
}
