using Iced.Intel;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The decoded-instruction cache stays within its bounds (per physical page's aliases, pages in all,
/// instruction slots in all) whatever the guest executes, and evicted code runs the same when it comes back.</summary>
public class DecodeCacheTests
{
    /// <summary>One physical page of code mapped at many linear pages and called through each: every alias is a
    /// decoded page of its own, but no more than <see cref="Cpu.MaxAliases"/> are kept; each call still returns the
    /// right value (RIP-relative LEA: the alias's own address).</summary>
    [Fact]
    public void Aliases_of_one_physical_page_are_bounded_and_still_run_correctly()
    {
        const ulong window = 0x40_0000_0000, code = 0x20000;
        const int aliases = 64;
        var m = new TestMachine(a =>
        {
            var loop = a.CreateLabel();
            a.mov(rsi, window);
            a.xor(r8d, r8d);          // sum of (returned address - alias base)
            a.mov(r9d, aliases);
            a.Label(ref loop);
            a.call(rsi);
            a.sub(rax, rsi);
            a.add(r8, rax);
            a.add(rsi, 0x1000);
            a.dec(r9d);
            a.jnz(loop);
        }, setup: cpu =>
        {
            cpu.Cr0 = 0x8001_0033;
            cpu.Efer = 0xD00;
        });
        // The shared page: lea rax, [rip + 0]; ret. RAX = the address after the LEA, at whichever alias.
        byte[] function = [0x48, 0x8D, 0x05, 0, 0, 0, 0, 0xC3];
        for (int i = 0; i < function.Length; i++)
        {
            m.Memory.WriteByte(code + (ulong)i, function[i]);
        }
        m.Memory.Map(0x1000, 0x1000, TestMemory.P | TestMemory.W);
        m.Memory.Map(0x7000, 0x7000, TestMemory.P | TestMemory.W);
        for (int i = 0; i < aliases; i++)
        {
            m.Memory.Map(window + (ulong)i * 0x1000, code, TestMemory.P | TestMemory.W);
        }
        m.Cpu.Cr3 = m.Memory.Cr3;
        m.Cpu.ControlStateChanged();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(7UL * aliases, m.Cpu.Registers[8]); // each call saw its own alias's RIP
        Assert.Equal(aliases - Cpu.MaxAliases, m.Cpu.Counters.DecodeCacheEvictions);
        Assert.Equal(1 + Cpu.MaxAliases, m.Cpu.ResidentDecodedPages); // the caller's page and the last aliases
    }

    /// <summary>A straight line of single-byte instructions longer than the cache can hold, executed twice: the
    /// cache stays within its instruction bound, and the second pass (decoding the evicted pages again) counts the
    /// same.</summary>
    [Fact]
    public void Straight_line_code_beyond_the_instruction_bound_is_evicted_and_runs_again()
    {
        const ulong start = 0x100000, length = 2UL << 20; // 2 Mi one-byte NOPs, four times the bound
        var m = new TestMachine(a =>
        {
            var back = a.CreateLabel();
            a.mov(rdi, start);
            a.mov(rcx, length);
            a.mov(eax, 0x90);
            a.rep.stosb();
            a.mov(r12d, 2);
            a.Label(ref back);
            a.mov(rax, start);
            a.call(rax);
            a.dec(r12d);
            a.jnz(back);
        }, megabytes: 4);
        m.Memory.WriteByte(start + length, 0xC3); // ret at the end of the sled
        long peak = 0;
        StopReason stop;
        while ((stop = m.Cpu.Run(100_000)) == StopReason.Budget)
        {
            peak = Math.Max(peak, m.Cpu.ResidentInstructionSlots);
            Assert.InRange(m.Cpu.ResidentDecodedPages, 0, Cpu.MaxResidentPages);
        }
        Assert.Equal(StopReason.PlatformStop, stop);
        Assert.InRange(peak, Cpu.MaxResidentInstructions / 2, Cpu.MaxResidentInstructions + 4096);
        Assert.True(m.Cpu.Counters.DecodeCacheEvictions > 0);
        // 3 MOVs, the REP, MOV R12D, then 2 × (MOV, CALL, the sled, RET, DEC, JNZ), then MOV DX and OUT.
        Assert.Equal(5 + 2 * (2 + (long)length + 3) + 2, m.Cpu.Counters.InstructionsRetired);
        Assert.Equal(0UL, m.Cpu.Registers[12]);
    }

    /// <summary>More pages than the cache keeps, one instruction each (a JMP to the next page): the page count
    /// stays within its bound, and the chain, run twice, still arrives.</summary>
    [Fact]
    public void Many_pages_of_one_instruction_each_stay_within_the_page_bound()
    {
        const ulong start = 0x100000;
        const int pages = Cpu.MaxResidentPages + 1000;
        var m = new TestMachine(a =>
        {
            var back = a.CreateLabel();
            a.mov(r12d, 2);
            a.Label(ref back);
            a.mov(rax, start);
            a.call(rax);
            a.dec(r12d);
            a.jnz(back);
        }, megabytes: 24);
        for (int p = 0; p < pages; p++)
        {
            ulong at = start + (ulong)p * 0x1000;
            if (p == pages - 1)
            {
                m.Memory.WriteByte(at, 0xC3); // ret
                break;
            }
            m.Memory.WriteByte(at, 0xE9);     // jmp rel32 to the next page
            uint displacement = 0x1000 - 5;
            for (int b = 0; b < 4; b++)
            {
                m.Memory.WriteByte(at + 1 + (ulong)b, (byte)(displacement >> (8 * b)));
            }
        }
        int peak = 0;
        StopReason stop;
        while ((stop = m.Cpu.Run(1000)) == StopReason.Budget)
        {
            peak = Math.Max(peak, m.Cpu.ResidentDecodedPages);
        }
        Assert.Equal(StopReason.PlatformStop, stop);
        Assert.InRange(peak, Cpu.MaxResidentPages * 3 / 4, Cpu.MaxResidentPages);
        // MOV R12D, then 2 × (MOV, CALL, pages - 1 JMPs, RET, DEC, JNZ), then MOV DX and OUT.
        Assert.Equal(1 + 2 * (2 + (long)pages + 2) + 2, m.Cpu.Counters.InstructionsRetired);
    }

    /// <summary>A write to a page whose oldest alias was evicted still drops the others (self-modifying code is
    /// still seen after evictions).</summary>
    [Fact]
    public void Self_modifying_code_is_seen_after_evictions()
    {
        const ulong window = 0x40_0000_0000, code = 0x20000;
        var m = new TestMachine(a =>
        {
            var loop = a.CreateLabel();
            a.mov(rsi, window);
            a.mov(r9d, Cpu.MaxAliases + 4);
            a.Label(ref loop);
            a.call(rsi);              // mov eax, imm32; ret
            a.add(rsi, 0x1000);
            a.dec(r9d);
            a.jnz(loop);
            a.mov(__dword_ptr[code + 1], 0x2222); // patch the immediate (identity-mapped too)
            a.mov(rsi, window + 0x1000 * (Cpu.MaxAliases + 3)); // the last alias, still resident
            a.call(rsi);
            a.mov(r10, rax);
        }, setup: cpu =>
        {
            cpu.Cr0 = 0x8001_0033;
            cpu.Efer = 0xD00;
        });
        byte[] function = [0xB8, 0x11, 0x11, 0, 0, 0xC3];
        for (int i = 0; i < function.Length; i++)
        {
            m.Memory.WriteByte(code + (ulong)i, function[i]);
        }
        m.Memory.Map(0x1000, 0x1000, TestMemory.P | TestMemory.W);
        m.Memory.Map(0x7000, 0x7000, TestMemory.P | TestMemory.W);
        m.Memory.Map(code, code, TestMemory.P | TestMemory.W);
        for (int i = 0; i < Cpu.MaxAliases + 4; i++)
        {
            m.Memory.Map(window + (ulong)i * 0x1000, code, TestMemory.P | TestMemory.W);
        }
        m.Cpu.Cr3 = m.Memory.Cr3;
        m.Cpu.ControlStateChanged();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x2222UL, m.Cpu.Registers[10]);
        Assert.Equal(4, m.Cpu.Counters.DecodeCacheEvictions);
        Assert.Equal(1, m.Cpu.Counters.DecodeCacheInvalidations);
    }
}
