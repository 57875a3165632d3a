using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>The software machine behaves the same under every technique where there is nothing to virtualize, and
/// its CPUID says exactly what it implements.</summary>
public class MachineHonestyTests
{
    private static SimOptions Options(string technique) => technique switch
    {
        "native" => new SimOptions(),
        "hw-nested" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
        "hw-nested-2m" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested, LargeNestedPages = true },
        "hw-shadow" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
        "trap" => new SimOptions { Technique = Technique.TrapAndEmulate },
        "bt" => new SimOptions { Technique = Technique.BinaryTranslation },
        _ => new SimOptions { Technique = Technique.Paravirtual },
    };

    /// <summary>Runs a flat guest on a thread of its own, so that a run that ignores its own timeout fails the test
    /// instead of hanging the suite.</summary>
    internal static VmOutcome RunBounded(byte[] code, SimOptions options, double timeoutSeconds = 10, ulong memory = 64UL << 20)
    {
        VmOutcome? outcome = null;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                var (o, _, vm) = SimEngineTests.RunInProcess(GuestAssembler.Flat("guest", code), memory: memory,
                    timeoutSeconds: timeoutSeconds, engine: new SimEngine(options));
                vm.Dispose();
                outcome = o;
            }
            catch (Exception e)
            {
                error = e;
            }
        }) { IsBackground = true };
        thread.Start();
        Assert.True(thread.Join(TimeSpan.FromSeconds(timeoutSeconds + 20)),
            $"the run went on {timeoutSeconds + 20} s, past its own --timeout of {timeoutSeconds} s");
        Assert.Null(error);
        return outcome!;
    }

    [Theory]
    [InlineData("native", 0x0400_0000UL)]      // past the end of 64 MiB of RAM
    [InlineData("hw-nested", 0x0400_0000UL)]
    [InlineData("hw-nested-2m", 0x0400_0000UL)]
    [InlineData("hw-shadow", 0x0400_0000UL)]
    [InlineData("trap", 0x0400_0000UL)]
    [InlineData("bt", 0x0400_0000UL)]
    [InlineData("native", 0xFE00_0000UL)]      // in the device hole below 4 GiB
    [InlineData("hw-nested", 0xFE00_0000UL)]
    [InlineData("hw-shadow", 0xFE00_0000UL)]
    public void Fetching_from_an_address_without_RAM_faults_under_every_technique(string technique, ulong target)
    {
        // mov rax, target; jmp rax: the bare machine cannot fetch there (a machine check), and with no IDT the
        // guest triple-faults. Under nested paging this looped forever on EPT violations, deaf to --timeout.
        byte[] code = GuestAssembler.Assemble(a =>
        {
            a.mov(rax, target);
            a.jmp(rax);
        });
        var outcome = RunBounded(code, Options(technique));
        Assert.True(outcome.Kind == VmOutcomeKind.TripleFault, $"{technique}: {outcome.Kind}: {outcome.Message}");
        Assert.Equal(target, outcome.FinalState!.Rip);
    }

    /// <summary>A guest that reads CPUID and reports leaf 1, 7 and 0x80000001 through the debug-exit port as registers.</summary>
    private static (uint Eax, uint Ebx, uint Ecx, uint Edx) Cpuid(uint leaf)
    {
        var (outcome, _, vm) = SimEngineTests.RunInProcess(GuestAssembler.Flat("cpuid", GuestAssembler.Assemble(a =>
        {
            a.mov(eax, leaf);
            a.xor(ecx, ecx);
            a.cpuid();
            a.mov(r9d, edx); // the exit needs DX
            a.mov(dx, 0xF4);
            a.@out(dx, eax);
            a.hlt();
        })), timeoutSeconds: 10);
        vm.Dispose();
        Assert.Equal(VmOutcomeKind.DebugExit, outcome.Kind);
        var s = outcome.FinalState!;
        return ((uint)s.Rax, (uint)s.Rbx, (uint)s.Rcx, (uint)s.R9);
    }

    [Fact]
    public void Cpuid_advertises_the_x87_whose_control_and_moves_are_modelled_but_not_sse()
    {
        var leaf1 = Cpuid(1);
        Assert.Equal(1u, leaf1.Edx & (1u << 0));  // FPU (Cpu.X87: control instructions and data moves)
        Assert.Equal(0u, leaf1.Edx & ((1u << 23) | (1u << 24) | (1u << 25) | (1u << 26))); // MMX, FXSR, SSE, SSE2
        Assert.Equal(0u, leaf1.Ecx & ((1u << 0) | (1u << 26) | (1u << 27))); // SSE3, XSAVE, OSXSAVE
        // What the guest sees is the table, bit for bit.
        foreach (uint leaf in new uint[] { 1, 7, 0x8000_0001 })
        {
            var seen = Cpuid(leaf);
            uint[] registers = [seen.Eax, seen.Ebx, seen.Ecx, seen.Edx];
            foreach (SoftwareCpuid.Register r in Enum.GetValues<SoftwareCpuid.Register>())
            {
                uint expected = SoftwareCpuid.Features.Where(f => f.Leaf == leaf && f.Register == r).Aggregate(0u, (m, f) => m | (1u << f.Bit));
                if (leaf == 1 && r is SoftwareCpuid.Register.Eax or SoftwareCpuid.Register.Ebx)
                {
                    continue; // the version, the CLFLUSH line size and APIC ID: not features
                }
                Assert.True(expected == registers[(int)r], $"leaf 0x{leaf:x} {r}: 0x{registers[(int)r]:x}, the table says 0x{expected:x}");
            }
        }
    }

    /// <summary>One instruction per advertised feature (or, where the feature is a mode, the control bit it
    /// enables): each must run on the machine without a fault.</summary>
    public static TheoryData<string> AdvertisedFeatures() => [.. SoftwareCpuid.Features.Select(f => f.Name)];

    [Theory]
    [MemberData(nameof(AdvertisedFeatures))]
    public void Every_advertised_feature_runs_on_the_machine(string feature)
    {
        Action<Assembler> probe = feature switch
        {
            "TSC" => a => a.rdtsc(),
            "MSR" => a => { a.mov(ecx, 0xC000_0080); a.rdmsr(); a.wrmsr(); },
            "PAE" => a => { a.mov(rax, cr4); a.test(eax, 1 << 5); a.jnz(a.@F); a.ud2(); a.AnonymousLabel(); },
            "APIC" => a => { a.mov(eax, 0xFEE0_0030); a.mov(eax, __dword_ptr[rax]); }, // the version register
            "PGE" => a => { a.mov(rax, cr4); a.or(eax, 1 << 7); a.mov(cr4, rax); },
            "CMOV" => a => { a.xor(eax, eax); a.cmove(ebx, eax); },
            "CX8" => a => { a.mov(rdi, 0x20_0000); a.cmpxchg8b(__[rdi]); },
            "LAHF-SAHF" => a => { a.lahf(); a.sahf(); },
            "CX16" => a => { a.mov(rdi, 0x20_0000); a.cmpxchg16b(__[rdi]); },
            "POPCNT" => a => a.popcnt(rax, rbx),
            "hypervisor" => a => { a.mov(eax, KvmEngine.HypervisorLeaf); a.cpuid(); },
            "SMEP" => a => { a.mov(rax, cr4); a.or(eax, 1 << 20); a.mov(cr4, rax); },
            "SMAP" => a => { a.mov(rax, cr4); a.or(eax, 1 << 21); a.mov(cr4, rax); a.stac(); a.clac(); },
            "LZCNT" => a => a.lzcnt(rax, rbx),
            "SYSCALL" => a => { a.mov(ecx, 0xC000_0080); a.rdmsr(); a.or(eax, 1); a.wrmsr(); a.mov(ecx, 0xC000_0082); a.rdmsr(); },
            "NX" => a => { a.mov(ecx, 0xC000_0080); a.rdmsr(); a.or(eax, 1 << 11); a.wrmsr(); },
            "Page1GB" => a => { }, // the page walker's 1 GiB leaves are tested entry by entry in PageWalkTests
            "RDTSCP" => a => a.rdtscp(),
            "SEP" => a => { a.mov(ecx, 0x174); a.mov(eax, 0x10); a.xor(edx, edx); a.wrmsr(); a.mov(ecx, 0x176); a.rdmsr(); },
            "CLFSH" => a => { a.mov(rdi, 0x20_0000); a.clflush(__byte_ptr[rdi]); },
            "CLFLUSHOPT" => a => { a.mov(rdi, 0x20_0000); a.clflushopt(__byte_ptr[rdi]); },
            "PCID" => a => { a.mov(rax, cr4); a.or(eax, 1 << 17); a.mov(cr4, rax); },
            "INVPCID" => a => { a.mov(rdi, 0x20_0000); a.mov(eax, 2); a.invpcid(rax, __[rdi]); },
            "RDPID" => a => a.rdpid(rax),
            "PAT" => a => { a.mov(ecx, 0x277); a.rdmsr(); a.wrmsr(); },
            "TSC-Deadline" => a => { a.mov(ecx, 0x6E0); a.rdmsr(); },
            "MCE" => a => { a.mov(rax, cr4); a.or(eax, 1 << 6); a.mov(cr4, rax); },
            // CR4.DE, then an I/O breakpoint armed on a port the probe does not touch (DR7 R/W = 10 needs DE).
            "DE" => a => { a.mov(rax, cr4); a.or(eax, 1 << 3); a.mov(cr4, rax); a.mov(eax, 0x80); a.mov(dr0, rax); a.mov(eax, 0x0002_0402); a.mov(dr7, rax); },
            "MCA" => a => { a.mov(ecx, 0x179); a.rdmsr(); a.mov(ecx, 0x17A); a.xor(eax, eax); a.xor(edx, edx); a.wrmsr(); },
            "x2APIC" => a => { a.mov(ecx, 0x1B); a.rdmsr(); a.or(eax, 1 << 10); a.wrmsr(); a.mov(ecx, 0x802); a.rdmsr(); },
            "LM" => a => { }, // the guest runs in long mode
            "FPU" => a => { a.fninit(); a.fld1(); a.fstp(__qword_ptr[rsp - 16]); a.fnstsw(ax); },
            _ => throw new InvalidOperationException($"no probe for the advertised feature {feature}: add one"),
        };
        byte[] code = GuestAssembler.Assemble(a =>
        {
            probe(a);
            a.mov(dx, 0xF4);
            a.mov(eax, 0x5A);
            a.@out(dx, eax);
            a.hlt();
        });
        var outcome = RunBounded(code, new SimOptions());
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0x5A, $"{feature}: {outcome.Message}");
    }

    [Theory]
    [InlineData("rdrand")]
    [InlineData("fxsave")]
    [InlineData("addps")]
    public void Instructions_of_features_not_advertised_raise_invalid_opcode(string instruction)
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            a.mov(rdi, 0x20_0000UL); // 10 bytes: the instruction under test is at 0x10000a
            switch (instruction)
            {
                case "rdrand": a.rdrand(eax); break;
                case "fxsave": a.fxsave(__[rdi]); break;
                default: a.addps(xmm0, xmm1); break;
            }
            a.mov(dx, 0xF4);
            a.@out(dx, eax);
        });
        var outcome = RunBounded(code, new SimOptions());
        // No IDT: the #UD cannot be delivered, and the guest triple-faults at the instruction.
        Assert.True(outcome.Kind == VmOutcomeKind.TripleFault, $"{instruction}: {outcome.Kind}: {outcome.Message}");
        Assert.Equal(0x10_000AUL, outcome.FinalState!.Rip);
    }

    [Theory]
    [InlineData("native")]
    [InlineData("hw-nested")]
    [InlineData("hw-shadow")]
    [InlineData("trap")]
    public void A_guest_faulting_forever_without_retiring_an_instruction_is_stopped_by_its_timeout(string technique)
    {
        // Every IDT gate points at an address with no mapping, on a fresh IST stack: delivery succeeds, the handler's
        // first fetch faults, and so on forever. Nothing retires, so an instruction budget never ends the slice.
        byte[] code = GuestAssembler.Assemble(a =>
        {
            HostileGuestFuzzTests.EmitGdtWithIst(a);
            const ulong idt = 0x1D_2000, handler = 0x20_0000_0000; // far above RAM: not in the identity map
            a.mov(rdi, idt);
            a.mov(rax, 0x0008_0000UL | (handler & 0xFFFF) | (0x8E01UL << 32) | ((handler >> 16 & 0xFFFF) << 48));
            a.mov(rdx, handler >> 32);
            a.xor(ecx, ecx);
            var gate = a.CreateLabel();
            a.Label(ref gate);
            a.mov(__[rdi], rax);
            a.mov(__[rdi + 8], rdx);
            a.add(rdi, 16); a.inc(ecx); a.cmp(ecx, 256); a.jne(gate);
            a.mov(rdi, idt - 16);
            a.mov(__word_ptr[rdi], 4095);
            a.mov(rax, idt); a.mov(__[rdi + 2], rax);
            a.lidt(__[rdi]);
            a.ud2();
        });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var outcome = RunBounded(code, Options(technique), timeoutSeconds: 2);
        Assert.True(outcome.Kind == VmOutcomeKind.Timeout, $"{technique}: {outcome.Kind}: {outcome.Message}");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(8), $"{technique}: stopped {clock.Elapsed.TotalSeconds:F1} s after a 2 s timeout");
    }
}
