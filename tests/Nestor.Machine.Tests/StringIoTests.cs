using Iced.Intel;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>INS and OUTS (SDM Vol. 2B INS/INSB/INSW/INSD, OUTS/OUTSB/OUTSW/OUTSD): the port is DX, INS stores at
/// ES:RDI, OUTS loads from DS:RSI (segment-overridable), DF chooses the direction, REP repeats RCX times, 67h selects
/// EDI/ESI/ECX; each item is one platform access; in non-root operation with I/O exiting, one VM exit per item.</summary>
public class StringIoTests
{
    private const ulong Buffer = 0x20000;
    private const ushort DataPort = 0x1F0;

    /// <summary>A port whose reads return 0x1100 + n on the n-th read (n from 0), so order and count show.</summary>
    private static Func<ushort, int, uint> Counting()
    {
        uint n = 0;
        return (port, size) => (0x1100 + n++) & (size == 1 ? 0xFFu : size == 2 ? 0xFFFFu : 0xFFFF_FFFFu);
    }

    private static List<(ushort Port, int Size, uint Value, bool Write)> Accesses(TestMachine m, bool write) =>
        m.Host.PortAccesses.Where(a => a.Write == write && a.Port != 0xF4).ToList();

    [Fact]
    public void Rep_insw_stores_each_word_read_from_dx_at_rdi_upwards()
    {
        const int count = 5;
        var m = new TestMachine(a =>
        {
            a.mov(dx, DataPort);
            a.mov(edi, (uint)Buffer);
            a.mov(ecx, count);
            a.cld();
            a.rep.insw();
        });
        m.Host.PortSource = Counting();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        var reads = Accesses(m, write: false);
        Assert.Equal(count, reads.Count);
        Assert.All(reads, r => Assert.Equal((DataPort, 2), (r.Port, r.Size)));
        for (int n = 0; n < count; n++)
        {
            Assert.Equal(reads[n].Value, (uint)m.Memory.Read(Buffer + (ulong)(2 * n)) & 0xFFFF);
        }
        Assert.Equal(0UL, m.Memory.Read(Buffer + 2 * count) & 0xFFFF); // not one word more
        Assert.Equal(0UL, m.Cpu.Registers[1]);
        Assert.Equal(Buffer + 2 * count, m.Cpu.Registers[7]);
        Assert.Equal(count, m.Cpu.Counters.PortReads);
        Assert.Equal(1, m.Cpu.Counters.RetiredByClass[(int)InstructionClass.String]);
    }

    [Fact]
    public void Rep_outsb_with_df_set_writes_the_bytes_downwards_from_rsi()
    {
        byte[] text = "Nestor"u8.ToArray();
        var m = new TestMachine(a =>
        {
            a.mov(dx, 0x3F8);
            a.mov(esi, (uint)(Buffer + (ulong)text.Length - 1));
            a.mov(ecx, text.Length);
            a.std();
            a.rep.outsb();
            a.cld();
        });
        for (int n = 0; n < text.Length; n++)
        {
            m.Memory.WriteByte(Buffer + (ulong)n, text[n]);
        }
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        var writes = Accesses(m, write: true);
        Assert.Equal(text.Reverse().Select(b => (uint)b), writes.Select(w => w.Value));
        Assert.All(writes, w => Assert.Equal(((ushort)0x3F8, 1), (w.Port, w.Size)));
        Assert.Equal(Buffer - 1, m.Cpu.Registers[6]);
        Assert.Equal(0UL, m.Cpu.Registers[1]);
    }

    [Fact]
    public void Outsd_without_rep_moves_one_item_and_takes_an_fs_override()
    {
        const ulong fsBase = 0x30000;
        var m = new TestMachine(a =>
        {
            a.mov(dx, 0x5E0);
            a.mov(esi, 0x40);
            a.mov(ecx, 7); // no REP: RCX is not used
            a.db(0x64, 0x6F); // fs outsd
        }, setup: cpu => cpu.Fs = cpu.Fs with { Base = fsBase });
        m.Memory.Write(fsBase + 0x40, 0xCAFE_F00DUL);
        m.Memory.Write(0x40, 0x1111_2222UL);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        var writes = Accesses(m, write: true);
        Assert.Equal([((ushort)0x5E0, 4, 0xCAFE_F00Du, true)], writes);
        Assert.Equal(0x44UL, m.Cpu.Registers[6]);
        Assert.Equal(7UL, m.Cpu.Registers[1]);
    }

