using System.Diagnostics;
using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary><c>--clock host</c> at the CPU: the clock follows a <see cref="HostTime"/> (QEMU TCG's real-time
/// clock), against the default, where it counts retired instructions exactly.</summary>
public class HostTimeTests
{
    private const uint Apic = 0xFEE0_0000;
    private const long NominalHz = 1_000_000_000;

    // RDTSC before and after a loop of `iterations` (3 instructions each: dec, jnz and, once, the mov): R8 = the
    // TSC's advance across the loop.
    private static TestMachine TimedLoop(int iterations, HostTime? hostTime) => new(a =>
    {
        var loop = a.CreateLabel();
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.mov(r9, rax);
        a.mov(ecx, iterations);
        a.Label(ref loop);
        a.dec(ecx);
        a.jnz(loop);
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.sub(rax, r9);
        a.mov(r8, rax);
    }, setup: cpu => cpu.HostTime = hostTime);

    [Fact]
    public void The_virtual_clock_counts_exactly_the_instructions_between_two_rdtscs()
    {
        var m = TimedLoop(200_000, hostTime: null);
        m.RunToEnd();
        // rdtsc retires, then shl, or, mov, mov, 2 × 200,000 loop instructions: the second RDTSC reads 405,005 later.
        Assert.Equal(5UL + 2 * 200_000, m.Cpu.Registers[8]);
        Assert.Equal(0, m.Cpu.HostTimeCycles);
    }

    [Fact]
    public void Under_host_time_the_tsc_advances_with_the_host_clock_not_the_instruction_count()
    {
        var hostTime = new HostTime(0, NominalHz);
        var m = TimedLoop(2_000_000, hostTime);
        var wall = Stopwatch.StartNew();
        m.RunToEnd();
        wall.Stop();
        ulong advance = m.Cpu.Registers[8];
        const ulong instructions = 5 + 2 * 2_000_000;
        // The interpreter retires far fewer than one instruction per nanosecond, so 4 M instructions take more than
        // 4 M ns of host time (4 ms; several times that in practice), and the TSC, at 1 GHz nominal, says so; it can
        // never run ahead of the host's time since the run began (no idling here).
        Assert.True(advance > instructions, $"the TSC advanced {advance} over {instructions} instructions: it did not follow the host's time");
        Assert.True(advance <= (ulong)(wall.Elapsed.TotalSeconds * NominalHz) + 1_000, $"the TSC advanced {advance} cycles in {wall.Elapsed.TotalMilliseconds} ms of host time");
        Assert.True(m.Cpu.HostTimeCycles > 0);
        Assert.Equal(0, hostTime.Skipped);
    }

    [Fact]
    public void Under_host_time_a_halt_until_the_tsc_deadline_skips_the_wait_and_time_goes_on_from_there()
    {
        // A deadline 10 s ahead: slept, the test would take 10 s; skipped (QEMU's icount sleep=off), it takes none,
        // and the TSC after the wake-up is past the deadline and stays ahead of the host's own time since.
        var hostTime = new HostTime(0, NominalHz);
        var m = new TestMachine(a =>
        {
            LocalApicModelTests.CountingHandler(a, 0x41);
            LocalApicModelTests.EnableApic(a);
            a.xor(r13d, r13d);
            a.mov(eax, Apic + 0x320);
            a.mov(__dword_ptr[rax], (2 << 17) | 0x41); // LVT timer: TSC-deadline mode, vector 0x41
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.mov(r8, 10_000_000_000);
            a.add(rax, r8);
            a.mov(r8, rax);                            // the deadline, 10 s of nominal time ahead
            a.mov(rdx, rax);
            a.shr(rdx, 32);
            a.mov(ecx, Msr.TscDeadline);
            a.wrmsr();
            a.sti();
            a.hlt();
            a.cli();
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.mov(r10, rax);                           // when it woke
        }, setup: cpu => cpu.HostTime = hostTime);
        var wall = Stopwatch.StartNew();
        m.RunToEnd();
        Assert.True(wall.Elapsed < TimeSpan.FromSeconds(10), "the halt was slept in host time instead of skipped");
        Assert.Equal(1UL, m.Cpu.Registers[13]);
        Assert.True(m.Cpu.Registers[10] >= m.Cpu.Registers[8], "woke before the deadline");
        Assert.True(hostTime.Skipped > 9_000_000_000, $"skipped {hostTime.Skipped} cycles");
        Assert.True(hostTime.Now >= (long)m.Cpu.Registers[8], "the VM's time fell back behind the deadline it skipped to");
    }
}
