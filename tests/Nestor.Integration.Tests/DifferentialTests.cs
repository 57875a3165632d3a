using Iced.Intel;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Machine.Addresses;

namespace Nestor.Integration.Tests;

/// <summary>Differential testing of the software machine against the real CPU: random sequences of ring-0 integer
/// instructions run on KVM and on sim, and every register, the touched memory and RFLAGS must agree. The generator
/// covers every integer instruction sim implements that this host's KVM runs: the ALU group at every width with
/// register, immediate and memory operands (LOCK on memory destinations), INC/DEC/NEG/NOT, shifts and rotates
/// (through carry too) by 1, an immediate and CL with any count, SHLD/SHRD, MUL/IMUL (one, two and three operands)
/// and DIV/IDIV at every width, sign extensions, MOVZX/MOVSX/MOVSXD, LEA, MOV (moffs too)/XCHG/BSWAP/XLATB,
/// BT/BTS/BTR/BTC with immediate and register offsets (into memory beyond the operand, negative too), BSF/BSR,
/// CMPXCHG, CMPXCHG8B and XADD, PUSH/POP, CMOVcc/SETcc/Jcc, LAHF/SAHF, PUSHFQ/POPFQ, CLC/STC/CMC, CALL/RET,
/// LOOP/LOOPE/LOOPNE, JRCXZ/JECXZ, ENTER/LEAVE, the string instructions with and without REP/REPE/REPNE in both
/// directions, the legacy high-byte registers, and memory operands with a 32-bit address size (67h) whose computation
/// wraps at 2^32 or with an FS/GS override whose base addition wraps at 2^64.
///
/// RFLAGS is logged after every item of a sequence and compared under the mask of the flags the SDM defines at that
/// point (see <see cref="Planner"/>: each instruction states which flags it leaves undefined, citing the SDM); an
/// instruction that reads flags (ADC, SBB, RCL, RCR, CMOVcc, SETcc, Jcc, LOOPE/LOOPNE, LAHF) is generated only when
/// the flags it reads are defined, so undefined flags never reach a register. The final RFLAGS is compared in full
/// after an instruction that defines every flag. Left out, because this host's KVM cannot run them or the SDM leaves
/// the result undefined: POPCNT, CMPXCHG16B, LZCNT and TZCNT (this nested KVM executes LZCNT and TZCNT as BSR and BSF;
/// the unit tests check them instead), ENTER with a nesting level (KVM cannot emulate it), BSF/BSR of zero, 16-bit
/// SHLD/SHRD with counts above 16, and #DE. The string instructions with 67h or a source segment override and LOOP
/// with 67h are generated too (sim got them wrong until this test found it). A failing sequence is run again
/// alone with every register and the scratch dumped after every item, and the failure names the first item after
/// which the two machines differ. Deterministic (fixed seeds); 40 batches of 250 sequences by default, scaled with
/// NESTOR_DIFFERENTIAL_SEQUENCES (bench/RESULTS.md records a larger run).</summary>
public class DifferentialTests
{
    private const ulong Scratch = 0x30_0000;    // ScratchBytes of random data per sequence
    private const ulong Results = 0x50_0000;    // the registers and RFLAGS at the end of each sequence
    private const ulong FlagLog = 0x58_0000;    // RFLAGS after every item
    private const ulong TraceLog = 0x60_0000;   // diagnosis only: registers and RFLAGS after every item of one sequence
    private const ulong TraceMemory = 0x61_0000; // diagnosis only: the sequence's scratch after every item
    private const ulong CodeStart = 0x10_0000;  // GuestMemoryLayout.DefaultFlatLoadAddress
    private const int ScratchBytes = 256;
    // The batch size and the sequence length; nestor-bench sim-throughput reads this line from the source.
    private const int sequences = 250, length = 40;
    private const int SequencesPerBatch = sequences, Length = length;
    private const int ItemCount = Length + 1;   // the random items, then one that defines every flag
    private const int Words = 15;               // 14 registers + RFLAGS

    /// <summary>The FS and GS bases the program sets (WRMSR) before the sequences, for memory operands with a segment
    /// override: in 64-bit mode only these two segments have a base (SDM Vol. 3A §3.2.4), added after the address
    /// is reduced to the address size. FS's is small (so a 32-bit address plus it can reach the scratch), GS's is
    /// large (so the addition wraps at 2^64).</summary>
    private const ulong FsBase = 0x1_2345, GsBase = 0xFFFF_8765_4321_0000;

    private const ulong CF = 0x1, PF = 0x4, AF = 0x10, ZF = 0x40, SF = 0x80, DF = 0x400, OF = 0x800;
    private const ulong Status = CF | PF | AF | ZF | SF | OF;

    /// <summary>The general registers the sequences use, by hardware number: all but RSP (the stack of the flag
    /// log) and R15 (the scratch base).</summary>
    private static readonly int[] Gprs = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
    private static readonly string[] GprNames = ["rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14"];

