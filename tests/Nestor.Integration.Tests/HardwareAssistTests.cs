using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>NestorOS's default workload on the software machine without a VMM, once for the class.</summary>
public sealed class NativeWorkload
{
    public NativeWorkload()
    {
        var (outcome, serial, vm) = SimEngineTests.RunInProcess(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf));
        vm.Dispose();
        Outcome = outcome;
        Serial = serial;
    }

    public VmOutcome Outcome { get; }
    public string Serial { get; }
}

/// <summary>Hardware-assisted virtualization on the software machine: the same guest, the same results as on the bare
/// machine, with the VM exits the VMCS asks for.</summary>
public class HardwareAssistTests(NativeWorkload native) : IClassFixture<NativeWorkload>
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void NestorOS_under_hw_nested_prints_the_same_results_as_native(bool largeNestedPages)
    {
        Assert.True(native.Outcome.GuestStatus == 0, native.Outcome.Message);
        var engine = new SimEngine(new SimOptions
        {
            Technique = Technique.HardwareAssist,
            Memory = MemoryVirtualization.Nested,
            LargeNestedPages = largeNestedPages,
        });
        var (run, serial, vm) = SimEngineTests.RunWithResult(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf), engine: engine);
        var outcome = run.Outcome;
        vm.Dispose();

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Equal(SimEngineTests.ResultsWithoutTimings(native.Serial), SimEngineTests.ResultsWithoutTimings(serial));
        var vmcs = run.Machine!.Vmcs!;
        Assert.True(vmcs.Exits(ExitReason.EptViolation) > 0, "guest pages get host frames on first touch");
        Assert.True(vmcs.Exits(ExitReason.IoInstruction) > 0);
        Assert.True(vmcs.Exits(ExitReason.Cpuid) > 0);
        // Guest page faults go straight to the guest under nested paging: no exception exits.
        Assert.Equal(0, vmcs.Exits(ExitReason.ExceptionOrNmi));
        Assert.Equal(0, vmcs.Exits(ExitReason.ControlRegisterAccess));
        var counters = run.Counters.ToDictionary(c => c.Name, c => c.Value);
        Assert.True(counters["nested_walk_references"] > 0);
        if (largeNestedPages)
        {
            // 64 MiB of guest RAM in 2 MiB nested pages: at most 32 violations for RAM (a few more for devices).
            Assert.True(vmcs.Exits(ExitReason.EptViolation) < 40, $"{vmcs.Exits(ExitReason.EptViolation)} EPT violations");
        }
    }

    [Fact]
    public void NestorOS_under_hw_shadow_prints_the_same_results_as_native()
    {
        Assert.True(native.Outcome.GuestStatus == 0, native.Outcome.Message);
        var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow });
        var (run, serial, vm) = SimEngineTests.RunWithResult(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf), engine: engine);
        var outcome = run.Outcome;
        vm.Dispose();

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Equal(SimEngineTests.ResultsWithoutTimings(native.Serial), SimEngineTests.ResultsWithoutTimings(serial));
        var vmcs = run.Machine!.Vmcs!;
        var counters = run.Counters.ToDictionary(c => c.Name, c => c.Value);
        // Page faults, CR3 loads and INVLPG reach the VMM; hidden faults fill the shadows, true faults (demand paging,
        // copy-on-write, the fault program) go on to the guest, and guest page-table writes trap.
        Assert.True(vmcs.Exits(ExitReason.ExceptionOrNmi) > 0);
        Assert.True(vmcs.Exits(ExitReason.ControlRegisterAccess) > 0);
        Assert.True(vmcs.Exits(ExitReason.Invlpg) > 0);
        Assert.Equal(0, vmcs.Exits(ExitReason.EptViolation));
        Assert.True(counters["shadow_hidden_faults"] > 0);
        Assert.True(counters["shadow_true_faults"] > 0);
        Assert.True(counters["shadow_page_table_writes"] > 0);
        Assert.False(counters.ContainsKey("nested_walk_references"));
    }

    private const ulong Pdpt = 0x30_0000, Directory = 0x30_1000, TableA = 0x30_2000, TableB = 0x30_3000, Data = 0x40_0000, Result = 0x50_0000;
    private const ulong Region = 0x80_0000_0000; // PML4 entry 1

    /// <summary>A ring-0 guest that edits its own page tables at random — PTEs (frame, writability) with INVLPG, and now
    /// and then the directory entry above them with a CR3 reload — reading and writing through every new mapping and
    /// folding what it reads into a checksum.</summary>
    private static byte[] PageTableEditor(int iterations) => GuestAssembler.Assemble(a =>
    {
        var loop = a.CreateLabel();
        var noSwap = a.CreateLabel();
        var readOnly = a.CreateLabel();
        a.mov(rax, cr3);
        a.and(rax, -4096);
        a.mov(rbx, Pdpt | 3);
        a.mov(__qword_ptr[rax + 8], rbx);          // PML4[1] → our PDPT
        a.mov(rbx, Directory | 3);
        a.mov(__qword_ptr[Pdpt], rbx);
        a.mov(r12, TableA);
        a.mov(rbx, TableA | 3);
        a.mov(__qword_ptr[Directory], rbx);
        a.mov(r15, 0x9E37_79B9_7F4A_7C15UL);        // xorshift64 state
        a.xor(r14d, r14d);                          // checksum
        a.mov(r13d, iterations);
        a.Label(ref loop);
        a.mov(rax, r15); a.shl(rax, 13); a.xor(r15, rax);
        a.mov(rax, r15); a.shr(rax, 7); a.xor(r15, rax);
        a.mov(rax, r15); a.shl(rax, 17); a.xor(r15, rax);
        // Now and then point the directory entry at the other page table and reload CR3.
        a.mov(rax, r15); a.shr(rax, 40); a.and(eax, 31); a.jnz(noSwap);
        a.xor(r12, (int)(TableA ^ TableB));
        a.lea(rax, __[r12 + 3]);
        a.mov(__qword_ptr[Directory], rax);
        a.mov(rax, cr3); a.mov(cr3, rax);
        a.Label(ref noSwap);
        a.mov(rbx, r15); a.and(ebx, 15);                                   // which PTE
        a.mov(rcx, r15); a.shr(rcx, 8); a.and(ecx, 7); a.shl(rcx, 12);
        a.add(rcx, (int)Data);                                             // which frame
        a.mov(rdx, r15); a.shr(rdx, 16); a.and(edx, 2);                    // R/W
        a.or(rcx, rdx); a.or(rcx, 1);
        a.mov(__qword_ptr[r12 + rbx * 8], rcx);
        a.mov(rsi, rbx); a.shl(rsi, 12); a.mov(rdi, Region); a.add(rsi, rdi);
        a.mov(rdi, r15); a.shr(rdi, 20); a.and(edi, 0xFF8); a.add(rsi, rdi);
        a.invlpg(__[rsi]);
        a.test(edx, edx); a.jz(readOnly);
        a.mov(__qword_ptr[rsi], r15);
        a.Label(ref readOnly);
        a.mov(rax, __qword_ptr[rsi]);
        a.rol(r14, 7); a.xor(r14, rax);
        a.dec(r13d); a.jnz(loop);
        a.mov(__qword_ptr[Result], r14);
        a.mov(dx, 0xF4); a.xor(eax, eax); a.@out(dx, eax); a.hlt();
    });

    /// <summary>The test of shadow paging: after random page-table edits the shadows agree with the guest's
    /// tables (checked after every edit), and the guest computes what it computes on the bare machine and under nested
    /// paging.</summary>
    [Fact]
    public void Random_page_table_edits_keep_shadows_consistent_and_results_equal()
    {
        const int iterations = 1500;
        byte[] code = PageTableEditor(iterations);
        (ulong Checksum, byte[] Data, SimEngine Engine, SoftwareMachineRun Machine, IReadOnlyList<string> Problems) Run(SimOptions options)
        {
            using var vm = Nestor.Hypervisor.Vm.Create(new Nestor.Hypervisor.Configuration.VmConfig { Kernel = GuestAssembler.Flat("pt-editor", code), MemoryBytes = 16UL << 20 });
            var engine = new SimEngine(options);
            var run = vm.Run(engine);
            var outcome = run.Outcome;
            Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, $"{options.Name}: {outcome.Message}");
            // The final check runs while the VM's memory (which the machine model reads) is still there.
            var problems = run.Machine!.Monitor?.Shadow?.Verify(run.Machine.Cpu.Mmu.Controls) ?? [];
            return (vm.Memory.ReadUInt64(new Nestor.Machine.Addresses.GuestPhysical(Result)),
                vm.Memory.Span(new Nestor.Machine.Addresses.GuestPhysical(Data), 8 * 4096).ToArray(), engine, run.Machine, problems);
        }
        var native = Run(new SimOptions());
        var nested = Run(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        var shadow = Run(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow, VerifyShadowPaging = true });
        // The software techniques run the same guest in ring 1 (its MOV CR3 and INVLPG trap and are emulated) or
        // translated (adaptive callouts for its PTE writes), over the same shadow paging.
        var trap = Run(new SimOptions { Technique = Technique.TrapAndEmulate, Memory = MemoryVirtualization.Shadow, VerifyShadowPaging = true });
        var translated = Run(new SimOptions { Technique = Technique.BinaryTranslation, Memory = MemoryVirtualization.Shadow, VerifyShadowPaging = true });
        foreach (var other in new[] { trap, translated })
        {
            Assert.Equal(native.Checksum, other.Checksum);
            Assert.Equal(native.Data, other.Data);
            Assert.Empty(other.Machine.Monitor!.Shadow!.VerificationProblems);
            Assert.Empty(other.Problems);
            other.Engine.Dispose();
        }
        Assert.True(translated.Machine.Monitor!.Callouts > iterations / 2, $"{translated.Machine.Monitor.Callouts} callouts");

        Assert.NotEqual(0UL, native.Checksum);
        Assert.Equal(native.Checksum, nested.Checksum);
        Assert.Equal(native.Checksum, shadow.Checksum);
        Assert.Equal(native.Data, nested.Data);
        Assert.Equal(native.Data, shadow.Data);
        var shadowPaging = shadow.Machine.Monitor!.Shadow!;
        Assert.Empty(shadowPaging.VerificationProblems);
        Assert.True(shadowPaging.PageTableWrites >= iterations, $"{shadowPaging.PageTableWrites} page-table writes trapped");
        Assert.True(shadow.Machine.Vmcs!.Exits(ExitReason.Invlpg) >= iterations);
        Assert.True(shadowPaging.AddressSpaceSwitches > 10);
        Assert.Empty(shadow.Problems);
        native.Engine.Dispose();
        nested.Engine.Dispose();
        shadow.Engine.Dispose();
    }
}
