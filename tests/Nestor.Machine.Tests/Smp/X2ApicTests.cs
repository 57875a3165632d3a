using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.Smp;

/// <summary>x2APIC mode (Intel SDM Vol. 3A §10.12): entered by IA32_APIC_BASE.EXTD from xAPIC mode only, left only by
/// disabling the APIC; the registers as MSRs 0x800–0x8FF with their #GP rules (§10.12.1.2), the x2APIC ID and the
/// logical ID derived from it (§10.12.10.2), the ICR as one 64-bit MSR, SELF IPI (§10.12.11), and the xAPIC page no
/// longer decoded.</summary>
public class X2ApicTests
{
    /// <summary>A #GP handler that sets bit R14 of R15 and skips the 2-byte RDMSR/WRMSR that faulted.</summary>
    private static void SkippingGeneralProtection(Assembler a)
    {
        var handler = a.CreateLabel();
        var over = a.CreateLabel();
        TestMachine.Gate(a, 13, handler);
        a.jmp(over);
        a.Label(ref handler);
        a.bts(r15, r14);
        a.add(rsp, 8);                       // the error code
        a.add(__qword_ptr[rsp], 2);
        a.iretq();
        a.Label(ref over);
    }

    private static void Rdmsr(Assembler a, int check, uint msr)
    {
        a.mov(r14d, check);
        a.mov(ecx, msr);
        a.rdmsr();
    }

    private static void Wrmsr(Assembler a, int check, uint msr, uint low, uint high = 0)
    {
        a.mov(r14d, check);
        a.mov(ecx, msr);
        a.mov(eax, low);
        a.mov(edx, high);
        a.wrmsr();
    }

    [Fact]
    public void The_x2apic_msrs_follow_the_sdm_rules()
    {
        var m = new SmpMachine(2);
        m.Cpus[0].Apic.Write(0xF0, 0x1FF, 0);
        m.Load(1, 0x30000, a =>
        {
            SkippingGeneralProtection(a);
            a.xor(r15d, r15d);
            Rdmsr(a, 0, 0x802);                               // #GP: not in x2APIC mode
            Wrmsr(a, 1, Msr.ApicBase, 0xFEE0_0000 | (1 << 11) | (1 << 10)); // xAPIC to x2APIC: allowed
            Rdmsr(a, 2, 0x802);
            a.mov(r8d, eax);                                  // the x2APIC ID
            Rdmsr(a, 3, 0x80D);
            a.mov(r9d, eax);                                  // the logical ID
            Wrmsr(a, 4, 0x802, 5);                            // #GP: the ID is read-only
            Rdmsr(a, 5, 0x80B);                               // #GP: EOI is write-only
            Wrmsr(a, 6, 0x80B, 1);                            // #GP: EOI takes 0 only
            Rdmsr(a, 7, 0x831);                               // #GP: no ICR high half in x2APIC mode
            Rdmsr(a, 8, 0x80E);                               // #GP: no DFR in x2APIC mode
            Wrmsr(a, 9, 0x808, 0, 1);                         // #GP: bits 63:32 of the TPR
            Wrmsr(a, 10, 0x80F, 0x1FF);                       // SVR: software enable
            Wrmsr(a, 11, 0x83F, 0x50);                        // SELF IPI, vector 0x50
            Wrmsr(a, 12, 0x83F, 0x150);                       // #GP: SELF IPI bits 31:8
            Wrmsr(a, 13, 0x830, 0x51, 0);                     // ICR: fixed 0x51 to x2APIC ID 0
            Rdmsr(a, 14, 0x830);
            a.mov(r10d, eax);
            a.mov(r11d, edx);
            a.mov(eax, 0xFEE0_0020);
            a.mov(r12d, __dword_ptr[rax]);                    // the xAPIC page: not decoded in x2APIC mode
            Wrmsr(a, 15, Msr.ApicBase, 0xFEE0_0000 | (1 << 11)); // #GP: x2APIC straight to xAPIC
            Wrmsr(a, 16, Msr.ApicBase, 0xFEE0_0000 | (1 << 10)); // #GP: EXTD without EN
            Wrmsr(a, 17, Msr.ApicBase, 0xFEE0_0000);             // x2APIC to disabled: allowed
            Wrmsr(a, 18, Msr.ApicBase, 0xFEE0_0000 | (1 << 11) | (1 << 10)); // #GP: disabled straight to x2APIC
        }, stack: 0xA000);
        Assert.Equal(StopReason.PlatformStop, m.Run(1));
        var cpu = m.Cpus[1];
        const ulong expected = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 12) |
                               (1 << 15) | (1 << 16) | (1 << 18);
        Assert.Equal($"{expected:b}", $"{cpu.Registers[15]:b}");
        Assert.Equal(1UL, cpu.Registers[8]);
        Assert.Equal(0x0000_0002UL, cpu.Registers[9]);        // cluster 0, member bit 1
        Assert.Equal(0x51UL, cpu.Registers[10]);
        Assert.Equal(0UL, cpu.Registers[11]);
        Assert.Equal(0xFFFF_FFFFUL, cpu.Registers[12]);
        Assert.True(m.Requested(0, 0x51));
        Assert.Equal(1, cpu.Apic.SelfInterrupts);             // the self IPI (the APIC was reset since: only its counters stay)
    }

    [Fact]
    public void The_x2apic_logical_id_names_cluster_and_member_in_icr_destinations()
    {
        var m = new SmpMachine(3);
        for (int i = 1; i < 3; i++)
        {
            m.Cpus[i].Apic.Write(0xF0, 0x1FF, 0);
            m.Cpus[i].ApicBase |= Cpu.ApicBaseExtended;
        }
        m.Load(0, 0x20000, a =>
        {
            a.mov(ecx, Msr.ApicBase);
            a.mov(eax, 0xFEE0_0000 | (1 << 11) | (1 << 10));
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, 0x830);
            a.mov(eax, 0x0000_0852);                          // logical, fixed 0x52
            a.mov(edx, 0x0000_0004);                          // cluster 0, member bit 2: x2APIC ID 2
            a.wrmsr();
            a.mov(eax, 0x53);
            a.mov(edx, 0xFFFF_FFFF);                          // physical broadcast
            a.wrmsr();
        }, stack: 0x9000);
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.False(m.Requested(1, 0x52));
        Assert.True(m.Requested(2, 0x52));
        Assert.True(m.Requested(1, 0x53));
        Assert.True(m.Requested(2, 0x53));
    }
}
