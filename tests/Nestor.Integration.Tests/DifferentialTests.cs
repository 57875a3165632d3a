using Iced.Intel;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>Differential testing of the software machine against the real CPU: random sequences of ring-0 integer
/// instructions (ALU with every width, shifts and rotates, multiply and divide, bit operations, moves and
/// extensions, LEA, conditional moves and sets, stack, memory operands) run on KVM and on sim, and every
/// register, RFLAGS and the touched memory must agree. Flags the SDM leaves undefined are never consumed: an
/// instruction that reads flags (ADC, SBB, CMOVcc, SETcc) only follows one that defines them all, and each
/// sequence ends with an ADD. Instructions this host's KVM cannot run (popcnt, lzcnt, tzcnt) are left out.
/// Scale with NESTOR_DIFFERENTIAL_SEQUENCES (bench/RESULTS.md records a larger run).</summary>
public class DifferentialTests
{
    private const ulong Scratch = 0x30_0000;    // 64 bytes of random data per sequence
    private const ulong Results = 0x50_0000;    // 16 registers + RFLAGS per sequence
    private const int ScratchBytes = 64;
    private const int ResultBytes = 17 * 8;

    private static readonly AssemblerRegister64[] R64 = [rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14];
    private static readonly AssemblerRegister32[] R32 = [eax, ebx, ecx, edx, esi, edi, ebp, r8d, r9d, r10d, r11d, r12d, r13d, r14d];
    private static readonly AssemblerRegister16[] R16 = [ax, bx, cx, dx, si, di, bp, r8w, r9w, r10w, r11w, r12w, r13w, r14w];
    private static readonly AssemblerRegister8[] R8 = [al, bl, cl, dl, sil, dil, bpl, r8b, r9b, r10b, r11b, r12b, r13b, r14b];

    public static TheoryData<int> Seeds()
    {
        int batches = int.TryParse(Environment.GetEnvironmentVariable("NESTOR_DIFFERENTIAL_SEQUENCES"), out int n) ? Math.Max(1, n / 250) : 8;
        return new TheoryData<int>(Enumerable.Range(1, batches));
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void Random_integer_sequences_agree_with_the_real_cpu(int seed)
    {
        NestorProcess.RequireKvm();
        const int sequences = 250, length = 40;
        var listings = new List<string>[sequences];
        byte[] code = GuestAssembler.Assemble(a => Generate(a, new Random(seed), sequences, length, listings));
        var data = new byte[sequences * ScratchBytes];
        new Random(seed * 7919).NextBytes(data);

        byte[] kvm = RunAndCollect(new KvmEngine(), code, data, sequences);
        byte[] sim = RunAndCollect(new SimEngine(), code, data, sequences);

        for (int k = 0; k < sequences; k++)
        {
            var expected = kvm.AsSpan(k * ResultBytes, ResultBytes);
            var actual = sim.AsSpan(k * ResultBytes, ResultBytes);
            var expectedMemory = kvm.AsSpan(sequences * ResultBytes + k * ScratchBytes, ScratchBytes);
            var actualMemory = sim.AsSpan(sequences * ResultBytes + k * ScratchBytes, ScratchBytes);
            if (!expected.SequenceEqual(actual) || !expectedMemory.SequenceEqual(actualMemory))
            {
                string[] names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "unused", "unused", "rflags"];
                var differences = new List<string>();
                for (int j = 0; j < 17; j++)
                {
                    ulong e = BitConverter.ToUInt64(expected[(j * 8)..]), s = BitConverter.ToUInt64(actual[(j * 8)..]);
                    if (e != s)
                    {
                        differences.Add($"{names[j]}: kvm 0x{e:x} sim 0x{s:x}");
                    }
                }
                Assert.Fail($"seed {seed}, sequence {k} differs:\n  {string.Join("\n  ", differences)}" +
                            (expectedMemory.SequenceEqual(actualMemory) ? "" : "\n  (scratch memory differs too)") +
                            $"\nsequence:\n  {string.Join("\n  ", listings[k])}");
            }
        }
    }