    /// <summary>Registers that may hold a 32-bit address: never RAX, RCX, RDX (implicit operands of MUL/DIV,
    /// CMPXCHG and shifts by CL), which an item may set after its address.</summary>
    private static readonly int[] AddressRegisters = [3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

    private static readonly Register[] Legacy8 = [Register.AL, Register.CL, Register.DL, Register.BL, Register.AH, Register.CH, Register.DH, Register.BH];

    public static TheoryData<int> Seeds()
    {
        int batches = int.TryParse(Environment.GetEnvironmentVariable("NESTOR_DIFFERENTIAL_SEQUENCES"), out int n) ? Math.Max(1, n / SequencesPerBatch) : 40;
        return new TheoryData<int>(Enumerable.Range(1, batches));
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Random_integer_sequences_agree_with_the_real_cpu(int seed)
    {
        NestorProcess.RequireKvm();
        var random = new Random(seed);
        var batch = new Sequence[SequencesPerBatch];
        for (int k = 0; k < batch.Length; k++)
        {
            batch[k] = Sequence.Plan(random, k);
        }
        var data = new byte[SequencesPerBatch * ScratchBytes];
        new Random(seed * 7919).NextBytes(data);

        var kvm = Machine.Run(new KvmEngine(), batch, data, trace: null);
        var sim = Machine.Run(new SimEngine(), batch, data, trace: null);

        for (int k = 0; k < batch.Length; k++)
        {
            var differences = new List<string>();
            for (int j = 0; j < Words; j++)
            {
                ulong e = kvm.Word(k, j), s = sim.Word(k, j);
                if (e != s)
                {
                    differences.Add($"{(j < Gprs.Length ? GprNames[j] : "rflags")}: kvm 0x{e:x} sim 0x{s:x}");
                }
            }
            for (int b = 0; b < ScratchBytes; b++)
            {
                int at = k * ScratchBytes + b;
                if (kvm.Memory[at] != sim.Memory[at])
                {
                    differences.Add($"scratch byte {b}: kvm 0x{kvm.Memory[at]:x2} sim 0x{sim.Memory[at]:x2}");
                }
            }
            for (int n = 0; n < ItemCount; n++)
            {
                ulong mask = batch[k].Items[n].Compared;
                ulong e = kvm.Flags(k, n), s = sim.Flags(k, n);
                if (((e ^ s) & mask) != 0)
                {
                    differences.Add($"rflags after item {n} ({batch[k].Items[n].Text}): {FlagNames((e ^ s) & mask)} differ " +
                                    $"(kvm {FlagNames(e & mask)}, sim {FlagNames(s & mask)})");
                }
            }
            if (differences.Count > 0)
            {
                Assert.Fail($"seed {seed}, sequence {k} differs:\n  {string.Join("\n  ", differences.Take(20))}\n" +
                            Diagnose(batch[k], data));
            }
        }
    }

    /// <summary>Runs one sequence again on both machines with every register dumped after every item, and names the
    /// first item after which they differ.</summary>
    private static string Diagnose(Sequence sequence, byte[] data)
    {
        var kvm = Machine.Run(new KvmEngine(), [sequence], data, trace: sequence);
        var sim = Machine.Run(new SimEngine(), [sequence], data, trace: sequence);
        var listing = new List<string>();
        string? first = null;
        for (int n = 0; n < ItemCount; n++)
        {
            var item = sequence.Items[n];
            listing.Add($"{n,2}: {item.Text}");
            if (first is not null)
            {
                continue;
            }
            var differences = new List<string>();
            for (int j = 0; j < Gprs.Length; j++)
            {
                ulong e = kvm.Trace(n, j), s = sim.Trace(n, j);
                if (e != s)
                {
                    differences.Add($"{GprNames[j]}: kvm 0x{e:x} sim 0x{s:x}");
                }
            }
            for (int b = 0; b < ScratchBytes; b++)
            {
                byte e = kvm.TraceScratch[n * ScratchBytes + b], s = sim.TraceScratch[n * ScratchBytes + b];
                if (e != s)
                {
                    differences.Add($"scratch byte {b} ([r15+0x{b:x}]): kvm 0x{e:x2} sim 0x{s:x2}");
                }
            }
            ulong fe = kvm.Trace(n, Gprs.Length), fs = sim.Trace(n, Gprs.Length);
            if (((fe ^ fs) & item.Compared) != 0)
            {
                differences.Add($"flags {FlagNames((fe ^ fs) & item.Compared)} (kvm {FlagNames(fe & item.Compared)}, sim {FlagNames(fs & item.Compared)})");
            }
            if (differences.Count > 0)
            {
                first = $"first difference after item {n} ({item.Text}): {string.Join(", ", differences)}";
                listing[^1] += "   <<< here";
            }
        }
        return (first ?? "registers, scratch and defined flags agree after every item when the sequence runs alone") +
               $"\nsequence (initial registers {string.Join(", ", sequence.Initial.Select((v, j) => $"{GprNames[j]}=0x{v:x}"))}):\n  " +
               string.Join("\n  ", listing);
    }

    private static string FlagNames(ulong flags)
    {
        var names = new List<string>();
        foreach (var (bit, name) in new[] { (CF, "CF"), (PF, "PF"), (AF, "AF"), (ZF, "ZF"), (SF, "SF"), (DF, "DF"), (OF, "OF") })
        {
            if ((flags & bit) != 0)
            {
                names.Add(name);
            }
        }
        return names.Count == 0 ? "none" : string.Join("|", names);
    }

    /// <summary>What one run leaves in guest memory.</summary>
    private sealed class Machine
    {
        public required byte[] Registers, FlagsLog, Memory, TraceWords, TraceScratch;

        public ulong Word(int sequence, int word) => BitConverter.ToUInt64(Registers, (sequence * Words + word) * 8);
        public ulong Flags(int sequence, int item) => BitConverter.ToUInt64(FlagsLog, (sequence * ItemCount + item) * 8);
        public ulong Trace(int item, int word) => BitConverter.ToUInt64(TraceWords, (item * Words + word) * 8);

        public static Machine Run(IEngine engine, Sequence[] batch, byte[] data, Sequence? trace)
        {
            var a = new Assembler(64);
            foreach (var (msr, value) in new[] { (0xC000_0100u, FsBase), (0xC000_0101u, GsBase) }) // IA32_FS_BASE, IA32_GS_BASE
            {
                a.AddInstruction(Instruction.Create(Code.Mov_r32_imm32, Register.ECX, msr));
                a.AddInstruction(Instruction.Create(Code.Mov_r32_imm32, Register.EAX, (uint)value));
                a.AddInstruction(Instruction.Create(Code.Mov_r32_imm32, Register.EDX, (uint)(value >> 32)));
                a.AddInstruction(Instruction.Create(Code.Wrmsr));
            }
            var starts = new List<(Label Label, string Text)>();
            foreach (var s in batch)
            {
                s.Emit(a, trace is not null, starts);
            }
            a.mov(AssemblerRegisters.dx, 0xF4);
            a.xor(AssemblerRegisters.eax, AssemblerRegisters.eax);
            a.@out(AssemblerRegisters.dx, AssemblerRegisters.eax);
            a.hlt();
            using var stream = new MemoryStream();
            var assembled = a.Assemble(new StreamCodeWriter(stream), CodeStart, BlockEncoderOptions.ReturnNewInstructionOffsets);
            byte[] code = stream.ToArray();
            Assert.True(CodeStart + (ulong)code.Length <= Scratch, $"the generated code ({code.Length} bytes) overlaps the scratch data");
            using var vm = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("differential", code), MemoryBytes = 8UL << 20, Timeout = TimeSpan.FromSeconds(60) });
            vm.Memory.Write(new GuestPhysical(Scratch), data);
            var outcome = vm.Run(engine).Outcome;
            if (outcome.Kind != VmOutcomeKind.DebugExit || outcome.GuestStatus != 0)
            {
                // Name the item that was running (a fault: the generator must not cause one, so either it or the
                // machine is wrong).
                ulong rip = outcome.FinalState?.Rip ?? 0;
                string where = starts.LastOrDefault(s => assembled.GetLabelRIP(s.Label) <= rip).Text ?? "before the first item";
                Assert.Fail($"{engine.Name}: {outcome.Message}\n  in {where}");
            }
            return new Machine
            {
                Registers = vm.Memory.Span(new GuestPhysical(Results), SequencesPerBatch * Words * 8).ToArray(),
                FlagsLog = vm.Memory.Span(new GuestPhysical(FlagLog), SequencesPerBatch * ItemCount * 8).ToArray(),
                Memory = vm.Memory.Span(new GuestPhysical(Scratch), data.Length).ToArray(),
                TraceWords = vm.Memory.Span(new GuestPhysical(TraceLog), ItemCount * Words * 8).ToArray(),
                TraceScratch = vm.Memory.Span(new GuestPhysical(TraceMemory), ItemCount * ScratchBytes).ToArray(),
            };
        }
    }

    /// <summary>One generated item: an instruction or a short idiom, and the flags compared after it (the status flags
    /// the SDM defines at that point, and DF).</summary>
    private sealed record Item(string Text, Action<Assembler> Emit, ulong Compared);

    private sealed class Sequence
    {
        public required int Index;
        public required ulong[] Initial;
        public required Item[] Items;

        public static Sequence Plan(Random random, int index)
        {
            var initial = new ulong[Gprs.Length];
            for (int j = 0; j < initial.Length; j++)
            {
                initial[j] = Random64(random);
            }
            var planner = new Planner(random, index);
            var items = new Item[ItemCount];
            for (int n = 0; n < Length; n++)
            {
                items[n] = planner.Next();
            }
            items[Length] = planner.Last();
            return new Sequence { Index = index, Initial = initial, Items = items };
        }

        public void Emit(Assembler a, bool trace, List<(Label Label, string Text)> starts)
        {
            for (int j = 0; j < Gprs.Length; j++)
            {
                a.AddInstruction(Instruction.Create(Code.Mov_r64_imm64, Register.RAX + Gprs[j], Initial[j]));
            }
            a.AddInstruction(Instruction.Create(Code.Mov_r64_imm64, Register.R15, Scratch + (ulong)(Index * ScratchBytes)));
            a.AddInstruction(Instruction.Create(Code.Add_rm64_r64, Register.RAX, Register.RBX)); // every flag defined
            for (int n = 0; n < Items.Length; n++)
            {
                var start = a.CreateLabel();
                a.Label(ref start);
                starts.Add((start, $"sequence {Index} item {n}: {Items[n].Text}"));
                Items[n].Emit(a);
                // PUSHFQ and POP m64 change no flag, so the next item sees the flags as this one left them.
                a.AddInstruction(Instruction.Create(Code.Pushfq));
                a.AddInstruction(Instruction.Create(Code.Pop_rm64, Absolute(FlagLog + (ulong)((Index * ItemCount + n) * 8))));
                if (trace)
                {
                    Store(a, TraceLog + (ulong)(n * Words * 8));
                    // And the scratch, through RAX (saved on the stack; MOV, PUSH and POP change no flag).
                    a.AddInstruction(Instruction.Create(Code.Push_r64, Register.RAX));
                    for (int q = 0; q < ScratchBytes; q += 8)
                    {
                        a.AddInstruction(Instruction.Create(Code.Mov_r64_rm64, Register.RAX, new MemoryOperand(Register.R15, Register.None, 1, q, 1)));
                        a.AddInstruction(Instruction.Create(Code.Mov_rm64_r64, Absolute(TraceMemory + (ulong)(n * ScratchBytes + q)), Register.RAX));
                    }
                    a.AddInstruction(Instruction.Create(Code.Pop_r64, Register.RAX));
                }
            }
            Store(a, Results + (ulong)(Index * Words * 8));
        }

        /// <summary>Stores the registers and RFLAGS at <paramref name="address"/> without changing them.</summary>
        private static void Store(Assembler a, ulong address)
        {
            a.AddInstruction(Instruction.Create(Code.Pushfq));
            for (int j = 0; j < Gprs.Length; j++)
            {
                a.AddInstruction(Instruction.Create(Code.Mov_rm64_r64, Absolute(address + (ulong)(j * 8)), Register.RAX + Gprs[j]));
            }
            a.AddInstruction(Instruction.Create(Code.Pop_rm64, Absolute(address + (ulong)(Gprs.Length * 8))));
        }

