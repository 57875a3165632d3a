using Iced.Intel;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.Smp;

/// <summary>Several CPUs on one <see cref="TestMemory"/>, their APICs on one <see cref="ApicBus"/> (APIC ID = index),
/// as SimEngine joins a VM's vCPUs: CPU 0 is the bootstrap processor, the others wait for a start-up IPI unless a
/// test gives them 64-bit code of their own (<see cref="Load"/>).</summary>
internal sealed class SmpMachine
{
    public readonly TestMemory Memory;
    public readonly Cpu[] Cpus;
    public readonly TestMachine.Platform Host = new();
    public readonly ApicBus Bus;

    public SmpMachine(int count, int megabytes = 8)
    {
        Memory = new TestMemory(megabytes);
        Cpus = new Cpu[count];
        for (int i = 0; i < count; i++)
        {
            Cpus[i] = new Cpu(Memory.Memory, Host, new MmuConfiguration(null, TlbConfiguration.Default, 0), (ulong)megabytes << 20);
            if (i > 0)
            {
                Cpus[i].LoadState(Cpu.InitState(LocalApicState.Reset));
            }
        }
        Cpu.ShareMemory(Cpus);
        Bus = new ApicBus(Cpus);
        Memory.Write(0x6008, 0x00AF_9A00_0000_FFFFUL); // GDT: 0x08 = 64-bit code, for exception delivery
    }

    /// <summary>Assembles <paramref name="emit"/> (then OUT to port 0xF4 unless <paramref name="exit"/> is false) at
    /// <paramref name="address"/> and puts <paramref name="cpu"/> there in 64-bit mode, running (an application
    /// processor keeps IA32_APIC_BASE without BSP), with its stack below <paramref name="stack"/>.</summary>
    public void Load(int cpu, ulong address, Action<Assembler> emit, ulong stack, bool exit = true)
    {
        var a = new Assembler(64);
        emit(a);
        if (exit)
        {
            a.mov(dx, 0xF4);
            a.@out(dx, al);
        }
        using var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), address);
        byte[] code = stream.ToArray();
        for (int i = 0; i < code.Length; i++)
        {
            Memory.WriteByte(address + (ulong)i, code[i]);
        }
        var c = Cpus[cpu];
        var state = c.SaveState();
        state.WaitingForStartup = false;
        state.Cs = new Segment { Selector = 8, Attributes = 0xA09B };
        state.Ds = state.Es = state.Ss = state.Fs = state.Gs = default;
        state.Cr0 = 0x11;
        state.Efer = 0x500;
        state.Rip = address;
        state.GdtBase = 0x6000;
        state.GdtLimit = 15;
        state.Registers[4] = stack;
        c.LoadState(in state);
        c.ControlStateChanged();
    }

    /// <summary>Runs <paramref name="cpu"/> until it stops (the exit port, HLT, a fault it cannot deliver).</summary>
    public StopReason Run(int cpu, long budget = 1_000_000)
    {
        Host.Stop = false;
        for (int calls = 0; calls < 100; calls++)
        {
            var stop = Cpus[cpu].Run(budget);
            if (stop != StopReason.Budget)
            {
                Host.Stop = false;
                return stop;
            }
        }
        throw new InvalidOperationException($"CPU {cpu} still running");
    }

    /// <summary>Whether <paramref name="vector"/> is requested (IRR) at <paramref name="cpu"/>'s APIC.</summary>
    public bool Requested(int cpu, int vector) => Cpus[cpu].Apic.Save().Requests.Get(vector);
}
