using Iced.Intel;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>A CPU over <see cref="TestMemory"/> running 64-bit code at 0x1000 (paging off unless the test turns it
/// on), with labels' addresses known, for tests that drive <see cref="Cpu.Run"/> themselves: call by call, with a
/// stop request, or to a shutdown.</summary>
internal sealed class TestMachine
{
    public const ulong CodeAddress = 0x1000;

    public sealed class Platform : IPlatform
    {
        public bool Stop;
        /// <summary>How many times the CPU looked at <see cref="StopRequested"/>.</summary>
        public int StopChecks;
        public bool StopRequested { get { StopChecks++; return Stop; } }
        /// <summary>The CPU's <see cref="Cpu.InstructionAddress"/> at the last port write.</summary>
        public ulong PortWriteAt;
        public Cpu? Cpu;
        /// <summary>Every port access, in order: (port, size, value, write).</summary>
        public readonly List<(ushort Port, int Size, uint Value, bool Write)> PortAccesses = [];
        /// <summary>What a port read returns (the reads so far are counted by <see cref="PortAccesses"/>); 0 without it.</summary>
        public Func<ushort, int, uint>? PortSource;
        public uint PortRead(ushort port, int size)
        {
            uint value = PortSource?.Invoke(port, size) ?? 0;
            PortAccesses.Add((port, size, value, false));
            return value;
        }
        public void PortWrite(ushort port, int size, uint value)
        {
            PortAccesses.Add((port, size, value, true));
            PortWriteAt = Cpu?.InstructionAddress ?? 0;
            Stop |= port == 0xF4;
        }
        public ulong MmioRead(ulong physical, int size) => ulong.MaxValue;
        public void MmioWrite(ulong physical, int size, ulong value) { }
        /// <summary>What CPUID answers (before the CPU's own per-processor fields); zeros without it.</summary>
        public Func<uint, uint, (uint, uint, uint, uint)>? CpuidSource;
        public (uint Eax, uint Ebx, uint Ecx, uint Edx) Cpuid(uint leaf, uint subleaf) => CpuidSource?.Invoke(leaf, subleaf) ?? (0, 0, 0, 0);
    }

    public readonly Cpu Cpu;
    public readonly TestMemory Memory;
    public readonly Platform Host = new();
    private readonly AssemblerResult assembled;

    /// <summary>Assembles <paramref name="emit"/>, followed by the exit (OUT to port 0xF4), at 0x1000.</summary>
    public TestMachine(Action<Assembler> emit, int megabytes = 8, Action<Cpu>? setup = null, bool exit = true)
    {
        Memory = new TestMemory(megabytes);
        Cpu = new Cpu(Memory.Memory, Host, new MmuConfiguration(null, TlbConfiguration.Default, 0), (ulong)megabytes << 20);
        Host.Cpu = Cpu;
        var a = new Assembler(64);
        emit(a);
        if (exit)
        {
            a.mov(dx, 0xF4);
            a.@out(dx, al);
        }
        using var stream = new MemoryStream();
        assembled = a.Assemble(new StreamCodeWriter(stream), CodeAddress, BlockEncoderOptions.ReturnNewInstructionOffsets);
        byte[] code = stream.ToArray();
        for (int i = 0; i < code.Length; i++)
        {
            Memory.WriteByte(CodeAddress + (ulong)i, code[i]);
        }
        Cpu.Cs = new Segment { Selector = 8, Attributes = 0xA09B };
        Cpu.Efer = 0x500;
        Cpu.Rip = CodeAddress;
        Memory.Write(0x6008, 0x00AF_9A00_0000_FFFFUL); // GDT: 0x08 = 64-bit code, for exception delivery
        Cpu.GdtBase = 0x6000;
        Cpu.GdtLimit = 15;
        Cpu.Registers[4] = 0x8000; // RSP
        setup?.Invoke(Cpu);
        Cpu.ControlStateChanged();
    }

    public ulong Address(Label label) => assembled.GetLabelRIP(label);

    /// <summary>Calls Run until it returns something other than <see cref="StopReason.Budget"/>; returns that and how
    /// many calls returned Budget.</summary>
    public (StopReason Stop, int Budgets) RunToEnd(long budget = 1_000_000, int maxCalls = 1000)
    {
        for (int calls = 0; calls < maxCalls; calls++)
        {
            var stop = Cpu.Run(budget);
            if (stop != StopReason.Budget)
            {
                return (stop, calls);
            }
        }
        throw new InvalidOperationException($"still running after {maxCalls} calls of Run({budget})");
    }

    /// <summary>Emits a drop to ring 3 at <paramref name="target"/> by SYSEXITQ (SDM Vol. 2B SYSEXIT: CS = SYSENTER_CS +
    /// 32 | 3 = 0x33, SS = +40, RIP from RDX, RSP from RCX = 0x7800), with SYSENTER_CS 0x10.</summary>
    public static void SysexitToRing3(Assembler a, Label target)
    {
        a.mov(ecx, Nestor.Machine.Architecture.Msr.SysenterCs);
        a.mov(eax, 0x10);
        a.xor(edx, edx);
        a.wrmsr();
        a.lea(rdx, __[target]);
        a.mov(ecx, 0x7800);
        a.sysexitq();
    }

    /// <summary>Emits an interrupt gate for <paramref name="vector"/> to <paramref name="handler"/> in a 64-bit IDT
    /// at 0x2000 (selector 8, DPL 0) and loads IDTR (limit 0xFFF) with it.</summary>
    public static void Gate(Assembler a, int vector, Label handler)
    {
        a.lea(rax, __[handler]);
        a.mov(__word_ptr[0x2000 + vector * 16], ax);
        a.mov(__word_ptr[0x2002 + vector * 16], 8);
        a.mov(__word_ptr[0x2004 + vector * 16], 0x8E00);
        a.shr(rax, 16);
        a.mov(__word_ptr[0x2006 + vector * 16], ax);
        a.mov(__dword_ptr[0x2008 + vector * 16], 0);
        a.mov(__word_ptr[0x3000], 0xFFF);
        a.mov(__qword_ptr[0x3002], 0x2000);
        a.lidt(__[0x3000]);
    }
}