        private static MemoryOperand Absolute(ulong address) => new(Register.None, Register.None, 1, (long)address, 4);
    }

    private static ulong Random64(Random r) => (ulong)r.NextInt64() ^ ((ulong)r.Next() << 40);

    /// <summary>Chooses the items of one sequence, keeping track of which status flags are defined after each (the SDM's
    /// "Flags Affected" of every instruction, Vol. 2A/2B), so that consumers only read defined flags and the flag log
    /// is compared only where the SDM defines it.</summary>
    private sealed class Planner(Random r, int index)
    {
        private readonly ulong scratch = Scratch + (ulong)(index * ScratchBytes);
        private ulong defined = Status; // the ADD that starts every sequence

        private static readonly string[] AluNames = ["Add", "Or", "Adc", "Sbb", "And", "Sub", "Xor", "Cmp", "Test"];
        private static readonly string[] Suffixes = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"];
        /// <summary>The flags each condition reads (SDM Vol. 1 Appendix B).</summary>
        private static readonly ulong[] ConditionFlags = [OF, OF, CF, CF, ZF, ZF, CF | ZF, CF | ZF, SF, SF, PF, PF, SF | OF, SF | OF, ZF | SF | OF, ZF | SF | OF];
        private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, Code> Codes = [];

        /// <summary>Iced's code by name, so that one generator serves every width ($"Add_rm{w}_r{w}").</summary>
        private static Code C(string name) => Codes.GetOrAdd(name, Enum.Parse<Code>);

        private static Register Reg(int bits, int n) => bits switch
        {
            64 => Register.RAX + n,
            32 => Register.EAX + n,
            16 => Register.AX + n,
            _ => n < 4 ? Register.AL + n : n < 8 ? Register.SPL + (n - 4) : Register.R8L + (n - 8),
        };

        private int Gpr() => Gprs[r.Next(Gprs.Length)];
        private int Width() => 8 << r.Next(4);
        private int Width16() => 16 << r.Next(3);
        private bool Chance(int inN) => r.Next(inN) == 0;

        private Item Make(ulong definedAfter, params Instruction[] list)
        {
            defined = definedAfter & Status;
            return new Item(string.Join("; ", list.Select(i => i.ToString())), a =>
            {
                foreach (var i in list)
                {
                    a.AddInstruction(i);
                }
            }, defined | DF);
        }

        private static Instruction Locked(Instruction i)
        {
            i.HasLockPrefix = true;
            return i;
        }

        /// <summary>A memory operand of <paramref name="bytes"/> in this sequence's scratch, usually [r15 + disp];
        /// one in six times through a 32-bit address (67h), one in eight through an FS or GS override, whose registers
        /// are set up by the returned instructions, which must run right before the one using it.</summary>
        private (MemoryOperand Operand, Instruction[] Setup) Mem(int bytes, params int[] avoid)
        {
            int offset = r.Next(0, ScratchBytes - bytes + 1);
            int kind = r.Next(24);
            if (kind < 17)
            {
                return (new MemoryOperand(Register.R15, Register.None, 1, offset, 1), []);
            }
            if (kind < 21)
            {
                bool fs = Chance(3);
                return Address32(scratch + (ulong)offset - (fs ? FsBase : 0), avoid, fs ? Register.FS : Register.None);
            }
            // [reg + disp] with a segment base that brings it to the scratch (wrapping at 2^64 for GS).
            var segment = Chance(2) ? Register.FS : Register.GS;
            int b = AddressRegisters.Except(avoid).ElementAt(r.Next(AddressRegisters.Except(avoid).Count()));
            int displacement = r.Next(-1000, 1000);
            ulong value = scratch + (ulong)offset - (segment == Register.FS ? FsBase : GsBase) - (ulong)(long)displacement;
            return (new MemoryOperand(Reg(64, b), Register.None, 1, displacement, 1, false, segment),
                [Instruction.Create(Code.Mov_r64_imm64, Reg(64, b), value)]);
        }

        /// <summary>A 32-bit addressed memory operand whose effective address is <paramref name="target"/> mod 2^32:
        /// base + index × scale + disp with random upper halves in the registers (ignored with 67h) and low halves
        /// that wrap around 2^32 (SDM Vol. 1 §3.3.7: with a 32-bit address size the effective address is computed
        /// mod 2^32 and zero-extended).</summary>
        private (MemoryOperand Operand, Instruction[] Setup) Address32(ulong target, int[] avoid, Register segment = Register.None)
        {
            var pool = AddressRegisters.Except(avoid).ToArray();
            int b = pool[r.Next(pool.Length)];
            int x = pool.Where(p => p != b).ElementAt(r.Next(pool.Length - 1));
            int scale = 1 << r.Next(4);
            int displacement = Chance(2) ? r.Next(-300, 300) : r.Next(int.MinValue, int.MaxValue);
            ulong indexValue = Random64(r);
            switch (r.Next(3))
            {
                case 0:
                    {
                        ulong baseValue = (Random64(r) & ~0xFFFF_FFFFUL) | (uint)(target - indexValue * (ulong)scale - (ulong)(long)displacement);
                        return (new MemoryOperand(Reg(32, b), Reg(32, x), scale, displacement, 4, false, segment),
                            [Instruction.Create(Code.Mov_r64_imm64, Reg(64, b), baseValue), Instruction.Create(Code.Mov_r64_imm64, Reg(64, x), indexValue)]);
                    }
                case 1:
                    {
                        ulong baseValue = (Random64(r) & ~0xFFFF_FFFFUL) | (uint)(target - (ulong)(long)displacement);
                        return (new MemoryOperand(Reg(32, b), Register.None, 1, displacement, 4, false, segment),
                            [Instruction.Create(Code.Mov_r64_imm64, Reg(64, b), baseValue)]);
                    }
                default:
                    {
                        // No base: [index × scale + disp32].
                        displacement = (int)(uint)(target - indexValue * (ulong)scale);
                        return (new MemoryOperand(Register.None, Reg(32, x), scale, displacement, 4, false, segment),
                            [Instruction.Create(Code.Mov_r64_imm64, Reg(64, x), indexValue)]);
                    }
            }
        }

        public Item Next()
        {
            while (true)
            {
                Item? item = r.Next(100) switch
                {
                    < 6 => AluRegister(),
                    < 11 => AluImmediate(),
                    < 16 => AluMemory(),
                    < 20 => Unary(),
                    < 28 => ShiftOrRotate(),
                    < 33 => DoubleShift(),
                    < 37 => MultiplyOneOperand(),
                    < 40 => MultiplyTwoOrThreeOperands(),
                    < 45 => Divide(),
                    < 47 => SignExtendAccumulator(),
                    < 50 => Extend(),
                    < 53 => LoadEffectiveAddress(),
                    < 58 => Move(),
                    < 64 => BitTest(),
                    < 67 => BitScan(),
                    < 69 => PushPop(),
                    < 73 => ExchangeAndAdd(),
                    < 74 => CallReturn(),
                    < 77 => JumpConditional(),
                    < 82 => ConditionalMoveOrSet(),
                    < 86 => FlagInstructions(),
                    < 94 => StringInstruction(),
                    < 96 => Loop(),
                    < 97 => JumpIfCountZero(),
                    < 98 => EnterLeave(),
                    < 99 => Translate(),
                    < 100 => CompareExchange8Bytes(),
                    _ => AluRegister(),
                };
                if (item is not null)
                {
                    return item;
                }
            }
        }

        /// <summary>The last item defines every status flag (so the final RFLAGS is compared in full), each time in
        /// one of several ways.</summary>
        public Item Last() => r.Next(4) switch
        {
            0 => Make(Status, Instruction.Create(Code.Add_rm64_r64, Register.RAX, Register.RCX)),
            1 => Make(Status, Instruction.Create(Code.Sub_rm32_r32, Register.ECX, Register.EDX)),
            2 => Make(Status, Instruction.Create(Code.Cmp_rm16_r16, Register.BX, Register.SI)),
            _ => Make(Status, Instruction.Create(Code.Neg_rm8, Register.R8L)),
        };

        /// <summary>ADC and SBB read CF; the others do not read flags.</summary>
        private int AluOperation(bool allowTest = true)
        {
            while (true)
            {
                int op = r.Next(allowTest ? AluNames.Length : AluNames.Length - 1);
                if ((AluNames[op] is not ("Adc" or "Sbb")) || (defined & CF) != 0)
                {
                    return op;
                }
            }
        }

