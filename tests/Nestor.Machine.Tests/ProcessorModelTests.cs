using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>Where the Intel and AMD processor models differ (issue 18, <c>--cpu-model</c>): SYSCALL from
/// compatibility mode (#UD on Intel, SDM Vol. 2B SYSCALL; taken to IA32_CSTAR on AMD, APM Vol. 3 SYSCALL), SYSENTER
/// in long mode (Intel runs it, AMD raises #UD), SYSRET to a non-canonical RCX (Intel #GP(0) in ring 0, AMD returns
/// and the fetch faults in ring 3), AMD's legacy performance MSRs (#GP on Intel), and each model's identity.</summary>
public class ProcessorModelTests
{
    private const int NoFault = -1;

    /// <summary>Runs <paramref name="body"/> on <paramref name="model"/> with gates for #UD and #GP that record the
    /// vector in R14, the faulting RIP in R15 and the CPL of the faulting code (CS's RPL) in R13.</summary>
    private static (int Vector, TestMachine Machine) Run(ProcessorModel model, Action<Assembler> body)
    {
        var m = new TestMachine(a =>
        {
            var done = a.CreateLabel();
            var handlers = new[] { (6, a.CreateLabel()), (13, a.CreateLabel()) };
            foreach (var (vector, label) in handlers)
            {
                TestMachine.Gate(a, vector, label);
            }
            a.mov(r14, NoFault);
            a.mov(__qword_ptr[0x5004], 0x7F00); // TSS.RSP0
            body(a);
            a.jmp(done);
            foreach (var (vector, label) in handlers)
            {
                var handler = label;
                a.Label(ref handler);
                if (vector != 6)
                {
                    a.pop(rbx); // the error code
                }
                a.pop(r15);
                a.pop(r13); // CS of the faulting code
                a.and(r13, 3);
                a.mov(r14, vector);
                a.mov(rsp, 0x8000);
                a.jmp(done);
            }
            a.Label(ref done);
        }, setup: c =>
        {
            c.Model = model;
            c.Tr = new Segment { Selector = 0x28, Base = 0x5000, Limit = 0x67, Attributes = 0x8B };
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        return ((int)(long)m.Cpu.Registers[14], m);
    }

    /// <summary>EFER.SCE on; STAR: SYSCALL CS 0x08, SYSRET base 0x20; IA32_CSTAR and IA32_LSTAR at
    /// <paramref name="compatibilityTarget"/> and <paramref name="longTarget"/>.</summary>
    private static void EnableSyscall(Assembler a, Label compatibilityTarget, Label longTarget)
    {
        a.mov(ecx, Msr.Efer);
        a.rdmsr();
        a.or(eax, 1);
        a.wrmsr();
        a.mov(ecx, Msr.Star);
        a.xor(eax, eax);
        a.mov(edx, 0x0023_0008);
        a.wrmsr();
        a.mov(ecx, Msr.CompatibilityStar);
        a.lea(rax, __[compatibilityTarget]);
        a.xor(edx, edx);
        a.wrmsr();
        a.mov(ecx, Msr.LongStar);
        a.lea(rax, __[longTarget]);
        a.wrmsr();
    }

    /// <summary>SYSRET to compatibility mode at ring 3, then SYSCALL (0F 05) there; <paramref name="landing"/> is
    /// where the compatibility-mode SYSCALL returns to (its RCX).</summary>
    private static (int Vector, TestMachine Machine, ulong Landing, ulong Cstar) SyscallFromCompatibilityMode(ProcessorModel model)
    {
        Label compatibility = default, landing = default, cstar = default;
        var (vector, m) = Run(model, a =>
        {
            compatibility = a.CreateLabel();
            landing = a.CreateLabel();
            cstar = a.CreateLabel();
            var lstar = a.CreateLabel();
            var end = a.CreateLabel();
            EnableSyscall(a, cstar, lstar);
            a.lea(rcx, __[compatibility]);
            a.mov(r11d, 0x202);
            a.sysret();
            a.Label(ref compatibility);
            a.db(0x0F, 0x05); // SYSCALL, in 32-bit code
            a.Label(ref landing);
            a.db(0x0F, 0x0B); // UD2: never reached
            a.Label(ref lstar);
            a.mov(r12, 0x1111); // the 64-bit entry, which compatibility mode must not take
            a.jmp(end);
            a.Label(ref cstar);
            a.mov(r8, rcx);
            a.mov(r9, r11);
            a.mov(r10w, cs);
            a.mov(r12w, ss);
            a.Label(ref end);
        });
        return (vector, m, m.Address(landing), m.Address(cstar));
    }

    [Fact]
    public void Syscall_from_compatibility_mode_is_invalid_on_intel()
    {
        var (vector, m, _, _) = SyscallFromCompatibilityMode(ProcessorModel.Intel);
        Assert.Equal(6, vector);
        Assert.Equal(3UL, m.Cpu.Registers[13]); // raised in ring 3, in compatibility mode
    }

    [Fact]
    public void Syscall_from_compatibility_mode_enters_64_bit_mode_at_cstar_on_amd()
    {
        var (vector, m, landing, cstar) = SyscallFromCompatibilityMode(ProcessorModel.Amd);
        Assert.Equal(NoFault, vector);
        Assert.NotEqual(0x1111UL, m.Cpu.Registers[12] & 0xFFFF); // not IA32_LSTAR
        Assert.Equal(landing, m.Cpu.Registers[8]);               // RCX: the next instruction's address
        Assert.Equal(0x202UL, m.Cpu.Registers[9] & 0x3C_7FD7 | 2); // R11: RFLAGS as SYSRET loaded them
        Assert.Equal(0x08UL, m.Cpu.Registers[10] & 0xFFFF);      // CS = STAR[47:32]
        Assert.Equal(0x10UL, m.Cpu.Registers[12] & 0xFFFF);      // SS = STAR[47:32] + 8
        Assert.Equal(64, m.Cpu.Bitness);
        Assert.Equal(0, m.Cpu.PrivilegeLevel);
        Assert.True(cstar != 0);
    }

    /// <summary>SYSENTER in 64-bit mode with valid SYSENTER MSRs.</summary>
    private static (int Vector, TestMachine Machine) SysenterInLongMode(ProcessorModel model) => Run(model, a =>
    {
        var entry = a.CreateLabel();
        a.mov(ecx, Msr.SysenterCs);
        a.mov(eax, 0x10);
        a.xor(edx, edx);
        a.wrmsr();
        a.mov(ecx, Msr.SysenterEsp);
        a.mov(eax, 0x7000);
        a.wrmsr();
        a.mov(ecx, Msr.SysenterEip);
        a.lea(rax, __[entry]);
        a.wrmsr();
        a.sysenter();
        a.Label(ref entry);
        a.mov(r8w, cs);
    });

    [Fact]
    public void Sysenter_in_long_mode_runs_on_intel()
    {
        var (vector, m) = SysenterInLongMode(ProcessorModel.Intel);
        Assert.Equal(NoFault, vector);
        Assert.Equal(0x10UL, m.Cpu.Registers[8] & 0xFFFF);
    }

    [Fact]
    public void Sysenter_in_long_mode_is_invalid_on_amd()
    {
        var (vector, m) = SysenterInLongMode(ProcessorModel.Amd);
        Assert.Equal(6, vector);
        Assert.Equal(0UL, m.Cpu.Registers[13]);
    }

    /// <summary>SYSRETQ with RCX = 0x0000_8000_0000_0000 (non-canonical).</summary>
    private static (int Vector, TestMachine Machine) SysretToNonCanonical(ProcessorModel model) => Run(model, a =>
    {
        var unused = a.CreateLabel();
        EnableSyscall(a, unused, unused);
        a.mov(rcx, 0x0000_8000_0000_0000UL);
        a.mov(r11d, 0x2);
        a.sysretq();
        a.Label(ref unused);
        a.nop();
    });

    [Fact]
    public void Sysret_to_a_non_canonical_rcx_faults_in_ring_0_on_intel()
    {
        var (vector, m) = SysretToNonCanonical(ProcessorModel.Intel);
        Assert.Equal(13, vector);
        Assert.Equal(0UL, m.Cpu.Registers[13]);
    }

    [Fact]
    public void Sysret_to_a_non_canonical_rcx_returns_and_faults_in_ring_3_on_amd()
    {
        var (vector, m) = SysretToNonCanonical(ProcessorModel.Amd);
        Assert.Equal(13, vector);
        Assert.Equal(3UL, m.Cpu.Registers[13]);
        Assert.Equal(0x0000_8000_0000_0000UL, m.Cpu.Registers[15]);
    }

    /// <summary>Writes then reads AMD's PerfEvtSel0 (C001_0000h) and PerfCtr3 (C001_0007h).</summary>
    private static (int Vector, TestMachine Machine) AmdPerformanceMsrs(ProcessorModel model) => Run(model, a =>
    {
        a.mov(ecx, 0xC001_0000);
        a.mov(eax, 0x12);
        a.xor(edx, edx);
        a.wrmsr();
        a.mov(ecx, 0xC001_0007);
        a.wrmsr();
        a.mov(eax, 0x55);
        a.rdmsr();
        a.mov(r8, rax);
    });

    [Fact]
    public void Amd_legacy_performance_msrs_exist_on_amd_only()
    {
        Assert.Equal(13, AmdPerformanceMsrs(ProcessorModel.Intel).Vector);
        var (vector, m) = AmdPerformanceMsrs(ProcessorModel.Amd);
        Assert.Equal(NoFault, vector);
        Assert.Equal(0UL, m.Cpu.Registers[8]); // no event implemented: the counter holds nothing
    }

    [Fact]
    public void Each_model_has_its_vendors_identity()
    {
        Assert.Equal(("GenuineIntel", 0x0003_06D4u, 6, 0x3D, 4), (ProcessorModel.Intel.Vendor, ProcessorModel.Intel.Signature,
            ProcessorModel.Intel.Family, ProcessorModel.Intel.Model, ProcessorModel.Intel.Stepping));
        Assert.Equal(("AuthenticAMD", 0x0000_0F61u, 0xF, 6, 1), (ProcessorModel.Amd.Vendor, ProcessorModel.Amd.Signature,
            ProcessorModel.Amd.Family, ProcessorModel.Amd.Model, ProcessorModel.Amd.Stepping));
        Assert.Same(ProcessorModel.Amd, ProcessorModel.Named("AMD"));
        Assert.Null(ProcessorModel.Named("arm"));
        // After INIT, EDX holds the model's signature (SDM Vol. 3A Table 9-1; APM Vol. 2 §14.1.3).
        Assert.Equal(0x0F61UL, Cpu.InitState(LocalApicState.Reset, ProcessorModel.Amd).Registers[2]);
        Assert.Equal(0x0003_06D4UL, Cpu.InitState(LocalApicState.Reset).Registers[2]);
    }
}
