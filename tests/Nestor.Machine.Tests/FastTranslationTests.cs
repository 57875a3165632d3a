using Iced.Intel;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;
using Nestor.Machine.Tests.Smp;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The CPU's fetch, read and write translation arrays (Cpu.TranslationCaches.cs) stand for TLB lookups and
/// must change nothing but speed: the same guest run with them on and off ends with the same registers, memory, TLB
/// contents and counters, although it touches more pages than the TLBs hold in an order that makes the TLB evict
/// entries the arrays still hold, and flushes by INVLPG, CR3 writes and a CR0.WP toggle, and rewrites its own code.</summary>
public class FastTranslationTests
{
    private const ulong Code = 0x10_0000;          // the main loop's code (identity-mapped, global)
    private const ulong Functions = 0x11_0000;     // six functions, 64 KiB apart: all in the TLB set of Code's page
    private const ulong DataLinear = 0x4000_0000;  // 96 data pages, six per TLB set
    private const ulong DataFrames = 0x20_0000;
    private const ulong ReadOnlyLinear = 0x5000_0000, ReadOnlyFrame = 0x30_0000;
    private const ulong LargeLinear = 0x8000_0000, LargeFrame = 0x40_0000; // one 2 MiB page
    private const ulong RemappedPage = DataLinear + 5 * 0x1000, AlternateFrame = 0x70_0000;
    private const int DataPages = 96, FunctionCount = 6, Iterations = 24;

    public static TheoryData<string> Shapes => ["split 64/4 with a walk cache", "unified 64/4", "split 16/4 (small)"];

