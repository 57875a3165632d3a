using System.Text.RegularExpressions;
using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The instruction table is the one place that says what the machine implements: every mnemonic the
/// interpreter's sources handle has a row, every row has a handler the interpreter dispatches to, the CPUID feature
/// catalogue agrees with the rows, and ring compression's classification matches what the machine does in ring 1.</summary>
public sealed partial class InstructionTableTests
{
    [GeneratedRegex(@"\bMnemonic\.([A-Z][A-Za-z0-9]*)\b")]
    private static partial Regex MnemonicReference();

    private static string Repository()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Nestor.slnx")))
            {
                return directory.FullName;
            }
        }
        throw new InvalidOperationException("the repository (Nestor.slnx) is not above the test's directory");
    }

    /// <summary>The interpreter's sources (its semantics and the fast path's forms), the table's own files aside.</summary>
    public static TheoryData<string> InterpreterSources() =>
    [
        .. Directory.GetFiles(Path.Combine(Repository(), "src", "Nestor.Machine", "Processor"), "*.cs")
            .Select(Path.GetFileName)
            .Where(name => name is not null && !name.Contains("InstructionTable", StringComparison.Ordinal))
            .Select(name => name!),
    ];

    [Theory]
    [MemberData(nameof(InterpreterSources))]
    public void Every_mnemonic_the_interpreter_handles_has_a_row(string file)
    {
        string source = File.ReadAllText(Path.Combine(Repository(), "src", "Nestor.Machine", "Processor", file));
        var missing = MnemonicReference().Matches(source)
            .Select(m => m.Groups[1].Value)
            .Where(name => Enum.TryParse<Mnemonic>(name, out _))
            .Select(Enum.Parse<Mnemonic>)
            .Where(m => InstructionTable.Find(m) is null)
            .Distinct()
            .ToList();
        Assert.True(missing.Count == 0, $"{file} handles {string.Join(", ", missing)} without a row in the instruction table");
    }

    [Fact]
    public void Every_row_has_a_handler_and_the_interpreter_dispatches_each_mnemonic_by_the_table()
    {
        Assert.NotEmpty(InstructionTable.Rows);
        foreach (var row in InstructionTable.Rows)
        {
            Assert.NotNull(row.Handler);
            Assert.False(Cpu.IsUnimplementedHandler(row.Handler), $"{row.Mnemonic}'s row has no semantics");
            Assert.Same(row.Handler, Cpu.HandlerFor(row.Mnemonic));
            Assert.Equal((byte)row.Class, InstructionTable.ClassByMnemonic[(int)row.Mnemonic]);
        }
        foreach (var m in Enum.GetValues<Mnemonic>().Where(m => InstructionTable.Find(m) is null))
        {
            Assert.True(Cpu.IsUnimplementedHandler(Cpu.HandlerFor(m)), $"{m} has no row but is dispatched to semantics");
            Assert.Equal((byte)InstructionClass.System, InstructionTable.ClassByMnemonic[(int)m]);
        }
    }

    [Theory]
    [InlineData("andn")]
    [InlineData("movbe")]
    [InlineData("lar")]
    public void An_instruction_without_a_row_raises_invalid_opcode_and_is_counted_unmodelled(string instruction)
    {
        var m = new TestMachine(a =>
        {
            switch (instruction)
            {
                case "andn": a.andn(eax, ebx, ecx); break;
                case "movbe": a.movbe(eax, __dword_ptr[rsp]); break;
                default: a.lar(eax, ebx); break;
            }
        }, exit: false);
        m.Cpu.Run(1);
        Assert.Equal(1, m.Cpu.Counters.ExceptionsByVector[(int)ExceptionVector.InvalidOpcode]);
        Assert.Equal(1, m.Cpu.Counters.UnimplementedByMnemonic[char.ToUpperInvariant(instruction[0]) + instruction[1..]]);
    }

    [Fact]
    public void Every_feature_a_row_needs_is_in_the_catalogue_with_that_instruction_and_every_feature_has_one_entry()
    {
        foreach (var f in Enum.GetValues<CpuFeature>().Where(f => f != CpuFeature.None))
        {
            Assert.Single(CpuidFeatures.All, e => e.Feature == f);
        }
        Assert.Equal(CpuidFeatures.All.Count, CpuidFeatures.All.Select(e => (e.Leaf, e.Register, e.Bit)).Distinct().Count());
        foreach (var row in InstructionTable.Rows.Where(r => r.Feature != CpuFeature.None))
        {
            Assert.Contains(row.Mnemonic, CpuidFeatures.Of(row.Feature).Instructions);
        }
    }

    [Fact]
    public void A_feature_is_reported_exactly_when_rows_implement_all_of_its_instructions_or_the_model_backs_it()
    {
        var reported = CpuidFeatures.Reported.ToHashSet();
        foreach (var f in CpuidFeatures.All)
        {
            bool byRows = f.Instructions.Count > 0 && f.Instructions.All(m => InstructionTable.Find(m)?.Feature == f.Feature);
            bool byModel = f.Instructions.Count == 0 && f.ModelledBy is not null;
            Assert.True((byRows || byModel) == reported.Contains(f), $"{f.Name}: reported {reported.Contains(f)}");
        }
        // TZCNT has a row needing BMI1, but the rest of BMI1 has none: not reported.
        Assert.Equal(CpuFeature.BitManipulation1, InstructionTable.Find(Mnemonic.Tzcnt)!.Feature);
        Assert.DoesNotContain(CpuidFeatures.Of(CpuFeature.BitManipulation1), reported);
        Assert.Contains(CpuidFeatures.Of(CpuFeature.PopulationCount), reported);
    }

    [Fact]
    public void Ring_compression_classification_is_the_table()
    {
        Assert.Equal(
            InstructionTable.Rows.Where(r => r.Sensitivity is Sensitivity.Privileged or Sensitivity.IoPrivileged).Select(r => r.Mnemonic).Order(),
            RingCompression.TrappingInstructions.Order());
        Assert.Equal(
            InstructionTable.Rows.Where(r => r.Sensitivity == Sensitivity.SensitiveUnprivileged).Select(r => r.Mnemonic)
                .Concat(InstructionTable.UnmodelledSensitive).Order(),
            RingCompression.UncaughtInstructions.Order());
        Assert.Empty(RingCompression.TrappingInstructions.Intersect(RingCompression.UncaughtInstructions));
        // The forms: MOV to CR traps, MOV from CS is uncaught, a plain MOV is innocuous.
        Assert.True(RingCompression.Traps(Instruction.Create(Code.Mov_cr_r64, Register.CR3, Register.RAX)));
        Assert.True(RingCompression.Uncaught(Instruction.Create(Code.Mov_r32m16_Sreg, Register.EAX, Register.CS)));
        Assert.True(RingCompression.Uncaught(Instruction.Create(Code.Mov_r32m16_Sreg, Register.EAX, Register.SS)));
        Assert.False(RingCompression.Traps(Instruction.Create(Code.Mov_r64_rm64, Register.RAX, Register.RBX)));
        Assert.False(RingCompression.Uncaught(Instruction.Create(Code.Mov_r64_rm64, Register.RAX, Register.RBX)));
        Assert.True(RingCompression.Uncaught(Instruction.Create(Code.Lar_r32_r32m16, Register.EAX, Register.EBX)));
        Assert.True(RingCompression.Traps(Instruction.Create(Code.Hlt)));
        Assert.True(RingCompression.Uncaught(Instruction.Create(Code.Popfq)));
    }

    // One probe per trapping or uncaught row, run by a ring-compressed kernel (CPL 0 to itself, hardware ring 1).
    private static readonly Dictionary<Mnemonic, Action<Assembler>> Probes = new()
    {
        [Mnemonic.Hlt] = a => a.hlt(),
        [Mnemonic.Cli] = a => a.cli(),
        [Mnemonic.Sti] = a => a.sti(),
        [Mnemonic.In] = a => { a.mov(dx, 0x80); a.@in(al, dx); },
        [Mnemonic.Out] = a => { a.mov(dx, 0x80); a.@out(dx, al); },
        [Mnemonic.Insb] = a => { a.mov(dx, 0x80); a.mov(edi, 0x6100); a.insb(); },
        [Mnemonic.Insw] = a => { a.mov(dx, 0x80); a.mov(edi, 0x6100); a.insw(); },
        [Mnemonic.Insd] = a => { a.mov(dx, 0x80); a.mov(edi, 0x6100); a.insd(); },
        [Mnemonic.Outsb] = a => { a.mov(dx, 0x80); a.mov(esi, 0x6100); a.outsb(); },
        [Mnemonic.Outsw] = a => { a.mov(dx, 0x80); a.mov(esi, 0x6100); a.outsw(); },
        [Mnemonic.Outsd] = a => { a.mov(dx, 0x80); a.mov(esi, 0x6100); a.outsd(); },
        [Mnemonic.Clac] = a => a.clac(),
        [Mnemonic.Stac] = a => a.stac(),
        [Mnemonic.Rdmsr] = a => { a.mov(ecx, 0xC000_0080); a.rdmsr(); },
        [Mnemonic.Wrmsr] = a => { a.mov(ecx, 0xC000_0080); a.mov(eax, 0x500); a.xor(edx, edx); a.wrmsr(); },
        [Mnemonic.Lgdt] = a => { a.mov(rdi, 0x7000); a.lgdt(__[rdi]); }, // zeros: base 0 (a non-canonical base is #GP)
        [Mnemonic.Lidt] = a => { a.mov(rdi, 0x7000); a.lidt(__[rdi]); },
        [Mnemonic.Ltr] = a => { a.mov(ax, 8); a.ltr(ax); },
        [Mnemonic.Lldt] = a => { a.xor(eax, eax); a.lldt(ax); },
        [Mnemonic.Invlpg] = a => { a.mov(rdi, 0x6000); a.invlpg(__[rdi]); },
        [Mnemonic.Invpcid] = a => { a.mov(rdi, 0x6000); a.mov(eax, 2); a.invpcid(rax, __[rdi]); }, // type 2: the descriptor's address (here a GDT entry) is not used
        [Mnemonic.Swapgs] = a => a.swapgs(),
        [Mnemonic.Wbinvd] = a => a.wbinvd(),
        [Mnemonic.Invd] = a => a.invd(),
        [Mnemonic.Clts] = a => a.clts(),
        [Mnemonic.Lmsw] = a => { a.smsw(ax); a.lmsw(ax); }, // reloads the status word it read
        [Mnemonic.Sysretq] = a => a.sysretq(),
        [Mnemonic.Sysret] = a => a.sysret(),
        [Mnemonic.Sysexit] = a => a.sysexit(),
        [Mnemonic.Sysexitq] = a => a.sysexitq(),
        [Mnemonic.Rdpmc] = a => { a.xor(ecx, ecx); a.rdpmc(); },
        [Mnemonic.Pushf] = a => a.pushf(),
        [Mnemonic.Pushfq] = a => a.pushfq(),
        [Mnemonic.Popf] = a => { a.pushf(); a.popf(); },
        [Mnemonic.Popfq] = a => { a.pushfq(); a.popfq(); },
        [Mnemonic.Sgdt] = a => { a.mov(rdi, 0x7000); a.sgdt(__[rdi]); },
        [Mnemonic.Sidt] = a => { a.mov(rdi, 0x7000); a.sidt(__[rdi]); },
        [Mnemonic.Sldt] = a => a.sldt(ax),
        [Mnemonic.Str] = a => a.str(ax),
        [Mnemonic.Smsw] = a => a.smsw(ax),
    };

    /// <summary>Uncaught rows whose ring-1 outcome needs a descriptor-table set-up these probes do not have; the
    /// NestorOS run under trap-and-emulate executes them (SoftwareTechniqueTests).</summary>
    private static readonly Mnemonic[] ExercisedByTheGuest = [Mnemonic.Iretq, Mnemonic.Iretd, Mnemonic.Retf, Mnemonic.Int, Mnemonic.Int3];

    /// <summary>Rows of instructions that do not exist in 64-bit mode (the decoder gives #UD there), and IRET with a
    /// 16-bit operand size, which the model runs in real mode only (RealMode/ tests it; elsewhere it is #UD, counted
    /// as unmodelled).</summary>
    private static readonly Mnemonic[] InvalidIn64BitMode = [Mnemonic.Into, Mnemonic.Pushfd, Mnemonic.Popfd, Mnemonic.Iret];

    /// <summary>Privileged rows the model does not trap in ring 1: it checks CLAC and STAC against the guest's CPL,
    /// not the hardware ring, where hardware raises #UD at CPL 1 (SDM Vol. 2A CLAC). A known gap of the model,
    /// kept so that a kernel's SMAP toggles do not become traps the VMM cannot emulate.</summary>
    private static readonly Mnemonic[] NotTrappedByTheModel = [Mnemonic.Clac, Mnemonic.Stac];

    /// <summary>Of the uncaught ones, those whose ring-1 outcome the model shows (and counts as uncaught).</summary>
    private static readonly Mnemonic[] RevealsRingOne =
        [Mnemonic.Popf, Mnemonic.Popfq, Mnemonic.Sgdt, Mnemonic.Sidt, Mnemonic.Sldt, Mnemonic.Str, Mnemonic.Smsw];

    public static TheoryData<string> SensitiveRows() =>
    [
        .. InstructionTable.Rows.Where(r => r.Sensitivity != Sensitivity.Innocuous && !ExercisedByTheGuest.Contains(r.Mnemonic) &&
                                            !InvalidIn64BitMode.Contains(r.Mnemonic))
            .Select(r => r.Mnemonic.ToString()),
    ];

    private static (Cpu Cpu, RingCompression RingCompression) RunRingCompressed(Action<Assembler> probe)
    {
        var rc = new RingCompression();
        var m = new TestMachine(probe, exit: false, setup: cpu => cpu.RingCompression = rc);
        int count = 0;
        var counter = new Assembler(64);
        probe(counter);
        count = counter.Instructions.Count;
        m.Cpu.Run(count);
        return (m.Cpu, rc);
    }

    [Theory]
    [MemberData(nameof(SensitiveRows))]
    public void A_ring_one_kernel_traps_on_exactly_the_rows_the_table_says_trap(string mnemonic)
    {
        var row = InstructionTable.Find(Enum.Parse<Mnemonic>(mnemonic))!;
        Assert.True(Probes.TryGetValue(row.Mnemonic, out var probe), $"{mnemonic} is {row.Sensitivity}: add a probe");
        var (cpu, rc) = RunRingCompressed(probe);
        long traps = cpu.Counters.ExceptionsByVector[(int)ExceptionVector.GeneralProtection] +
                     cpu.Counters.ExceptionsByVector[(int)ExceptionVector.InvalidOpcode];
        if (NotTrappedByTheModel.Contains(row.Mnemonic))
        {
            Assert.Equal(0, traps); // should this start to trap, take it off the list
        }
        else if (RingCompression.TrappingInstructions.Contains(row.Mnemonic))
        {
            Assert.True(traps >= 1, $"{mnemonic} did not trap in ring 1"); // the first is the trap; delivery may fault again
        }
        else
        {
            Assert.Equal(0, traps);
            Assert.Equal(0, cpu.Counters.ExceptionsByVector.Sum());
            if (RevealsRingOne.Contains(row.Mnemonic))
            {
                Assert.True(rc.UncaughtSensitive > 0, $"{mnemonic} ran in ring 1 without being counted as uncaught");
            }
        }
    }

    [Fact]
    public void The_same_probes_run_on_bare_metal_at_cpl_0_without_a_trap()
    {
        foreach (var (mnemonic, probe) in Probes.Where(p => p.Key is not (Mnemonic.Hlt or Mnemonic.Sysretq or Mnemonic.Sysret or Mnemonic.Ltr or
                                                                    Mnemonic.Sysexit or Mnemonic.Sysexitq or Mnemonic.Rdpmc)))
        {
            var m = new TestMachine(probe, exit: false);
            var counter = new Assembler(64);
            probe(counter);
            m.Cpu.Run(counter.Instructions.Count);
            Assert.True(m.Cpu.Counters.ExceptionsByVector.Sum() == 0, $"{mnemonic} faulted at CPL 0 without ring compression");
        }
    }

    [Fact]
    public void Reading_cs_in_ring_one_shows_rpl_1_and_counts_as_uncaught()
    {
        var (cpu, rc) = RunRingCompressed(a => a.mov(eax, cs));
        Assert.Equal(9UL, cpu.Registers[0]);
        Assert.Equal(1, rc.UncaughtSensitive);
    }
}
