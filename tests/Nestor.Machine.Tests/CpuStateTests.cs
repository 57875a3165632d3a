using Nestor.Machine.Processor;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The CPU's state as a value: saving materialises the lazy flags, loading restores a CPU that goes on
/// exactly as the saved one would have.</summary>
public class CpuStateTests
{
    [Fact]
    public void Saving_mid_computation_materialises_the_lazy_flags_and_a_restored_cpu_branches_on_them()
    {
        // Three instructions: mov, then a cmp whose flags are pending (lazy) when the budget ends; then a jb/jz pair.
        var m = new TestMachine(a =>
        {
            var below = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(rax, 3);
            a.cmp(rax, 5);       // CF=1 (3 < 5), ZF=0, SF=1
            a.jb(below);
            a.mov(rbx, 1);
            a.jmp(done);
            a.Label(ref below);
            a.mov(rbx, 2);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.Budget, m.Cpu.Run(2));
        var saved = m.Cpu.SaveState();
        Assert.Equal(FlagBits.Carry | FlagBits.Sign, saved.Rflags & FlagBits.Status & ~FlagBits.Parity & ~FlagBits.Adjust);
        Assert.Equal(2, saved.InstructionsRetired);
        Assert.Equal(3UL, saved.Registers[0]);

        // A second machine with the same code (no setup of its own), loaded with the value, takes the branch.
        var fresh = new TestMachine(a =>
        {
            var below = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(rax, 3);
            a.cmp(rax, 5);
            a.jb(below);
            a.mov(rbx, 1);
            a.jmp(done);
            a.Label(ref below);
            a.mov(rbx, 2);
            a.Label(ref done);
        });
        fresh.Cpu.Registers[0] = 99;
        fresh.Cpu.LoadState(in saved);
        Assert.Equal(saved.Rip, fresh.Cpu.Rip);
        Assert.Equal(2, fresh.Cpu.Counters.InstructionsRetired);
        var (stop, _) = fresh.RunToEnd();
        Assert.Equal(StopReason.PlatformStop, stop);
        Assert.Equal(2UL, fresh.Cpu.Registers[3]);
        Assert.Equal(3UL, fresh.Cpu.Registers[0]);
    }

    [Fact]
    public void A_state_value_is_a_copy_not_a_view_of_the_cpu()
    {
        var m = new TestMachine(a => a.mov(rcx, 7));
        var before = m.Cpu.SaveState();
        m.RunToEnd();
        Assert.Equal(7UL, m.Cpu.Registers[1]);
        Assert.Equal(0UL, before.Registers[1]); // the saved value did not follow the CPU
        var copy = before;
        copy.Registers[1] = 5;
        Assert.Equal(0UL, before.Registers[1]); // nor does a copy share its registers
    }

    [Fact]
    public void Loading_drops_decoded_instructions_so_code_changed_in_between_is_seen()
    {
        var m = new TestMachine(a => a.mov(ecx, 0x1234_5677));
        var start = m.Cpu.SaveState();
        m.RunToEnd();
        Assert.Equal(0x1234_5677UL, m.Cpu.Registers[1]);
        Assert.True(m.Cpu.ResidentDecodedPages > 0);
        // Rewrite the instruction's immediate behind the CPU's back (as a restore of RAM does), then load the state.
        ulong immediate = TestMachine.CodeAddress;
        while ((m.Memory.Read(immediate) & 0xFF) != 0x77)
        {
            immediate++;
        }
        m.Memory.WriteByte(immediate, 0x79);
        m.Cpu.LoadState(in start);
        Assert.Equal(0, m.Cpu.ResidentDecodedPages);
        m.RunToEnd();
        Assert.Equal(0x1234_5679UL, m.Cpu.Registers[1]);
    }

    [Fact]
    public void The_apic_timer_survives_a_save_and_load()
    {
        var apic = new LocalApic();
        apic.Write(0xF0, 0x1FF, 0);            // software enable
        apic.Write(0x3E0, 0xB, 0);             // divide by 1
        apic.Write(0x320, 0x20 | (1u << 17), 0); // periodic, vector 0x20
        apic.Write(0x380, 100, 10);            // fires at 110
        var saved = apic.Save();
        var restored = new LocalApic();
        restored.Restore(in saved);
        Assert.Equal(110, restored.Deadline);
        Assert.Equal(apic.Read(0x390, 50), restored.Read(0x390, 50));
        restored.Tick(110);
        Assert.Equal(0x20, restored.PendingVector);
        Assert.Equal(210, restored.Deadline);
    }
}