        /// <summary>SDM Vol. 2A AND/OR/XOR/TEST: "The state of the AF flag is undefined"; ADD/ADC/SUB/SBB/CMP define
        /// all six.</summary>
        private static ulong AluDefines(int op) => AluNames[op] is "And" or "Or" or "Xor" or "Test" ? Status & ~AF : Status;

        private static bool AluWrites(int op) => AluNames[op] is not ("Cmp" or "Test");

        private Item AluRegister()
        {
            int op = AluOperation();
            int w = Width();
            Register d, s;
            if (w == 8 && Chance(3))
            {
                (d, s) = (Legacy8[r.Next(8)], Legacy8[r.Next(8)]); // AH..BH: the legacy high bytes
            }
            else
            {
                (d, s) = (Reg(w, Gpr()), Reg(w, Gpr()));
            }
            string name = AluNames[op];
            var code = name == "Test" || Chance(2) ? C($"{name}_rm{w}_r{w}") : C($"{name}_r{w}_rm{w}");
            return Make(AluDefines(op), Instruction.Create(code, d, s));
        }

        private Item AluImmediate()
        {
            int op = AluOperation();
            string name = AluNames[op];
            int w = Width();
            int n = Gpr();
            bool memory = Chance(2);
            Code code;
            int immediate;
            if (w == 8)
            {
                (code, immediate) = (C($"{name}_rm8_imm8"), r.Next(-128, 128));
            }
            else if (name != "Test" && Chance(2))
            {
                (code, immediate) = (C($"{name}_rm{w}_imm8"), r.Next(-128, 128)); // sign-extended imm8
            }
            else
            {
                (code, immediate) = (C($"{name}_rm{w}_imm{Math.Min(w, 32)}"), w == 16 ? r.Next(-32768, 32768) : r.Next(int.MinValue, int.MaxValue));
            }
            if (memory)
            {
                var (m, setup) = Mem(w / 8);
                var instruction = Instruction.Create(code, m, immediate);
                if (AluWrites(op) && Chance(4))
                {
                    instruction = Locked(instruction);
                }
                return Make(AluDefines(op), [.. setup, instruction]);
            }
            if (n == 0 && Chance(2))
            {
                // The accumulator's short forms (04, 05 ...).
                string accumulator = w switch { 8 => "AL_imm8", 16 => "AX_imm16", 32 => "EAX_imm32", _ => "RAX_imm32" };
                code = C($"{name}_{accumulator}");
                immediate = w == 8 ? r.Next(-128, 128) : w == 16 ? r.Next(-32768, 32768) : r.Next(int.MinValue, int.MaxValue);
            }
            return Make(AluDefines(op), Instruction.Create(code, Reg(w, n), immediate));
        }

        private Item AluMemory()
        {
            int op = AluOperation();
            string name = AluNames[op];
            int w = Width();
            int n = Gpr();
            var (m, setup) = Mem(w / 8, n);
            if (name == "Test" || Chance(2))
            {
                var instruction = Instruction.Create(C($"{name}_rm{w}_r{w}"), m, Reg(w, n));
                if (AluWrites(op) && Chance(4))
                {
                    instruction = Locked(instruction);
                }
                return Make(AluDefines(op), [.. setup, instruction]);
            }
            return Make(AluDefines(op), [.. setup, Instruction.Create(C($"{name}_r{w}_rm{w}"), Reg(w, n), m)]);
        }

        private Item Unary()
        {
            string[] names = ["Inc", "Dec", "Neg", "Not"];
            string name = names[r.Next(4)];
            int w = Width();
            // SDM Vol. 2A INC/DEC: CF is not affected, the others are set; NEG: all set; NOT: none affected.
            ulong after = name switch { "Inc" or "Dec" => (defined & CF) | (Status & ~CF), "Neg" => Status, _ => defined };
            var code = C($"{name}_rm{w}");
            if (Chance(3))
            {
                var (m, setup) = Mem(w / 8);
                var instruction = Instruction.Create(code, m);
                return Make(after, [.. setup, Chance(3) ? Locked(instruction) : instruction]);
            }
            return Make(after, Instruction.Create(code, Reg8OrLegacy(w)));
        }

        /// <summary>A register of <paramref name="w"/> bits; for 8 bits a third of the time one of AL..BH, so that
        /// AH, CH, DH and BH (legacy encodings, no REX) are covered too.</summary>
        private Register Reg8OrLegacy(int w) => w == 8 && Chance(3) ? Legacy8[r.Next(8)] : Reg(w, Gpr());

        private Item? ShiftOrRotate()
        {
            string[] names = ["Shl", "Shr", "Sar", "Rol", "Ror", "Rcl", "Rcr"];
            string name = names[r.Next(names.Length)];
            bool throughCarry = name is "Rcl" or "Rcr";
            if (throughCarry && (defined & CF) == 0)
            {
                return null; // RCL/RCR rotate CF in
            }
            int w = Width();
            int form = r.Next(3); // by 1, by imm8, by CL
            int count = form == 0 ? 1 : Chance(2) ? r.Next(0, w + 2) : r.Next(256);
            int masked = count & (w == 64 ? 63 : 31);
            var code = C($"{name}_rm{w}_{(form == 0 ? "1" : form == 1 ? "imm8" : "CL")}");
            var list = new List<Instruction>();
            if (form == 2)
            {
                list.Add(Instruction.Create(Code.Mov_r8_imm8, Register.CL, count));
            }
            bool memory = Chance(3);
            Instruction shift;
            if (memory)
            {
                var (m, setup) = Mem(w / 8);
                list.AddRange(setup);
                shift = form == 0 ? Instruction.Create(code, m, 1) : form == 1 ? Instruction.Create(code, m, count) : Instruction.Create(code, m, Register.CL);
            }
            else
            {
                var d = Reg8OrLegacy(w);
                shift = form == 0 ? Instruction.Create(code, d, 1) : form == 1 ? Instruction.Create(code, d, count) : Instruction.Create(code, d, Register.CL);
            }
            list.Add(shift);
            ulong after;
            if (masked == 0)
            {
                after = defined; // "If the count is 0, the flags are not affected" (SDM Vol. 2B SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR)
            }
            else if (name is "Shl" or "Shr")
            {
                // SDM Vol. 2B SAL/SAR/SHL/SHR: CF is undefined for SHL and SHR when the count is at least the operand
                // size; OF is defined only for 1-bit shifts; AF is undefined for a nonzero count.
                after = SF | ZF | PF | (masked < w ? CF : 0) | (masked == 1 ? OF : 0);
            }
            else if (name == "Sar")
            {
                after = SF | ZF | PF | CF | (masked == 1 ? OF : 0);
            }
            else
            {
                // SDM Vol. 2B RCL/RCR/ROL/ROR: CF is affected for a nonzero masked count, OF only for a masked count of
                // 1 (undefined otherwise); SF, ZF, AF and PF are not affected.
                after = (defined & (SF | ZF | AF | PF)) | CF | (masked == 1 ? OF : 0);
            }
            return Make(after, [.. list]);
        }

        private Item DoubleShift()
        {
            string name = Chance(2) ? "Shld" : "Shrd";
            int w = Width16();
            // A 16-bit SHLD/SHRD with a masked count above 16 has an undefined result and flags (SDM Vol. 2B
            // SHLD/SHRD): left out (sim's choice is pinned by the unit tests). The count's bits above the mask vary.
            int count = w == 16 ? r.Next(0, 17) + 32 * r.Next(8) : r.Next(256);
            int masked = count & (w == 64 ? 63 : 31);
            bool byCl = Chance(2);
            var code = C($"{name}_rm{w}_r{w}_{(byCl ? "CL" : "imm8")}");
            int s = Gpr();
            var list = new List<Instruction>();
            if (byCl)
            {
                list.Add(Instruction.Create(Code.Mov_r8_imm8, Register.CL, count));
            }
            if (Chance(3))
            {
                var (m, setup) = Mem(w / 8, s);
                list.AddRange(setup);
                list.Add(byCl ? Instruction.Create(code, m, Reg(w, s), Register.CL) : Instruction.Create(code, m, Reg(w, s), count));
            }
            else
            {
                var d = Reg(w, Gpr());
                list.Add(byCl ? Instruction.Create(code, d, Reg(w, s), Register.CL) : Instruction.Create(code, d, Reg(w, s), count));
            }
            // SDM Vol. 2B SHLD/SHRD: count 0 affects no flag; otherwise CF, SF, ZF, PF are defined, OF only for a 1-bit
            // shift, and AF is undefined.
            ulong after = masked == 0 ? defined : SF | ZF | PF | CF | (masked == 1 ? OF : 0);
            return Make(after, [.. list]);
        }