    [Fact]
    public void An_address_size_prefix_uses_edi_and_ecx_and_clears_their_upper_halves()
    {
        var m = new TestMachine(a =>
        {
            a.mov(dx, DataPort);
            a.mov(rdi, 0x7777_0000_0000_0000UL | Buffer);
            a.mov(rcx, 0x5555_0000_0000_0003UL);
            a.db(0x67, 0xF3, 0x6C); // addr32 rep insb: ECX = 3 items at EDI
        });
        m.Host.PortSource = Counting();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        var reads = Accesses(m, write: false);
        Assert.Equal(3, reads.Count);
        Assert.Equal(Buffer + 3, m.Cpu.Registers[7]); // EDI's upper half cleared: the address was EDI's
        Assert.Equal(0UL, m.Cpu.Registers[1]);
        for (int n = 0; n < 3; n++)
        {
            Assert.Equal(reads[n].Value, (uint)m.Memory.Read(Buffer + (ulong)n) & 0xFF);
        }
    }

    [Fact]
    public void A_stop_request_suspends_rep_outsb_after_the_item_that_asked_with_rip_at_it()
    {
        // Port 0xF4 is the test machine's exit port: the first item asks for the stop.
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            a.mov(dx, 0xF4);
            a.mov(esi, (uint)Buffer);
            a.mov(ecx, 10);
            at = a.CreateLabel();
            a.Label(ref at);
            a.rep.outsb();
        }, exit: false);
        Assert.Equal(StopReason.PlatformStop, m.Cpu.Run(1000));
        Assert.Equal(m.Address(at), m.Cpu.Rip);
        Assert.Equal(9UL, m.Cpu.Registers[1]);
        Assert.Equal(Buffer + 1, m.Cpu.Registers[6]);
        Assert.Single(m.Host.PortAccesses);
        Assert.Equal(3, m.Cpu.Counters.InstructionsRetired); // the REP is suspended, not retired
    }

    [Fact]
    public void A_huge_rep_insb_is_suspended_for_the_slice_and_resumes()
    {
        const ulong huge = 1UL << 40, slice = 1UL << 20;
        var m = new TestMachine(a =>
        {
            a.mov(dx, DataPort);
            a.mov(rdi, 0x100000);
            a.mov(rcx, huge);
            a.std(); // downwards through the low megabyte, so the store stays in RAM
            a.rep.insb();
        }, megabytes: 4);
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal(huge - slice, m.Cpu.Registers[1]);
        Assert.Equal(0x100000 - slice, m.Cpu.Registers[7]);
        Assert.Equal((long)slice, m.Cpu.Counters.PortReads);
    }

    private sealed class IoMonitor : IVmExitHandler
    {
        public readonly List<(ulong Qualification, ulong GuestLinear, ulong Rcx)> Exits = [];

        public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
        {
            if (exit.Reason == ExitReason.IoInstruction)
            {
                Exits.Add((exit.Qualification, exit.GuestLinear, cpu.Registers[1]));
            }
            return VmExitAction.Complete;
        }
    }

    [Fact]
    public void In_non_root_operation_rep_insw_exits_once_per_item_with_string_rep_and_the_item_address()
    {
        const int count = 4;
        var m = new TestMachine(a =>
        {
            a.mov(dx, DataPort);
            a.mov(edi, (uint)Buffer);
            a.mov(ecx, count);
            a.rep.insw();
        }, exit: false);
        m.Host.PortSource = Counting();
        var monitor = new IoMonitor();
        m.Cpu.EnterNonRoot(new ExecutionControls { IoExiting = true }, monitor);
        m.Cpu.Run(4);
        Assert.Equal(count, monitor.Exits.Count);
        for (int n = 0; n < count; n++)
        {
            var (qualification, linear, rcx) = monitor.Exits[n];
            Assert.Equal(1UL, qualification & 7); // size - 1
            Assert.NotEqual(0UL, qualification & (1 << 3)); // IN
            Assert.NotEqual(0UL, qualification & (1 << 4)); // string
            Assert.NotEqual(0UL, qualification & (1 << 5)); // REP
            Assert.Equal(0UL, qualification & (1 << 6)); // port in DX
            Assert.Equal((ulong)DataPort, qualification >> 16);
            Assert.Equal(Buffer + (ulong)(2 * n), linear);
            Assert.Equal((ulong)(count - n), rcx); // the exit comes before the item, with that iteration's RCX
        }
        Assert.Equal(count, Accesses(m, write: false).Count);
        Assert.Equal(0x1103UL, m.Memory.Read(Buffer + 6) & 0xFFFF);
    }
}
