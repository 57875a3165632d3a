using Iced.Intel;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;

namespace Nestor.Machine.Tests.RealMode;

/// <summary>A CPU as a processor leaves reset or an AP leaves its start-up IPI (SDM Vol. 3A §9.1.1, Table 9-1): real
/// mode, CS = <c>selector</c> with base selector × 16 and a 64 KiB limit, the data segments at 0 with 64 KiB limits,
/// CR0 = ET. Code is assembled by Iced at its bitness and placed at physical addresses the test names.</summary>
internal sealed class RealModeMachine
{
    public readonly TestMemory Memory;
    public readonly TestMachine.Platform Host = new();
    public readonly Cpu Cpu;

    public RealModeMachine(ushort codeSelector, ushort ip = 0, int megabytes = 4)
    {
        Memory = new TestMemory(megabytes);
        Cpu = new Cpu(Memory.Memory, Host, new MmuConfiguration(null, TlbConfiguration.Default, 0), (ulong)megabytes << 20);
        Host.Cpu = Cpu;
        Cpu.Cs = new Segment { Selector = codeSelector, Base = (ulong)codeSelector << 4, Limit = 0xFFFF, Attributes = 0x9B };
        var data = new Segment { Limit = 0xFFFF, Attributes = 0x93 };
        Cpu.Ds = data;
        Cpu.Es = data;
        Cpu.Ss = data;
        Cpu.Fs = data;
        Cpu.Gs = data;
        Cpu.Cr0 = 0x10;
        Cpu.Efer = 0;
        Cpu.IdtBase = 0;
        Cpu.IdtLimit = 0x3FF;
        Cpu.Rip = ip;
        Cpu.ControlStateChanged();
    }

    /// <summary>Assembles <paramref name="emit"/> as <paramref name="bitness"/>-bit code whose first instruction's
    /// offset (IP) is <paramref name="ip"/> and places it at physical <paramref name="physical"/>.</summary>
    public void Place(int bitness, ulong physical, ulong ip, Action<Assembler> emit)
    {
        var a = new Assembler(bitness);
        emit(a);
        using var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), ip);
        byte[] code = stream.ToArray();
        for (int n = 0; n < code.Length; n++)
        {
            Memory.WriteByte(physical + (ulong)n, code[n]);
        }
    }

    /// <summary>Writes bytes at a physical address.</summary>
    public void Poke(ulong physical, params byte[] bytes)
    {
        for (int n = 0; n < bytes.Length; n++)
        {
            Memory.WriteByte(physical + (ulong)n, bytes[n]);
        }
    }

    public ushort ReadWord(ulong physical) => (ushort)Memory.Read(physical);

    public uint ReadDword(ulong physical) => (uint)Memory.Read(physical);

    /// <summary>Runs until the guest writes port 0xF4 (or the budget ends, which fails the test).</summary>
    public void RunToExit(long budget = 100_000)
    {
        var stop = Cpu.Run(budget);
        Assert.True(stop == StopReason.PlatformStop,
            $"stopped with {stop} at CS:IP {Cpu.Cs.Selector:X4}:{Cpu.Rip:X} (CR0 {Cpu.Cr0:X}); unmodelled: {Cpu.LastUnmodelledInstruction?.Mnemonic ?? "none"}");
    }
}