        /// <summary>SDM Vol. 2A MUL/IMUL: CF and OF are defined; "The SF, ZF, AF, and PF flags are undefined."</summary>
        private const ulong MultiplyDefines = CF | OF;

        private Item MultiplyOneOperand()
        {
            string name = Chance(2) ? "Mul" : "Imul";
            int w = Width();
            var code = C($"{name}_rm{w}");
            if (Chance(3))
            {
                var (m, setup) = Mem(w / 8);
                return Make(MultiplyDefines, [.. setup, Instruction.Create(code, m)]);
            }
            var source = w == 8 && Chance(3) ? Legacy8[r.Next(8)] : Reg(w, Gpr());
            return Make(MultiplyDefines, Instruction.Create(code, source));
        }

        private Item MultiplyTwoOrThreeOperands()
        {
            int w = Width16();
            int d = Gpr();
            int form = r.Next(3); // r, r/m; r, r/m, imm8; r, r/m, imm16/32
            var code = C(form switch { 0 => $"Imul_r{w}_rm{w}", 1 => $"Imul_r{w}_rm{w}_imm8", _ => $"Imul_r{w}_rm{w}_imm{Math.Min(w, 32)}" });
            int immediate = form == 1 ? r.Next(-128, 128) : w == 16 ? r.Next(-32768, 32768) : r.Next(int.MinValue, int.MaxValue);
            if (Chance(3))
            {
                var (m, setup) = Mem(w / 8, d);
                return Make(MultiplyDefines, [.. setup, form == 0 ? Instruction.Create(code, Reg(w, d), m) : Instruction.Create(code, Reg(w, d), m, immediate)]);
            }
            var s = Reg(w, Gpr());
            return Make(MultiplyDefines, form == 0 ? Instruction.Create(code, Reg(w, d), s) : Instruction.Create(code, Reg(w, d), s, immediate));
        }

        /// <summary>DIV and IDIV at every width, with the dividend and divisor first bent so that no #DE can occur
        /// (this KVM cannot deliver exceptions): DIV with the high half below the divisor, IDIV with a sign-extended
        /// dividend and a divisor other than 0 and −1, or with a small non-negative high half and a divisor of at least
        /// 2^(w−2) in magnitude (so that |quotient| &lt; 2^(w−1)). SDM Vol. 2A DIV/IDIV: "The CF, OF, SF, ZF, AF, and
        /// PF flags are undefined."</summary>
        private Item Divide()
        {
            int w = Width();
            bool signed = Chance(2);
            int[] divisors = [1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]; // not RAX, RDX
            int n = divisors[r.Next(divisors.Length)];
            var d = Reg(w, n);
            var high = w == 8 ? Register.AH : Reg(w, 2);
            var list = new List<Instruction>();
            Instruction Imm(string op, Register reg, int value) => Instruction.Create(C(w == 8 ? $"{op}_rm8_imm8" : $"{op}_rm{w}_imm8"), reg, value);
            if (!signed)
            {
                if (Chance(2))
                {
                    list.Add(Instruction.Create(C($"Xor_rm{w}_r{w}"), high, high));
                    list.Add(Imm("Or", d, 1));
                }
                else
                {
                    list.Add(Instruction.Create(C($"Shr_rm{w}_1"), high, 1));
                    list.Add(w == 8 ? Imm("Or", d, -128) : Instruction.Create(C($"Bts_rm{w}_imm8"), d, w - 1));
                }
            }
            else if (Chance(2))
            {
                list.Add(Instruction.Create(w switch { 8 => Code.Cbw, 16 => Code.Cwd, 32 => Code.Cdq, _ => Code.Cqo }));
                if (Chance(2))
                {
                    list.Add(Imm("And", d, -3)); // bit 1 clear and bit 0 set: neither 0 nor -1
                    list.Add(Imm("Or", d, 1));
                }
                else
                {
                    list.Add(Imm("Or", d, 2));   // bit 1 set and bit 0 clear
                    list.Add(Imm("And", d, -2));
                }
            }
            else
            {
                list.Add(Instruction.Create(C(w == 8 ? "Shr_rm8_imm8" : $"Shr_rm{w}_imm8"), high, 3));
                if (Chance(2))
                {
                    list.Add(Instruction.Create(C($"Shr_rm{w}_1"), d, 1)); // positive, at least 2^(w-2)
                    list.Add(w == 8 ? Imm("Or", d, 0x40) : Instruction.Create(C($"Bts_rm{w}_imm8"), d, w - 2));
                }
                else if (w == 8)
                {
                    list.Add(Imm("Or", d, -128));   // 0x80..0xBF: -128..-65
                    list.Add(Imm("And", d, -65));
                }
                else
                {
                    list.Add(Instruction.Create(C($"Bts_rm{w}_imm8"), d, w - 1));
                    list.Add(Instruction.Create(C($"Btr_rm{w}_imm8"), d, w - 2));
                }
            }
            var code = C($"{(signed ? "Idiv" : "Div")}_rm{w}");
            if (Chance(3))
            {
                var (m, setup) = Mem(w / 8, n);
                list.AddRange(setup);
                list.Add(Instruction.Create(C($"Mov_rm{w}_r{w}"), m, d));
                list.Add(Instruction.Create(code, m));
            }
            else
            {
                list.Add(Instruction.Create(code, d));
            }
            return Make(0, [.. list]);
        }

        private Item SignExtendAccumulator()
        {
            Code[] codes = [Code.Cbw, Code.Cwde, Code.Cdqe, Code.Cwd, Code.Cdq, Code.Cqo];
            return Make(defined, Instruction.Create(codes[r.Next(codes.Length)])); // no flags affected
        }

        private Item Extend()
        {
            int form = r.Next(6);
            (string name, int to, int from) = form switch
            {
                0 => ("Movzx", 16 << r.Next(3), 8),
                1 => ("Movzx", 32 << r.Next(2), 16),
                2 => ("Movsx", 16 << r.Next(3), 8),
                3 => ("Movsx", 32 << r.Next(2), 16),
                4 => ("Movsxd", 64, 32),
                _ => ("Movzx", 16, 16),
            };
            var code = C($"{name}_r{to}_rm{from}");
            int d = Gpr();
            if (from == 8 && to < 64 && Chance(4))
            {
                int[] legacy = [0, 1, 2, 3, 5, 6, 7]; // destinations that need no REX, so AH..BH can be the source
                return Make(defined, Instruction.Create(code, Reg(to, legacy[r.Next(legacy.Length)]), Legacy8[r.Next(8)]));
            }
            if (Chance(3))
            {
                var (m, setup) = Mem(from / 8, d);
                return Make(defined, [.. setup, Instruction.Create(code, Reg(to, d), m)]);
            }
            return Make(defined, Instruction.Create(code, Reg(to, d), Reg(from, Gpr())));
        }

        /// <summary>LEA with 64- and 32-bit address sizes into 16-, 32- and 64-bit destinations: the address is computed
        /// at the address size and then truncated or zero-extended to the operand size (SDM Vol. 2A LEA, Table 3-54).</summary>
        private Item LoadEffectiveAddress()
        {
            int w = Width16();
            int addressBits = Chance(2) ? 64 : 32;
            int[] bases = [.. Gprs, 4, 15];
            var b = Reg(addressBits, bases[r.Next(bases.Length)]);
            var x = Reg(addressBits, Gprs[r.Next(Gprs.Length)]);
            int scale = 1 << r.Next(4);
            long displacement = Chance(2) ? r.Next(-5000, 5000) : r.Next(int.MinValue, int.MaxValue);
            var operand = r.Next(3) switch
            {
                0 => new MemoryOperand(b, x, scale, displacement, 1),
                1 => new MemoryOperand(b, Register.None, 1, displacement, 1),
                _ => new MemoryOperand(Register.None, x, scale, displacement, addressBits == 64 ? 8 : 4),
            };
            return Make(defined, Instruction.Create(C($"Lea_r{w}_m"), Reg(w, Gpr()), operand));
        }