    private static byte[] RunAndCollect(IEngine engine, byte[] code, byte[] data, int sequences)
    {
        using var vm = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("differential", code), MemoryBytes = 8UL << 20, Timeout = TimeSpan.FromSeconds(60) });
        vm.Memory.Write(new GuestPhysical(Scratch), data);
        var outcome = vm.Run(engine);
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, $"{engine.Name}: {outcome.Message}");
        var result = new byte[sequences * ResultBytes + data.Length];
        vm.Memory.Span(new GuestPhysical(Results), sequences * ResultBytes).CopyTo(result);
        vm.Memory.Span(new GuestPhysical(Scratch), data.Length).CopyTo(result.AsSpan(sequences * ResultBytes));
        return result;
    }

    private enum Flags { Defined, Undefined }

    private static void Generate(Assembler a, Random random, int sequences, int length, List<string>[] listings)
    {
        for (int k = 0; k < sequences; k++)
        {
            var listing = listings[k] = [];
            foreach (var r in R64)
            {
                a.mov(r, (ulong)random.NextInt64() ^ ((ulong)random.Next() << 40));
            }
            a.mov(r15, Scratch + (ulong)(k * ScratchBytes));
            a.add(rax, rbx); // start with all flags defined
            var flags = Flags.Defined;
            for (int n = 0; n < length; n++)
            {
                flags = Emit(a, random, flags, listing);
            }
            // The last instruction defines every flag that is compared; which one varies, so that each way of
            // computing flags is compared in full (not only through the conditions that read them).
            int last = random.Next(4);
            string[] lastNames = ["add rax, rcx", "sub ecx, edx", "cmp bx, si", "neg r8b"];
            switch (last)
            {
                case 0: a.add(rax, rcx); break;
                case 1: a.sub(ecx, edx); break;
                case 2: a.cmp(bx, si); break;
                default: a.neg(r8b); break;
            }
            listing.Add(lastNames[last]);
            a.pushfq();
            a.mov(r15, Results + (ulong)(k * ResultBytes));
            for (int j = 0; j < R64.Length; j++)
            {
                a.mov(__qword_ptr[r15 + j * 8], R64[j]);
            }
            a.pop(rax);
            a.mov(__qword_ptr[r15 + 16 * 8], rax);
        }
        a.mov(dx, 0xF4);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();
    }

    private static AssemblerMemoryOperand Memory(Random r, int size)
    {
        int displacement = r.Next(0, ScratchBytes - size + 1);
        return size switch
        {
            1 => __byte_ptr[r15 + displacement],
            2 => __word_ptr[r15 + displacement],
            4 => __dword_ptr[r15 + displacement],
            _ => __qword_ptr[r15 + displacement],
        };
    }

    /// <summary>Emits one instruction (or a short idiom) and returns the state of the flags after it.</summary>
    private static Flags Emit(Assembler a, Random r, Flags flags, List<string> listing)
    {
        int x = r.Next(R64.Length), y = r.Next(R64.Length);
        int width = r.Next(4); // 0: 8-bit, 1: 16, 2: 32, 3: 64
        int choice = r.Next(flags == Flags.Defined ? 30 : 23);
        void Note(string text) => listing.Add(text);
        switch (choice)
        {
            case 0:
            case 1:
            case 2:
                {
                    // ALU register, register at a random width.
                    string[] ops = ["add", "sub", "and", "or", "xor", "cmp", "test"];
                    int op = r.Next(ops.Length);
                    Note($"{ops[op]} r{x}, r{y} (width {8 << width})");
                    switch (width)
                    {
                        case 0: Alu(a, op, R8[x], R8[y]); break;
                        case 1: Alu(a, op, R16[x], R16[y]); break;
                        case 2: Alu(a, op, R32[x], R32[y]); break;
                        default: Alu(a, op, R64[x], R64[y]); break;
                    }
                    return Flags.Defined;
                }
            case 3:
            case 4:
                {
                    int imm = r.Next(-200, 200);
                    string[] ops = ["add", "sub", "and", "or", "xor", "cmp"];
                    int op = r.Next(ops.Length);
                    Note($"{ops[op]} r{x}, {imm} (width {(width < 2 ? 32 : 64)})");
                    if (width < 2)
                    {
                        AluImmediate(a, op, R32[x], imm);
                    }
                    else
                    {
                        AluImmediate(a, op, R64[x], imm);
                    }
                    return Flags.Defined;
                }
            case 5:
                {
                    // ALU with a memory operand, either direction.
                    int size = r.Next(2) == 0 ? 4 : 8;
                    var m = Memory(r, size);
                    bool toMemory = r.Next(2) == 0;
                    int op = r.Next(4);
                    Note($"alu{op} {(toMemory ? "[mem], reg" : "reg, [mem]")} size {size}");
                    if (size == 8)
                    {
                        if (toMemory) { AluMemory(a, op, m, R64[x]); } else { AluFromMemory(a, op, R64[x], m); }
                    }
                    else
                    {
                        if (toMemory) { AluMemory(a, op, m, R32[x]); } else { AluFromMemory(a, op, R32[x], m); }
                    }
                    return Flags.Defined;
                }
            case 6:
                {
                    string[] ops = ["inc", "dec", "neg", "not"];
                    int op = r.Next(ops.Length);
                    Note($"{ops[op]} r{x} (width {8 << width})");
                    switch (op, width)
                    {
                        case (0, 0): a.inc(R8[x]); break;
                        case (0, 1): a.inc(R16[x]); break;
                        case (0, 2): a.inc(R32[x]); break;
                        case (0, _): a.inc(R64[x]); break;
                        case (1, 0): a.dec(R8[x]); break;
                        case (1, 1): a.dec(R16[x]); break;
                        case (1, 2): a.dec(R32[x]); break;
                        case (1, _): a.dec(R64[x]); break;
                        case (2, 0): a.neg(R8[x]); break;
                        case (2, 1): a.neg(R16[x]); break;
                        case (2, 2): a.neg(R32[x]); break;
                        case (2, _): a.neg(R64[x]); break;
                        case (_, 0): a.not(R8[x]); break;
                        case (_, 1): a.not(R16[x]); break;
                        case (_, 2): a.not(R32[x]); break;
                        default: a.not(R64[x]); break;
                    }
                    // INC and DEC leave CF alone, so "defined" carries over; NOT changes no flag.
                    return op == 2 ? Flags.Defined : flags;
                }
            case 7:
            case 8:
                {
                    // Shifts and rotates by an immediate below the operand width (so CF is defined).
                    int bits = 8 << width;
                    int count = r.Next(1, bits);
                    int op = r.Next(5);
                    Note($"shift{op} r{x}, {count} (width {bits})");
                    Shift(a, op, width, x, (byte)count);
                    return count == 1 && op >= 3 ? Flags.Undefined : Flags.Undefined;
                }
            case 9:
                {
                    // Shift by CL at 32/64 bits: the count is masked to below the width; a zero count changes nothing.
                    int op = r.Next(3);
                    a.mov(cl, (byte)r.Next(256));
                    Note($"shift{op} by cl, width {(width < 2 ? 32 : 64)}");
                    var target = x == 2 ? 0 : x; // not rcx itself
                    if (width < 2)
                    {
                        if (op == 0) { a.shl(R32[target], cl); } else if (op == 1) { a.shr(R32[target], cl); } else { a.sar(R32[target], cl); }
                    }
                    else
                    {
                        if (op == 0) { a.shl(R64[target], cl); } else if (op == 1) { a.shr(R64[target], cl); } else { a.sar(R64[target], cl); }
                    }
                    return Flags.Undefined;
                }
            case 10:
                {
                    int form = r.Next(4);
                    Note($"multiply form {form} r{x}, r{y}");
                    switch (form)
                    {
                        case 0: a.imul(R64[x], R64[y]); break;
                        case 1: a.imul(R32[x], R32[y], r.Next(-1000, 1000)); break;
                        case 2: a.mul(R64[y]); break;
                        default: a.imul(R32[y]); break;
                    }
                    return Flags.Undefined;
                }
            case 11:
                {
                    // Unsigned division that cannot fault: RDX = 0, divisor odd and not RAX/RDX.
                    int divisor = new[] { 1, 4, 5, 7, 8, 9, 10 }[r.Next(7)];
                    Note($"div r{divisor} (rdx = 0, divisor | 1)");
                    a.xor(edx, edx);
                    a.or(R64[divisor], 1);
                    if (r.Next(2) == 0) { a.div(R64[divisor]); } else { a.div(R32[divisor]); }
                    return Flags.Undefined;
                }
            case 12:
                {
                    int form = r.Next(5);
                    Note($"extend form {form} r{x}, r{y}");
                    switch (form)
                    {
                        case 0: a.movzx(R64[x], R8[y]); break;
                        case 1: a.movzx(R32[x], R16[y]); break;
                        case 2: a.movsx(R64[x], R16[y]); break;
                        case 3: a.movsxd(R64[x], R32[y]); break;
                        default: a.movsx(R32[x], R8[y]); break;
                    }
                    return flags;
                }
            case 13:
                {
                    int scale = 1 << r.Next(4);
                    int displacement = r.Next(-5000, 5000);
                    Note($"lea r{x}, [r{y} + r{(x + 1) % R64.Length}*{scale} + {displacement}]");
                    a.lea(R64[x], __[R64[y] + R64[(x + 1) % R64.Length] * scale + displacement]);
                    return flags;
                }
            case 14:
                {
                    int form = r.Next(4);
                    Note($"move form {form} r{x}, r{y}");
                    switch (form)
                    {
                        case 0: a.xchg(R64[x], R64[y]); break;
                        case 1: a.bswap(R64[x]); break;
                        case 2: a.mov(R32[x], R32[y]); break;
                        default: a.mov(R8[x], R8[y]); break;
                    }
                    return flags;
                }
            case 15:
                {
                    int op = r.Next(4);
                    byte bit = (byte)r.Next(64);
                    Note($"bit op {op} r{x}, {bit}");
                    switch (op)
                    {
                        case 0: a.bt(R64[x], bit); break;
                        case 1: a.bts(R64[x], bit); break;
                        case 2: a.btr(R64[x], bit); break;
                        default: a.btc(R64[x], bit); break;
                    }
                    return Flags.Undefined;
                }
            case 16:
                {
                    // BSF/BSR of a non-zero source (the destination is undefined for zero).
                    Note($"bsf/bsr r{x}, r{y} | 1");
                    a.or(R64[y], 1);
                    if (r.Next(2) == 0) { a.bsf(R64[x], R64[y]); } else { a.bsr(R32[x], R32[y]); }
                    return Flags.Undefined;
                }
            case 17:
                {
                    Note($"push r{x}; pop r{y}");
                    a.push(R64[x]);
                    a.pop(R64[y]);
                    return flags;
                }
            case 18:
                {
                    int size = 1 << r.Next(4);
                    var m = Memory(r, size);
                    Note($"mov [mem] <-> r{x} size {size}");
                    if (r.Next(2) == 0)
                    {
                        switch (size) { case 1: a.mov(m, R8[x]); break; case 2: a.mov(m, R16[x]); break; case 4: a.mov(m, R32[x]); break; default: a.mov(m, R64[x]); break; }
                    }
                    else
                    {
                        switch (size) { case 1: a.mov(R8[x], m); break; case 2: a.mov(R16[x], m); break; case 4: a.mov(R32[x], m); break; default: a.mov(R64[x], m); break; }
                    }
                    return flags;
                }
            case 19:
                {
                    Note($"xadd/cmpxchg r{x}, r{y}");
                    if (r.Next(2) == 0) { a.xadd(R64[x], R64[y]); } else { a.cmpxchg(R64[x], R64[y]); }
                    return Flags.Defined;
                }
            case 20:
                {
                    // ALU with a memory destination and an immediate, at every width.
                    int size = 1 << r.Next(4);
                    var m = Memory(r, size);
                    int imm = r.Next(-128, 128);
                    string[] ops = ["add", "sub", "and", "or", "xor", "cmp", "test"];
                    int op = r.Next(ops.Length);
                    Note($"{ops[op]} [mem], {imm} size {size}");
                    AluMemoryImmediate(a, op, m, imm);
                    return Flags.Defined;
                }
            case 21:
                {
                    // Zero and sign extension from memory.
                    int form = r.Next(4);
                    Note($"extend form {form} r{x}, [mem]");
                    switch (form)
                    {
                        case 0: a.movzx(R32[x], Memory(r, 1)); break;
                        case 1: a.movzx(R64[x], Memory(r, 2)); break;
                        case 2: a.movsx(R64[x], Memory(r, 1)); break;
                        default: a.movsxd(R64[x], Memory(r, 4)); break;
                    }
                    return flags;
                }
            case 22:
                {
                    // A near call to a routine that changes a register and returns.
                    Note($"call f; f: add r{x}, r{y}; ret");
                    var routine = a.CreateLabel();
                    var after = a.CreateLabel();
                    a.call(routine);
                    a.jmp(after);
                    a.Label(ref routine);
                    a.add(R64[x], R64[y]);
                    a.ret();
                    a.Label(ref after);
                    return Flags.Defined;
                }
            case 25:
            case 26:
                {
                    // A conditional jump over an instruction: taken or not, visible in the register.
                    int cc = r.Next(16);
                    Note($"j cc{cc} over not r{x}");
                    var skip = a.CreateLabel();
                    Jump(a, cc, skip);
                    a.not(R64[x]);
                    a.Label(ref skip);
                    return flags;
                }
            case 23:
            case 24:
                {
                    // Flag consumers: only after an instruction that defined every flag they could read.
                    bool carry = r.Next(2) == 0;
                    Note($"{(carry ? "adc" : "sbb")} r{x}, r{y}");
                    if (carry) { a.adc(R64[x], R64[y]); } else { a.sbb(R32[x], R32[y]); }
                    return Flags.Defined;
                }
            default:
                {
                    int cc = r.Next(16);
                    Note($"cmov/set cc{cc} r{x}, r{y}");
                    if (r.Next(2) == 0) { Cmov(a, cc, R64[x], R64[y]); } else { Set(a, cc, R8[x]); }
                    return flags;
                }
        }
    }

    private static void Alu(Assembler a, int op, AssemblerRegister8 x, AssemblerRegister8 y)
    {
        switch (op) { case 0: a.add(x, y); break; case 1: a.sub(x, y); break; case 2: a.and(x, y); break; case 3: a.or(x, y); break; case 4: a.xor(x, y); break; case 5: a.cmp(x, y); break; default: a.test(x, y); break; }
    }

    private static void Alu(Assembler a, int op, AssemblerRegister16 x, AssemblerRegister16 y)
    {
        switch (op) { case 0: a.add(x, y); break; case 1: a.sub(x, y); break; case 2: a.and(x, y); break; case 3: a.or(x, y); break; case 4: a.xor(x, y); break; case 5: a.cmp(x, y); break; default: a.test(x, y); break; }
    }

    private static void Alu(Assembler a, int op, AssemblerRegister32 x, AssemblerRegister32 y)
    {
        switch (op) { case 0: a.add(x, y); break; case 1: a.sub(x, y); break; case 2: a.and(x, y); break; case 3: a.or(x, y); break; case 4: a.xor(x, y); break; case 5: a.cmp(x, y); break; default: a.test(x, y); break; }
    }

    private static void Alu(Assembler a, int op, AssemblerRegister64 x, AssemblerRegister64 y)
    {
        switch (op) { case 0: a.add(x, y); break; case 1: a.sub(x, y); break; case 2: a.and(x, y); break; case 3: a.or(x, y); break; case 4: a.xor(x, y); break; case 5: a.cmp(x, y); break; default: a.test(x, y); break; }
    }

    private static void AluImmediate(Assembler a, int op, AssemblerRegister32 x, int i)
    {
        switch (op) { case 0: a.add(x, i); break; case 1: a.sub(x, i); break; case 2: a.and(x, i); break; case 3: a.or(x, i); break; case 4: a.xor(x, i); break; default: a.cmp(x, i); break; }
    }

    private static void AluImmediate(Assembler a, int op, AssemblerRegister64 x, int i)
    {
        switch (op) { case 0: a.add(x, i); break; case 1: a.sub(x, i); break; case 2: a.and(x, i); break; case 3: a.or(x, i); break; case 4: a.xor(x, i); break; default: a.cmp(x, i); break; }
    }

    private static void AluMemory(Assembler a, int op, AssemblerMemoryOperand m, AssemblerRegister64 x)
    {
        switch (op) { case 0: a.add(m, x); break; case 1: a.sub(m, x); break; case 2: a.xor(m, x); break; default: a.cmp(m, x); break; }
    }

    private static void AluMemory(Assembler a, int op, AssemblerMemoryOperand m, AssemblerRegister32 x)
    {
        switch (op) { case 0: a.add(m, x); break; case 1: a.sub(m, x); break; case 2: a.xor(m, x); break; default: a.cmp(m, x); break; }
    }

    private static void AluMemoryImmediate(Assembler a, int op, AssemblerMemoryOperand m, int i)
    {
        switch (op) { case 0: a.add(m, i); break; case 1: a.sub(m, i); break; case 2: a.and(m, i); break; case 3: a.or(m, i); break; case 4: a.xor(m, i); break; case 5: a.cmp(m, i); break; default: a.test(m, i); break; }
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

    private static void AluFromMemory(Assembler a, int op, AssemblerRegister64 x, AssemblerMemoryOperand m)
    {
        switch (op) { case 0: a.add(x, m); break; case 1: a.sub(x, m); break; case 2: a.and(x, m); break; default: a.or(x, m); break; }
    }

    private static void AluFromMemory(Assembler a, int op, AssemblerRegister32 x, AssemblerMemoryOperand m)
    {
        switch (op) { case 0: a.add(x, m); break; case 1: a.sub(x, m); break; case 2: a.and(x, m); break; default: a.or(x, m); break; }
    }

    private static void Shift(Assembler a, int op, int width, int x, byte count)
    {
        switch (width)
        {
            case 0: switch (op) { case 0: a.shl(R8[x], count); break; case 1: a.shr(R8[x], count); break; case 2: a.sar(R8[x], count); break; case 3: a.rol(R8[x], count); break; default: a.ror(R8[x], count); break; } break;
            case 1: switch (op) { case 0: a.shl(R16[x], count); break; case 1: a.shr(R16[x], count); break; case 2: a.sar(R16[x], count); break; case 3: a.rol(R16[x], count); break; default: a.ror(R16[x], count); break; } break;
            case 2: switch (op) { case 0: a.shl(R32[x], count); break; case 1: a.shr(R32[x], count); break; case 2: a.sar(R32[x], count); break; case 3: a.rol(R32[x], count); break; default: a.ror(R32[x], count); break; } break;
            default: switch (op) { case 0: a.shl(R64[x], count); break; case 1: a.shr(R64[x], count); break; case 2: a.sar(R64[x], count); break; case 3: a.rol(R64[x], count); break; default: a.ror(R64[x], count); break; } break;
        }
    }

    private static void Cmov(Assembler a, int cc, AssemblerRegister64 x, AssemblerRegister64 y)
    {
        switch (cc)
        {
            case 0: a.cmovo(x, y); break;
            case 1: a.cmovno(x, y); break;
            case 2: a.cmovb(x, y); break;
            case 3: a.cmovae(x, y); break;
            case 4: a.cmove(x, y); break;
            case 5: a.cmovne(x, y); break;
            case 6: a.cmovbe(x, y); break;
            case 7: a.cmova(x, y); break;
            case 8: a.cmovs(x, y); break;
            case 9: a.cmovns(x, y); break;
            case 10: a.cmovp(x, y); break;
            case 11: a.cmovnp(x, y); break;
            case 12: a.cmovl(x, y); break;
            case 13: a.cmovge(x, y); break;
            case 14: a.cmovle(x, y); break;
            default: a.cmovg(x, y); break;
        }
    }

    private static void Set(Assembler a, int cc, AssemblerRegister8 x)
    {
        switch (cc)
        {
            case 0: a.seto(x); break;
            case 1: a.setno(x); break;
            case 2: a.setb(x); break;
            case 3: a.setae(x); break;
            case 4: a.sete(x); break;
            case 5: a.setne(x); break;
            case 6: a.setbe(x); break;
            case 7: a.seta(x); break;
            case 8: a.sets(x); break;
            case 9: a.setns(x); break;
            case 10: a.setp(x); break;
            case 11: a.setnp(x); break;
            case 12: a.setl(x); break;
            case 13: a.setge(x); break;
            case 14: a.setle(x); break;
            default: a.setg(x); break;
        }
    }
}
