using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.Smp;

/// <summary>Processors on one memory keep their decoded-instruction caches coherent (Intel SDM Vol. 3A §8.1.3,
/// cross-modifying code): when one processor writes a page another has decoded, the other executes the new bytes,
/// whether the writer's write fast path held the page before the other decoded it or not.</summary>
public class CodeCoherenceTests
{
    private const ulong Shared = 0x40000;

    [Fact]
    public void A_write_by_one_processor_drops_what_another_decoded_from_the_page()
    {
        var m = new SmpMachine(2);
        // CPU 1 runs `mov eax, imm32; out 0xF4, al` from the shared page; CPU 0 patches the immediate (at +1) twice:
        // once before CPU 1 ever decoded the page (so CPU 0's write fast path holds it), once after.
        m.Load(1, Shared, a => a.mov(eax, 1), stack: 0xA000);
        m.Load(0, 0x20000, a =>
        {
            a.mov(eax, (uint)Shared + 1);
            a.mov(__dword_ptr[rax], 2);
            a.mov(dx, 0xF4);
            a.@out(dx, al);                          // stop: CPU 1 runs
            a.mov(eax, (uint)Shared + 1);
            a.mov(__dword_ptr[rax], 3);              // the page is CPU 1's decoded code now
        }, stack: 0x9000);
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        Assert.Equal(2UL, m.Cpus[1].Registers[0]);
        m.Cpus[1].Rip = Shared;
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        Assert.Equal(3UL, m.Cpus[1].Registers[0]);
        Assert.True(m.Cpus[1].Counters.DecodeCacheInvalidations >= 1);
    }

    [Fact]
    public void A_device_write_reported_to_one_processor_drops_every_processors_decoded_copy()
    {
        var m = new SmpMachine(2);
        m.Load(1, Shared, a => a.mov(eax, 1), stack: 0xA000);
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        m.Memory.WriteByte(Shared + 1, 7);
        m.Cpus[0].PhysicalMemoryWritten(new Nestor.Machine.Addresses.HostPhysical(Shared + 1), 1);
        m.Cpus[1].Rip = Shared;
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        Assert.Equal(7UL, m.Cpus[1].Registers[0]);
    }
}