        private Item Move()
        {
            int w = Width();
            int d = Gpr();
            switch (r.Next(10))
            {
                case 8:
                    {
                        // XCHG with the accumulator's short form (90+r; 90 itself is NOP, even for EAX).
                        if (w == 8)
                        {
                            w = 16 << r.Next(3);
                        }
                        string accumulator = w switch { 16 => "AX", 32 => "EAX", _ => "RAX" };
                        return Make(defined, Instruction.Create(C($"Xchg_r{w}_{accumulator}"), Reg(w, d), Reg(w, 0)));
                    }
                case 9:
                    {
                        // MOV to or from the accumulator at a 64-bit absolute address (A0-A3, moffs).
                        string accumulator = w switch { 8 => "AL", 16 => "AX", 32 => "EAX", _ => "RAX" };
                        var m = new MemoryOperand(Register.None, Register.None, 1, (long)scratch + r.Next(0, ScratchBytes - w / 8 + 1), 8);
                        return Make(defined, Chance(2)
                            ? Instruction.Create(C($"Mov_{accumulator}_moffs{w}"), Reg(w, 0), m)
                            : Instruction.Create(C($"Mov_moffs{w}_{accumulator}"), m, Reg(w, 0)));
                    }
                case 0:
                    return Make(defined, Instruction.Create(C(Chance(2) ? $"Mov_rm{w}_r{w}" : $"Mov_r{w}_rm{w}"), Reg(w, d), Reg(w, Gpr())));
                case 1:
                    return w == 64
                        ? Make(defined, Chance(2) ? Instruction.Create(Code.Mov_r64_imm64, Reg(64, d), Random64(r)) : Instruction.Create(Code.Mov_rm64_imm32, Reg(64, d), r.Next(int.MinValue, int.MaxValue)))
                        : Make(defined, Instruction.Create(C(Chance(2) ? $"Mov_r{w}_imm{w}" : $"Mov_rm{w}_imm{w}"), Reg(w, d), w == 8 ? r.Next(256) : w == 16 ? r.Next(65536) : r.Next(int.MinValue, int.MaxValue)));
                case 2:
                    {
                        var (m, setup) = Mem(w / 8, d);
                        return Make(defined, [.. setup, Instruction.Create(C($"Mov_r{w}_rm{w}"), Reg(w, d), m)]);
                    }
                case 3:
                    {
                        var (m, setup) = Mem(w / 8, d);
                        return Make(defined, [.. setup, Instruction.Create(C($"Mov_rm{w}_r{w}"), m, Reg(w, d))]);
                    }
                case 4:
                    {
                        var (m, setup) = Mem(w / 8);
                        int immediate = w == 8 ? r.Next(-128, 128) : w == 16 ? r.Next(-32768, 32768) : r.Next(int.MinValue, int.MaxValue);
                        return Make(defined, [.. setup, Instruction.Create(C($"Mov_rm{w}_imm{Math.Min(w, 32)}"), m, immediate)]);
                    }
                case 5:
                    return Make(defined, Instruction.Create(C($"Xchg_rm{w}_r{w}"), Reg(w, d), Reg(w, Gpr())));
                case 6:
                    {
                        var (m, setup) = Mem(w / 8, d);
                        return Make(defined, [.. setup, Instruction.Create(C($"Xchg_rm{w}_r{w}"), m, Reg(w, d))]);
                    }
                default:
                    {
                        bool wide = Chance(2);
                        return Make(defined, Instruction.Create(wide ? Code.Bswap_r64 : Code.Bswap_r32, Reg(wide ? 64 : 32, d)));
                    }
            }
        }

        /// <summary>BT, BTS, BTR, BTC with an immediate or register offset, on a register or memory. With a register
        /// offset into memory the offset is signed and addresses beyond the operand: the operand-size unit at
        /// address + size × floor(offset / width) (SDM Vol. 2A BT, "Bit Base, Bit Offset"). SDM: CF holds the bit;
        /// "The ZF flag is unaffected. The OF, SF, AF, and PF flags are undefined."</summary>
        private Item BitTest()
        {
            string[] names = ["Bt", "Bts", "Btr", "Btc"];
            string name = names[r.Next(4)];
            int w = Width16();
            int size = w / 8;
            ulong after = (defined & ZF) | CF;
            bool lockable = name != "Bt";
            switch (r.Next(5))
            {
                case 0:
                    return Make(after, Instruction.Create(C($"{name}_rm{w}_r{w}"), Reg(w, Gpr()), Reg(w, Gpr())));
                case 1:
                    return Make(after, Instruction.Create(C($"{name}_rm{w}_imm8"), Reg(w, Gpr()), r.Next(256)));
                case 2:
                    {
                        var (m, setup) = Mem(size);
                        var instruction = Instruction.Create(C($"{name}_rm{w}_imm8"), m, r.Next(256));
                        return Make(after, [.. setup, lockable && Chance(3) ? Locked(instruction) : instruction]);
                    }
                default:
                    {
                        // A register offset into memory: pick the unit to reach, then the offset that reaches it.
                        int n = Gpr();
                        bool address32 = Chance(3);
                        long unit;
                        MemoryOperand m;
                        Instruction[] setup;
                        int target = r.Next(0, ScratchBytes - size + 1);
                        if (address32)
                        {
                            // The effective address anywhere in the 4 GiB, the bit offset's byte displacement wrapping
                            // it (mod 2^32) into the scratch.
                            long limit = w == 16 ? 2047 : 1L << 26;
                            unit = r.NextInt64(-limit, limit);
                            (m, setup) = Address32(scratch + (ulong)target - (ulong)(unit * size), [n]);
                        }
                        else
                        {
                            int displacement = r.Next(0, ScratchBytes - size + 1);
                            // displacement + size × unit within [0, ScratchBytes - size]
                            long low = (long)Math.Ceiling(-displacement / (double)size), high = (ScratchBytes - size - displacement) / size;
                            unit = r.NextInt64(low, high + 1);
                            (m, setup) = (new MemoryOperand(Register.R15, Register.None, 1, displacement, 1), []);
                        }
                        long offset = unit * w + r.Next(w);
                        // Bits above the operand size are ignored: fill them with garbage.
                        ulong value = w == 64 ? (ulong)offset : (Random64(r) & ~((1UL << w) - 1)) | ((ulong)offset & ((1UL << w) - 1));
                        var instruction = Instruction.Create(C($"{name}_rm{w}_r{w}"), m, Reg(w, n));
                        return Make(after, [Instruction.Create(Code.Mov_r64_imm64, Reg(64, n), value), .. setup,
                            lockable && Chance(3) ? Locked(instruction) : instruction]);
                    }
            }
        }

        /// <summary>BSF/BSR of a source made non-zero by setting one random bit (for zero the SDM leaves the
        /// destination undefined). SDM Vol. 2A BSF/BSR: ZF is defined; "The CF, OF, SF, AF, and PF flags are
        /// undefined."</summary>
        private Item BitScan()
        {
            string name = Chance(2) ? "Bsf" : "Bsr";
            int w = Width16();
            int d = Gpr();
            var code = C($"{name}_r{w}_rm{w}");
            int bit = r.Next(w);
            if (Chance(3))
            {
                var (m, setup) = Mem(w / 8, d);
                return Make(ZF, [.. setup, Instruction.Create(C($"Bts_rm{w}_imm8"), m, bit), Instruction.Create(code, Reg(w, d), m)]);
            }
            var s = Reg(w, Gpr());
            return Make(ZF, Instruction.Create(C($"Bts_rm{w}_imm8"), s, bit), Instruction.Create(code, Reg(w, d), s));
        }

        private Item PushPop()
        {
            int x = Gpr(), y = Gpr();
            switch (r.Next(5))
            {
                case 0:
                    return Make(defined, Instruction.Create(Code.Push_r64, Reg(64, x)), Instruction.Create(Code.Pop_r64, Reg(64, y)));
                case 1:
                    return Make(defined, Chance(2) ? Instruction.Create(Code.Pushq_imm8, r.Next(-128, 128)) : Instruction.Create(Code.Pushq_imm32, r.Next(int.MinValue, int.MaxValue)),
                        Instruction.Create(Code.Pop_r64, Reg(64, y)));
                case 2:
                    {
                        var (m, setup) = Mem(8);
                        return Make(defined, [.. setup, Instruction.Create(Code.Push_rm64, m), Instruction.Create(Code.Pop_r64, Reg(64, y))]);
                    }
                case 3:
                    {
                        var (m, setup) = Mem(8, x);
                        return Make(defined, [Instruction.Create(Code.Push_r64, Reg(64, x)), .. setup, Instruction.Create(Code.Pop_rm64, m)]);
                    }
                default:
                    return Make(defined, Instruction.Create(Code.Push_r16, Reg(16, x)), Instruction.Create(Code.Pop_r16, Reg(16, y)));
            }
        }