    private static MmuConfiguration Shape(string name) => name switch
    {
        "split 64/4 with a walk cache" => MmuConfiguration.Default,
        "unified 64/4" => new MmuConfiguration(null, TlbConfiguration.Default, 0),
        _ => new MmuConfiguration(new TlbConfiguration(16, 4), new TlbConfiguration(16, 4), 4),
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void The_same_guest_gives_the_same_registers_memory_tlb_and_counters_with_the_fast_paths_on_and_off(string shape)
    {
        var on = RunGuest(Shape(shape), caching: true);
        var off = RunGuest(Shape(shape), caching: false);

        Assert.Equal(StopReason.PlatformStop, on.Stop);
        Assert.Equal(StopReason.PlatformStop, off.Stop);
        Assert.Equal(off.Registers, on.Registers);
        Assert.Equal(off.Mmu, on.Mmu);
        Assert.Equal(off.Cpu, on.Cpu);
        Assert.Equal(off.Held, on.Held);
        Assert.True(off.Memory.AsSpan().SequenceEqual(on.Memory), "memory differs");

        // The guest did what it is meant to exercise: it ran to the end, the TLBs evicted (misses far beyond the
        // pages' first touches), its code was rewritten and the flushes happened.
        var counters = on.Mmu.ToDictionary(c => c.Counter, c => c.Count);
        Assert.Equal(Iterations * ReturnedByOthers + SumOfIterations, (long)on.Registers[15]);
        Assert.True(counters[MmuCounter.DataTlbMisses] > Iterations * DataPages, $"dtlb misses {counters[MmuCounter.DataTlbMisses]}");
        Assert.True(counters[MmuCounter.InstructionTlbMisses] > Iterations * 2, $"itlb misses {counters[MmuCounter.InstructionTlbMisses]}");
        Assert.True(counters[MmuCounter.TlbFlushes] >= Iterations / 4);
        // f0 is rewritten before each call, and decoded from the second iteration on.
        Assert.Equal(Iterations - 1, on.Cpu.First(c => c.Counter == CpuCounter.DecodeCacheInvalidations).Count);
    }

    // f0's immediate is rewritten to the iteration number each time; the others return their index, f5 is called twice.
    private const long SumOfIterations = (long)Iterations * (Iterations - 1) / 2, ReturnedByOthers = 1 + 2 + 3 + 4 + 5 + 5;

    private sealed record Outcome(StopReason Stop, ulong[] Registers, (MmuCounter Counter, long Count)[] Mmu,
        (CpuCounter Counter, long Count)[] Cpu, bool[] Held, byte[] Memory);

    private static Outcome RunGuest(MmuConfiguration configuration, bool caching)
    {
        const int megabytes = 16;
        var memory = new TestMemory(megabytes);
        var host = new TestMachine.Platform();
        var cpu = new Cpu(memory.Memory, host, configuration, (ulong)megabytes << 20) { TranslationCaching = caching };
        host.Cpu = cpu;

        const ulong data = TestMemory.P | TestMemory.W;
        const ulong code = TestMemory.P | TestMemory.W | TestMemory.G;
        ulong remappedPte = 0;
        for (int i = 0; i < DataPages; i++)
        {
            var used = memory.Map(DataLinear + (ulong)i * 0x1000, DataFrames + (ulong)i * 0x1000, data);
            if (DataLinear + (ulong)i * 0x1000 == RemappedPage)
            {
                remappedPte = used[^1];
            }
        }
        memory.Map(ReadOnlyLinear, ReadOnlyFrame, TestMemory.P);
        memory.Map(LargeLinear, LargeFrame, data, leafLevel: 2);
        memory.Map(0x7000, 0x7000, data); // the stack
        for (ulong page = Code; page < Code + 0x4000; page += 0x1000)
        {
            memory.Map(page, page, code);
        }
        for (int f = 0; f < FunctionCount; f++)
        {
            ulong at = Functions + (ulong)f * 0x1_0000;
            memory.Map(at, at, code);
        }
        for (ulong table = 0x10000; table < 0x30000; table += 0x1000)
        {
            memory.Map(table, table, data); // the page tables, so that the guest can rewrite a PTE
        }

        for (int f = 0; f < FunctionCount; f++)
        {
            int index = f;
            Load(memory, Functions + (ulong)f * 0x1_0000, a =>
            {
                a.mov(eax, (uint)index); // B8 imm32: f0's immediate, at +1, is what the loop rewrites
                a.add(r15, rax);
                a.ret();
            });
        }
        Load(memory, Code, a => MainLoop(a, remappedPte));

        cpu.Cs = new Segment { Selector = 8, Attributes = 0xA09B };
        cpu.Efer = 0xD00;               // LME, LMA, NXE
        cpu.Cr4 = 0x20 | 0x80;          // PAE, PGE
        cpu.Cr0 = 0x8001_0033;          // PG, WP, PE
        cpu.Cr3 = memory.Cr3;
        cpu.Rip = Code;
        cpu.Registers[4] = 0x8000;
        cpu.ControlStateChanged();

        var stop = StopReason.Budget;
        for (int calls = 0; calls < 100 && stop == StopReason.Budget; calls++)
        {
            stop = cpu.Run(100_000);
        }
        var registers = new ulong[18];
        for (int r = 0; r < 16; r++)
        {
            registers[r] = cpu.Registers[r];
        }
        registers[16] = cpu.Rip;
        registers[17] = cpu.Rflags;
        var held = new List<bool>();
        for (int i = 0; i < DataPages; i++)
        {
            held.Add(cpu.Mmu.DataTlb.Holds(new Addresses.GuestVirtual(DataLinear + (ulong)i * 0x1000), 0));
        }
        for (int f = 0; f < FunctionCount; f++)
        {
            held.Add(cpu.Mmu.InstructionTlb.Holds(new Addresses.GuestVirtual(Functions + (ulong)f * 0x1_0000), 0));
        }
        var bytes = new byte[megabytes << 20];
        for (int offset = 0; offset < bytes.Length; offset += 8)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(offset), memory.Read((ulong)offset));
        }
        return new Outcome(stop, registers, [.. cpu.Mmu.Counters.Counts], [.. cpu.Counters.Counts], [.. held], bytes);
    }

    private static void MainLoop(Assembler a, ulong remappedPte)
    {
        a.xor(ecx, ecx);
        a.xor(r14d, r14d);
        a.xor(r15d, r15d);
        var loop = a.CreateLabel();
        a.Label(ref loop);

        // Self-modifying code: f0 returns the iteration number from now on (its decoded page must go).
        a.mov(rax, Functions + 1);
        a.mov(__dword_ptr[rax], ecx);

        // Six data pages per TLB set, set after set, twice between flushes: each set's LRU evicts, while the read and
        // write arrays (256 entries, one per page here) still hold every page for the second pass; calls to the
        // functions between sets do the same to the ITLB set of the loop's own page.
        for (int set = 0; set < 32; set++)
        {
            for (int way = 0; way < DataPages / 16; way++)
            {
                ulong page = DataLinear + (ulong)(way * 16 + set % 16) * 0x1000;
                a.mov(rax, page + (ulong)(set * 8));
                a.mov(rdx, __qword_ptr[rax]);
                a.add(r14, rdx);
                a.mov(__qword_ptr[rax + 8], r14);
            }
            if (set % 6 == 0)
            {
                a.mov(rax, Functions + (ulong)(set / 6 % FunctionCount) * 0x1_0000);
                a.call(rax);
            }
        }
        a.mov(rax, Functions + 5 * 0x1_0000);
        a.call(rax);

        // Four 4 KiB pieces of one 2 MiB page: four fast entries naming one TLB entry.
        for (int piece = 0; piece < 4; piece++)
        {
            a.mov(rax, LargeLinear + (ulong)piece * 0x8_1000);
            a.add(__qword_ptr[rax], rcx);
            a.add(r14, __qword_ptr[rax]);
        }

        // INVLPG after remapping one data page to the other frame of a pair: reads see the new frame's bytes.
        a.mov(rax, AlternateFrame | TestMemory.P | TestMemory.W);
        a.test(cl, 1);
        var keep = a.CreateLabel();
        a.jz(keep);
        a.mov(rax, (DataFrames + 5 * 0x1000) | TestMemory.P | TestMemory.W);
        a.Label(ref keep);
        a.mov(rdx, remappedPte);
        a.mov(__qword_ptr[rdx], rax);
        a.mov(rax, RemappedPage);
        a.invlpg(__[rax]);
        a.add(r14, __qword_ptr[rax + 16]);
        a.mov(__qword_ptr[rax + 16], rcx);

        // CR0.WP off, a write to a read-only page, WP on again.
        a.mov(rax, cr0);
        a.and(eax, ~0x1_0000);
        a.mov(cr0, rax);
        a.mov(rdx, ReadOnlyLinear);
        a.add(__qword_ptr[rdx], r14);
        a.or(eax, 0x1_0000);
        a.mov(cr0, rax);
        a.add(r14, __qword_ptr[rdx]);

        // Every fourth iteration a CR3 write: the data translations go, the global code ones stay.
        a.test(cl, 3);
        var noFlush = a.CreateLabel();
        a.jnz(noFlush);
        a.mov(rax, cr3);
        a.mov(cr3, rax);
        a.Label(ref noFlush);

        a.inc(ecx);
        a.cmp(ecx, Iterations);
        a.jne(loop);
        a.mov(dx, 0xF4);
        a.@out(dx, al);
    }

    private static void Load(TestMemory memory, ulong address, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        using var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), address);
        byte[] bytes = stream.ToArray();
        for (int i = 0; i < bytes.Length; i++)
        {
            memory.WriteByte(address + (ulong)i, bytes[i]);
        }
    }

    [Fact]
    public void A_tlb_fill_that_a_larger_entry_for_the_same_address_shadows_restamps_the_larger_one()
    {
        // After the page tables changed without an invalidation a 4 KiB entry can join a 2 MiB one covering it: a
        // lookup now finds the 4 KiB one, so fast translations naming the 2 MiB one must look again.
        var tlb = new Tlb(TlbConfiguration.Default);
        int large = tlb.Insert(0x20_0000UL, 0x40_0000UL, 21, TranslationRights.None, 0);
        ulong stamp = tlb.FilledStamp(large);
        Assert.True(tlb.TryUse(large, stamp));
        int small = tlb.Insert(0x20_3000UL, 0x90_0000UL, 12, TranslationRights.None, 0);
        Assert.True(small >= 0 && small != large);
        Assert.False(tlb.TryUse(large, stamp));
        Assert.Equal(small, tlb.Lookup(0x20_3000UL, 0));
        Assert.Equal(large, tlb.Lookup(0x20_4000UL, 0));
    }

    [Fact]
    public void A_tlb_fill_that_a_lookup_would_not_find_first_is_reported_uncacheable()
    {
        // A 4 KiB entry first, then a 2 MiB entry over it (a re-walk after the tables changed): lookups of that 4 KiB
        // page still find the 4 KiB entry, so the 2 MiB fill must not stand for them.
        var tlb = new Tlb(TlbConfiguration.Default);
        int small = tlb.Insert(0x20_3000UL, 0x90_0000UL, 12, TranslationRights.None, 0);
        Assert.Equal(-1, tlb.Insert(0x20_3000UL, 0x40_0000UL, 21, TranslationRights.None, 0));
        Assert.Equal(small, tlb.Lookup(0x20_3000UL, 0));
    }

    [Fact]
    public void A_slot_refilled_with_another_page_no_longer_hits_for_the_old_one_and_a_hit_is_an_lru_use()
    {
        var tlb = new Tlb(new TlbConfiguration(4, 4)); // one set of four ways
        int first = tlb.Insert(0x1000UL, 0x1000UL, 12, TranslationRights.None, 0);
        ulong stamp = tlb.FilledStamp(first);
        for (ulong page = 2; page <= 4; page++)
        {
            tlb.Insert(page << 12, page << 12, 12, TranslationRights.None, 0);
        }
        // A fast hit on the first page makes it the most recent: the next fill evicts the second page, not it.
        Assert.True(tlb.TryUse(first, stamp));
        tlb.Insert(0x5000UL, 0x5000UL, 12, TranslationRights.None, 0);
        Assert.True(tlb.Holds(new Addresses.GuestVirtual(0x1000), 0));
        Assert.False(tlb.Holds(new Addresses.GuestVirtual(0x2000), 0));
        // Four more fills evict it: its slot now holds another page, and the old stamp misses.
        for (ulong page = 6; page <= 9; page++)
        {
            tlb.Insert(page << 12, page << 12, 12, TranslationRights.None, 0);
        }
        Assert.False(tlb.Holds(new Addresses.GuestVirtual(0x1000), 0));
        Assert.False(tlb.TryUse(first, stamp));
    }

    [Fact]
    public void A_processor_decoding_a_page_drops_every_other_processors_write_translation_to_it_not_just_the_last()
    {
        // CPU 0 writes the shared page and then two others, so its write array holds all three; CPU 1 then decodes
        // the shared page, and CPU 0's next write to it must take the slow path that drops CPU 1's decode.
        const ulong shared = 0x40000, other1 = 0x50000, other2 = 0x60000;
        var m = new SmpMachine(2);
        m.Load(1, shared, a => a.mov(eax, 1), stack: 0xA000);
        m.Load(0, 0x20000, a =>
        {
            a.mov(eax, (uint)shared + 0x800);
            a.mov(__dword_ptr[rax], 5);               // the shared page enters CPU 0's write array
            a.mov(eax, (uint)other1);
            a.mov(__dword_ptr[rax], 6);
            a.mov(eax, (uint)other2);
            a.mov(__dword_ptr[rax], 7);
            a.mov(dx, 0xF4);
            a.@out(dx, al);                           // stop: CPU 1 decodes the shared page
            a.mov(eax, (uint)shared + 1);
            a.mov(__dword_ptr[rax], 3);               // rewrites CPU 1's `mov eax, 1`
        }, stack: 0x9000);
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        Assert.Equal(1UL, m.Cpus[1].Registers[0]);
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        m.Cpus[1].Rip = shared;
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        Assert.Equal(3UL, m.Cpus[1].Registers[0]);
        Assert.Equal(1, m.Cpus[1].Counters.DecodeCacheInvalidations);
    }
}
