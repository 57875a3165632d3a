using Iced.Intel;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

public class InstructionAddressTests
{
    /// <summary>While an instruction executes, RIP is already past it; <see cref="Cpu.InstructionAddress"/> is the
    /// instruction itself, for a device that reports which instruction reached it.</summary>
    [Fact]
    public void A_device_sees_the_address_of_the_instruction_that_reached_it()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            a.mov(dx, 0x80);
            at = a.CreateLabel();
            a.Label(ref at);
            a.@out(dx, al);
            a.hlt();
        }, exit: false);
        Assert.Equal(StopReason.Halted, m.RunToEnd().Stop);
        Assert.Equal(m.Address(at), m.Host.PortWriteAt);
        Assert.NotEqual(m.Address(at), m.Cpu.Rip);
    }
}