        /// <summary>XADD (flags as ADD) and CMPXCHG (flags as CMP of the accumulator with the destination), register and
        /// memory destinations, LOCK on memory; CMPXCHG's accumulator is made equal to the destination half the time
        /// so that both outcomes occur (SDM Vol. 2A CMPXCHG, XADD).</summary>
        private Item ExchangeAndAdd()
        {
            bool exchange = Chance(2);
            int w = Width();
            int s = Gpr();
            var code = C($"{(exchange ? "Cmpxchg" : "Xadd")}_rm{w}_r{w}");
            var accumulator = Reg(w, 0);
            var list = new List<Instruction>();
            if (Chance(2))
            {
                var (m, setup) = Mem(w / 8, s);
                list.AddRange(setup);
                if (exchange && Chance(2))
                {
                    list.Add(Instruction.Create(C($"Mov_r{w}_rm{w}"), accumulator, m));
                }
                var instruction = Instruction.Create(code, m, Reg(w, s));
                list.Add(Chance(2) ? Locked(instruction) : instruction);
            }
            else
            {
                var d = Reg(w, Gpr());
                if (exchange && Chance(2))
                {
                    list.Add(Instruction.Create(C($"Mov_r{w}_rm{w}"), accumulator, d));
                }
                list.Add(Instruction.Create(code, d, Reg(w, s)));
            }
            return Make(Status, [.. list]);
        }

        private Item CallReturn()
        {
            var x = Reg(64, Gpr());
            var y = Reg(64, Gpr());
            var add = Instruction.Create(Code.Add_rm64_r64, x, y);
            defined = Status;
            return new Item($"call f; f: {add}; ret", a =>
            {
                var routine = a.CreateLabel();
                var after = a.CreateLabel();
                a.call(routine);
                a.jmp(after);
                a.Label(ref routine);
                a.AddInstruction(add);
                a.ret();
                a.Label(ref after);
            }, Status | DF);
        }

        /// <summary>A condition whose flags are all defined, or −1.</summary>
        private int Condition()
        {
            var usable = Enumerable.Range(0, 16).Where(cc => (ConditionFlags[cc] & ~defined) == 0).ToArray();
            return usable.Length == 0 ? -1 : usable[r.Next(usable.Length)];
        }

        private Item? JumpConditional()
        {
            int cc = Condition();
            if (cc < 0)
            {
                return null;
            }
            var not = Instruction.Create(Code.Not_rm64, Reg(64, Gpr()));
            ulong after = defined;
            return new Item($"j{Suffixes[cc]} over {not}", a =>
            {
                var skip = a.CreateLabel();
                Jump(a, cc, skip);
                a.AddInstruction(not);
                a.Label(ref skip);
            }, after | DF);
        }

        /// <summary>CMOVcc at 16, 32 and 64 bits (the 32-bit form zero-extends its destination even when the condition
        /// is false, SDM Vol. 2A CMOVcc) and SETcc, with register and memory operands.</summary>
        private Item? ConditionalMoveOrSet()
        {
            int cc = Condition();
            if (cc < 0)
            {
                return null;
            }
            int d = Gpr();
            if (Chance(2))
            {
                int w = Width16();
                var code = C($"Cmov{Suffixes[cc]}_r{w}_rm{w}");
                if (Chance(3))
                {
                    var (m, setup) = Mem(w / 8, d);
                    return Make(defined, [.. setup, Instruction.Create(code, Reg(w, d), m)]);
                }
                return Make(defined, Instruction.Create(code, Reg(w, d), Reg(w, Gpr())));
            }
            var set = C($"Set{Suffixes[cc]}_rm8");
            if (Chance(3))
            {
                var (m, setup) = Mem(1);
                return Make(defined, [.. setup, Instruction.Create(set, m)]);
            }
            return Make(defined, Instruction.Create(set, Chance(3) ? Legacy8[r.Next(8)] : Reg(8, d)));
        }

        /// <summary>LAHF (then AH masked to the defined flags by an AND, whose AF is undefined), SAHF (defines SF, ZF,
        /// AF, PF, CF from AH), CLC, STC, CMC (SDM Vol. 2A), and PUSHFQ/POPFQ with the status flags replaced by random
        /// ones in between (so every status flag is defined after it; the system flags are popped back unchanged).</summary>
        private Item FlagInstructions()
        {
            switch (r.Next(6))
            {
                case 5:
                    {
                        var x = Reg(64, Gpr());
                        int bits = r.Next(0x1000) & (int)Status;
                        return Make(Status, Instruction.Create(Code.Pushfq), Instruction.Create(Code.Pop_r64, x),
                            Instruction.Create(Code.And_rm64_imm32, x, ~(int)Status), Instruction.Create(Code.Or_rm64_imm32, x, bits),
                            Instruction.Create(Code.Push_r64, x), Instruction.Create(Code.Popfq));
                    }
                case 0:
                    return Make(Status & ~AF, Instruction.Create(Code.Lahf), Instruction.Create(Code.And_rm8_imm8, Register.AH, (int)((defined & (SF | ZF | AF | PF | CF)) | 2)));
                case 1:
                    return Make(defined | SF | ZF | AF | PF | CF, Instruction.Create(Code.Sahf));
                case 2:
                    return Make(defined | CF, Instruction.Create(Code.Clc));
                case 3:
                    return Make(defined | CF, Instruction.Create(Code.Stc));
                default:
                    return Make(defined, Instruction.Create(Code.Cmc));
            }
        }

        /// <summary>LOOP, LOOPE, LOOPNE over a one-instruction body (an ALU operation on registers other than RCX,
        /// whose ZF LOOPE/LOOPNE read) with 1 to 5 in RCX; the flags after are the body's (LOOP changes none).</summary>
        private Item Loop()
        {
            int op = r.Next(5);
            string[] names = ["Add", "Sub", "Cmp", "Xor", "And"];
            int[] notRcx = [0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
            var body = Instruction.Create(C($"{names[op]}_rm64_r64"), Reg(64, notRcx[r.Next(notRcx.Length)]), Reg(64, notRcx[r.Next(notRcx.Length)]));
            string kind = r.Next(3) switch { 0 => "Loop", 1 => "Loope", _ => "Loopne" };
            bool address32 = Chance(3);
            int count = r.Next(1, 6);
            var setCount = Instruction.Create(Code.Mov_r64_imm64, Register.RCX, address32 ? (Random64(r) & ~0xFFFF_FFFFUL) | (uint)count : (ulong)count);
            var loop = C($"{kind}_rel8_64_{(address32 ? "ECX" : "RCX")}");
            defined = op >= 3 ? Status & ~AF : Status;
            return new Item($"{setCount}; top: {body}; {kind.ToLowerInvariant()}{(address32 ? " (67h)" : "")} top", a =>
            {
                var top = a.CreateLabel();
                a.AddInstruction(setCount);
                a.Label(ref top);
                a.AddInstruction(body);
                a.AddInstruction(Instruction.CreateBranch(loop, top.Id));
            }, defined | DF);
        }

        /// <summary>JRCXZ and JECXZ (67h) over an instruction, with RCX zero, only ECX zero, or random.</summary>
        private Item JumpIfCountZero()
        {
            ulong count = r.Next(3) switch { 0 => 0, 1 => Random64(r) & ~0xFFFF_FFFFUL, _ => Random64(r) };
            bool ecx = Chance(2);
            var setCount = Instruction.Create(Code.Mov_r64_imm64, Register.RCX, count);
            var not = Instruction.Create(Code.Not_rm64, Reg(64, Gpr()));
            return new Item($"{setCount}; {(ecx ? "jecxz" : "jrcxz")} over {not}", a =>
            {
                var skip = a.CreateLabel();
                a.AddInstruction(setCount);
                a.AddInstruction(Instruction.CreateBranch(ecx ? Code.Jecxz_rel8_64 : Code.Jrcxz_rel8_64, skip.Id));
                a.AddInstruction(not);
                a.Label(ref skip);
            }, defined | DF);
        }

        /// <summary>XLATB: AL = [rBX + AL] over the scratch, also with a 32-bit address (67h: EBX, the upper half of
        /// RBX garbage) and with an FS or GS override (SDM Vol. 2B XLAT). No flags.</summary>
        private Item Translate()
        {
            int form = r.Next(3);
            var segment = form == 2 ? (Chance(2) ? Register.FS : Register.GS) : Register.None;
            ulong table = scratch - (segment == Register.FS ? FsBase : segment == Register.GS ? GsBase : 0);
            ulong rbx = form == 1 ? (Random64(r) & ~0xFFFF_FFFFUL) | table : table;
            var operand = new MemoryOperand(form == 1 ? Register.EBX : Register.RBX, Register.AL, 1, 0, 0, false, segment);
            return Make(defined, Instruction.Create(Code.Mov_r64_imm64, Register.RBX, rbx), Instruction.Create(Code.Xlat_m8, operand));
        }

        /// <summary>CMPXCHG8B m64 with and without LOCK, EDX:EAX made equal to the operand half the time (SDM Vol. 2A:
        /// ZF is set or cleared, "The CF, PF, AF, SF, and OF flags are unaffected").</summary>
        private Item CompareExchange8Bytes()
        {
            var (m, setup) = Mem(8, 3); // RBX is an implicit operand
            var list = new List<Instruction>(setup);
            if (Chance(2))
            {
                list.Add(Instruction.Create(Code.Mov_r64_rm64, Register.RAX, m));
                list.Add(Instruction.Create(Code.Mov_r64_rm64, Register.RDX, Register.RAX));
                list.Add(Instruction.Create(Code.Shr_rm64_imm8, Register.RDX, 32));
                defined = SF | ZF | PF | CF; // SHR by 32: OF and AF undefined (SDM Vol. 2B SAL/SAR/SHL/SHR)
            }
            var exchange = Instruction.Create(Code.Cmpxchg8b_m64, m);
            list.Add(Chance(2) ? Locked(exchange) : exchange);
            return Make(defined | ZF, [.. list]);
        }

        /// <summary>ENTER size, 0 and LEAVE, with the frame seen in between (RSP, RBP and the saved RBP). Nesting
        /// levels above 0 are left out: this KVM cannot emulate them.</summary>
        private Item EnterLeave()
        {
            int size = r.Next(0, 65) * (Chance(2) ? 1 : 8);
            int[] notRbp = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14]; // LEAVE reads RBP
            var (x, y, z) = (Reg(64, notRbp[r.Next(notRbp.Length)]), Reg(64, notRbp[r.Next(notRbp.Length)]), Reg(64, notRbp[r.Next(notRbp.Length)]));
            return Make(defined, Instruction.Create(Code.Enterq_imm16_imm8, size, 0),
                Instruction.Create(Code.Mov_rm64_r64, x, Register.RSP), Instruction.Create(Code.Mov_rm64_r64, y, Register.RBP),
                Instruction.Create(Code.Mov_r64_rm64, z, new MemoryOperand(Register.RSP, Register.None, 1, size, 1)),
                Instruction.Create(Code.Leaveq));
        }

        /// <summary>MOVS, STOS, LODS, CMPS, SCAS at every size, alone or with REP (REPE/REPNE for the comparisons) and
        /// 0 to 7 repetitions, forwards or backwards (DF), over this sequence's scratch. SCAS's accumulator is loaded
        /// from the data half the time and CMPS compares a region with itself a third of the time, so that REPE/REPNE
        /// stop at different points. CMPS/SCAS set the flags as CMP; with a count of 0 nothing changes (SDM Vol. 2B
        /// REP/REPE/REPZ/REPNE/REPNZ).</summary>
        private Item StringInstruction()
        {
            string[] kinds = ["Movs", "Stos", "Lods", "Cmps", "Scas"];
            string kind = kinds[r.Next(kinds.Length)];
            int size = 1 << r.Next(4);
            bool compares = kind is "Cmps" or "Scas";
            var prefix = r.Next(3) switch
            {
                0 => RepPrefixKind.None,
                1 => RepPrefixKind.Repe, // F3: REP, or REPE for the comparisons
                _ => compares ? RepPrefixKind.Repne : RepPrefixKind.Repe,
            };
            bool repeated = prefix != RepPrefixKind.None;
            int count = repeated ? r.Next(8) : 1;
            bool backwards = Chance(2);
            bool address32 = Chance(4);
            int touched = Math.Max(count, 1) * size;
            int Start() => backwards ? r.Next(touched - size, ScratchBytes - size + 1) : r.Next(0, ScratchBytes - touched + 1);
            int source = Start(), destination = Start();
            if (kind == "Cmps" && Chance(3))
            {
                source = destination;
            }
            var list = new List<Instruction> { Instruction.Create(backwards ? Code.Std : Code.Cld) };
            // With a 32-bit address size and ECX = 0 the SDM's pseudo-code runs no iteration and so writes no
            // register, which sim follows; what real parts do with the upper halves of RCX, RSI and RDI is not
            // specified and differs between generations. Measured on 2026-12-02 on this host (both natively and in
            // KVM): RCX is cleared for every form, RSI and RDI for MOVS and STOS only (the fast-string microcode);
            // the host before it changed nothing. So a zero count with 67h gets registers whose upper halves are
            // already zero: the count-0 case is still generated, and the unspecified write-back is not judged.
            bool unspecifiedUpperHalves = address32 && repeated && count == 0;
            ulong High() => unspecifiedUpperHalves ? 0 : Random64(r) & ~0xFFFF_FFFFUL;
            ulong Pointer(int offset) => address32 ? High() | (scratch + (ulong)offset) : scratch + (ulong)offset;
            // The source's segment may be overridden (the destination, ES:rDI, cannot be); the base is subtracted from
            // RSI so that base + RSI (mod 2^32 or 2^64) is in the scratch. A 32-bit address only reaches it with FS.
            var segment = kind is "Movs" or "Lods" or "Cmps" && Chance(4)
                ? (address32 || Chance(2) ? Register.FS : Register.GS) : Register.None;
            ulong sourceBase = segment == Register.FS ? FsBase : segment == Register.GS ? GsBase : 0;
            ulong rsi = Pointer(source) - sourceBase;
            list.Add(Instruction.Create(Code.Mov_r64_imm64, Register.RSI, unspecifiedUpperHalves ? rsi & 0xFFFF_FFFFUL : rsi));
            list.Add(Instruction.Create(Code.Mov_r64_imm64, Register.RDI, Pointer(destination)));
            list.Add(repeated
                ? Instruction.Create(Code.Mov_r64_imm64, Register.RCX, address32 ? High() | (uint)count : (ulong)count)
                : Instruction.Create(Code.Mov_r64_imm64, Register.RCX, Random64(r)));
            if (kind == "Scas" && Chance(2))
            {
                int element = r.Next(Math.Max(count, 1));
                int at = destination + (backwards ? -element : element) * size;
                list.Add(Instruction.Create(C($"Mov_r{size * 8}_rm{size * 8}"), Reg(size * 8, 0), new MemoryOperand(Register.R15, Register.None, 1, at, 1)));
            }
            int addressSize = address32 ? 32 : 64;
            list.Add((kind, size) switch
            {
                ("Movs", 1) => Instruction.CreateMovsb(addressSize, segment, prefix),
                ("Movs", 2) => Instruction.CreateMovsw(addressSize, segment, prefix),
                ("Movs", 4) => Instruction.CreateMovsd(addressSize, segment, prefix),
                ("Movs", _) => Instruction.CreateMovsq(addressSize, segment, prefix),
                ("Stos", 1) => Instruction.CreateStosb(addressSize, prefix),
                ("Stos", 2) => Instruction.CreateStosw(addressSize, prefix),
                ("Stos", 4) => Instruction.CreateStosd(addressSize, prefix),
                ("Stos", _) => Instruction.CreateStosq(addressSize, prefix),
                ("Lods", 1) => Instruction.CreateLodsb(addressSize, segment, prefix),
                ("Lods", 2) => Instruction.CreateLodsw(addressSize, segment, prefix),
                ("Lods", 4) => Instruction.CreateLodsd(addressSize, segment, prefix),
                ("Lods", _) => Instruction.CreateLodsq(addressSize, segment, prefix),
                ("Cmps", 1) => Instruction.CreateCmpsb(addressSize, segment, prefix),
                ("Cmps", 2) => Instruction.CreateCmpsw(addressSize, segment, prefix),
                ("Cmps", 4) => Instruction.CreateCmpsd(addressSize, segment, prefix),
                ("Cmps", _) => Instruction.CreateCmpsq(addressSize, segment, prefix),
                ("Scas", 1) => Instruction.CreateScasb(addressSize, prefix),
                ("Scas", 2) => Instruction.CreateScasw(addressSize, prefix),
                ("Scas", 4) => Instruction.CreateScasd(addressSize, prefix),
                _ => Instruction.CreateScasq(addressSize, prefix),
            });
            return Make(compares && count > 0 ? Status : defined, [.. list]);
        }
    }

    private static void Jump(Assembler a, int cc, Label target)
    {
        switch (cc)
        {
            case 0: a.jo(target); break;
            case 1: a.jno(target); break;
            case 2: a.jb(target); break;
            case 3: a.jae(target); break;
            case 4: a.je(target); break;
            case 5: a.jne(target); break;
            case 6: a.jbe(target); break;
            case 7: a.ja(target); break;
            case 8: a.js(target); break;
            case 9: a.jns(target); break;
            case 10: a.jp(target); break;
            case 11: a.jnp(target); break;
            case 12: a.jl(target); break;
            case 13: a.jge(target); break;
            case 14: a.jle(target); break;
            default: a.jg(target); break;
        }
    }
}
