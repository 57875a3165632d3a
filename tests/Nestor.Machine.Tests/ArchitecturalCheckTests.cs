using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The checks a feature's absence or a register's rules imply (issue 18): reserved CR0/CR3/CR4/CR8/EFER and
/// IA32_APIC_BASE bits raise #GP(0) as the SDM's MOV CR and WRMSR pages say, with CR4's bits reserved exactly when
/// the feature is not one the machine reports; and the system instructions added for kvm-unit-tests (SYSENTER,
/// SYSEXIT, SYSRET to compatibility mode, CLFLUSH, RDPMC, RDPID) behave as the SDM describes.</summary>
public class ArchitecturalCheckTests
{
    private const int NoFault = -1;

    /// <summary>Runs <paramref name="body"/> with gates for #UD, #GP and #PF that record the vector in R14 and the
    /// faulting RIP in R15 and end the run; returns the vector (or <see cref="NoFault"/>) and the machine.</summary>
    private static (int Vector, TestMachine Machine) Run(Action<Assembler> body, Action<Cpu>? setup = null)
    {
        var m = new TestMachine(a =>
        {
            var done = a.CreateLabel();
            var handlers = new[] { (6, a.CreateLabel()), (13, a.CreateLabel()), (14, a.CreateLabel()) };
            foreach (var (vector, label) in handlers)
            {
                TestMachine.Gate(a, vector, label);
            }
            a.mov(r14, NoFault);
            a.mov(__qword_ptr[0x5004], 0x7F00); // TSS.RSP0: faults from ring 3 switch to this stack
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
                a.mov(r14, vector);
                a.mov(rsp, 0x8000);
                a.jmp(done);
            }
            a.Label(ref done);
        }, setup: c =>
        {
            c.Tr = new Segment { Selector = 0x28, Base = 0x5000, Limit = 0x67, Attributes = 0x8B };
            setup?.Invoke(c);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        return ((int)(long)m.Cpu.Registers[14], m);
    }

    private static void WriteCr4(Assembler a, ulong value)
    {
        a.mov(rax, value);
        a.mov(cr4, rax);
    }

    public static TheoryData<int, string> Cr4Bits()
    {
        var data = new TheoryData<int, string>();
        foreach (var (bit, name, _) in ProcessorModel.Cr4Bits.Where(b => b.Bit != 5))
        {
            data.Add(bit, name);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cr4Bits))]
    public void A_cr4_bit_is_writable_exactly_when_its_feature_is_reported(int bit, string name)
    {
        var info = ProcessorModel.Cr4Bits.Single(b => b.Bit == bit);
        bool reported = info.Feature == CpuFeature.None || CpuidFeatures.Reported.Any(f => f.Feature == info.Feature);
        var (vector, m) = Run(a => WriteCr4(a, Cr4.PhysicalAddressExtension | (1UL << bit)));
        Assert.True((reported ? NoFault : 13) == vector, $"CR4.{name} (bit {bit}), feature reported: {reported}, vector {vector}");
        Assert.Equal(reported, (m.Cpu.Cr4 & (1UL << bit)) != 0);
    }

    [Theory]
    [InlineData(15)]
    [InlineData(19)]
    [InlineData(25)]
    [InlineData(32)]
    [InlineData(63)]
    public void Cr4_bits_no_feature_defines_are_reserved(int bit)
    {
        Assert.Equal(13, Run(a => WriteCr4(a, Cr4.PhysicalAddressExtension | (1UL << bit))).Vector);
    }

    [Fact]
    public void La57_osxsave_and_pke_raise_gp_since_the_machine_has_neither_five_level_paging_xsave_nor_keys()
    {
        foreach (int bit in new[] { 12, 18, 22 })
        {
            Assert.Equal(13, Run(a => WriteCr4(a, Cr4.PhysicalAddressExtension | (1UL << bit))).Vector);
        }
    }

    [Fact]
    public void Clearing_cr4_pae_in_ia32e_mode_raises_gp()
    {
        Assert.Equal(13, Run(a => WriteCr4(a, 0), c => c.Cr4 = Cr4.PhysicalAddressExtension).Vector);
    }

    [Fact]
    public void Setting_pcide_needs_cr3_bits_11_0_clear()
    {
        var (refused, _) = Run(a =>
        {
            a.mov(rax, 0x5001);
            a.mov(cr3, rax);
            WriteCr4(a, Cr4.PhysicalAddressExtension | Cr4.ProcessContextIdentifiers);
        });
        Assert.Equal(13, refused);
        var (accepted, m) = Run(a => WriteCr4(a, Cr4.PhysicalAddressExtension | Cr4.ProcessContextIdentifiers));
        Assert.Equal(NoFault, accepted);
        Assert.NotEqual(0UL, m.Cpu.Cr4 & Cr4.ProcessContextIdentifiers);
    }

    [Fact]
    public void Cr3_bit_63_is_reserved_without_pcide_and_the_no_flush_hint_with_it()
    {
        Assert.Equal(13, Run(a => { a.mov(rax, 0x8000_0000_0000_5000UL); a.mov(cr3, rax); }).Vector);
        var (vector, m) = Run(a =>
        {
            WriteCr4(a, Cr4.PhysicalAddressExtension | Cr4.ProcessContextIdentifiers);
            a.mov(rax, 0x8000_0000_0000_5001UL);
            a.mov(cr3, rax);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(0x5001UL, m.Cpu.Cr3);
    }

    [Theory]
    [InlineData(1UL << 32)]                     // a reserved high bit
    [InlineData(Cr0.NotWriteThrough)]           // NW without CD
    [InlineData(Cr0.Paging)]                    // PG without PE
    public void Invalid_cr0_values_raise_gp(ulong value)
    {
        Assert.Equal(13, Run(a => { a.mov(rax, value); a.mov(cr0, rax); }).Vector);
    }

    [Fact]
    public void Cr8_above_15_raises_gp()
    {
        Assert.Equal(13, Run(a => { a.mov(eax, 16); a.mov(cr8, rax); }).Vector);
        Assert.Equal(NoFault, Run(a => { a.mov(eax, 15); a.mov(cr8, rax); }).Vector);
    }

    [Theory]
    [InlineData(1UL << 1)]   // reserved
    [InlineData(1UL << 12)]  // SVME: an AMD bit, reserved on this Intel part
    [InlineData(1UL << 14)]  // FFXSR: AMD
    public void Reserved_efer_bits_raise_gp(ulong bit)
    {
        Assert.Equal(13, Run(a =>
        {
            a.mov(ecx, Msr.Efer);
            a.rdmsr();
            a.mov(rbx, bit);
            a.or(rax, rbx);
            a.wrmsr();
        }).Vector);
    }

    [Fact]
    public void Sysexit_to_64_bit_ring_3_and_sysenter_back_use_the_sysenter_msrs()
    {
        var ring3 = default(Label);
        var entry = default(Label);
        var (vector, m) = Run(a =>
        {
            ring3 = a.CreateLabel();
            entry = a.CreateLabel();
            var back = a.CreateLabel();
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
            a.lea(rdx, __[ring3]);
            a.mov(ecx, 0x7800); // the user stack
            a.sysexitq();
            a.Label(ref ring3);
            a.mov(r8, rsp);
            a.mov(r9w, cs);
            a.sysenter();
            a.Label(ref entry);
            a.mov(r10w, cs);
            a.mov(r11w, ss);
            a.Label(ref back);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(0x7800UL, m.Cpu.Registers[8]);
        Assert.Equal(0x10UL + 32 + 3, m.Cpu.Registers[9] & 0xFFFF);  // SYSEXITQ: SYSENTER_CS + 32, RPL 3
        Assert.Equal(0x10UL, m.Cpu.Registers[10] & 0xFFFF);          // SYSENTER: SYSENTER_CS, CPL 0
        Assert.Equal(0x18UL, m.Cpu.Registers[11] & 0xFFFF);          // SS = SYSENTER_CS + 8
        Assert.Equal(0x7000UL, m.Cpu.Registers[4]);
        Assert.Equal(0, m.Cpu.PrivilegeLevel);
    }

    [Fact]
    public void Sysenter_with_a_null_sysenter_cs_raises_gp()
    {
        Assert.Equal(13, Run(a => a.sysenter()).Vector);
    }

    [Fact]
    public void Sysexit_at_cpl_3_raises_gp()
    {
        // SYSEXITQ to ring 3, then SYSEXITQ again there: the second faults, from ring 3.
        var again = default(Label);
        var (vector, m) = Run(a =>
        {
            again = a.CreateLabel();
            TestMachine.SysexitToRing3(a, again);
            a.Label(ref again);
            a.sysexitq();
        });
        Assert.Equal(13, vector);
        Assert.Equal(m.Address(again), m.Cpu.Registers[15]);
    }

    [Fact]
    public void Sysret_without_rex_w_returns_to_compatibility_mode()
    {
        // SYSRET (32-bit operand size) loads CS = STAR[63:48] | 3 as 32-bit code: 0x48 there is DEC EAX, not a REX
        // prefix, and the OUT to the exit port runs with IOPL 3 from R11.
        var compatibility = default(Label);
        var m = new TestMachine(a =>
        {
            compatibility = a.CreateLabel();
            a.mov(ecx, Msr.Efer);
            a.rdmsr();
            a.or(eax, 1); // SCE
            a.wrmsr();
            a.mov(ecx, Msr.Star);
            a.xor(eax, eax);
            a.mov(edx, 0x0023_0008); // SYSRET base selector 0x20
            a.wrmsr();
            a.lea(rcx, __[compatibility]);
            a.mov(r11d, 0x3002); // IOPL 3
            a.mov(eax, 5);
            a.sysret();
            a.Label(ref compatibility);
            a.db(0x48);              // DEC EAX in 32-bit code
            a.db(0x66, 0xBA, 0xF4, 0x00); // mov dx, 0xF4
            a.db(0xEE);              // out dx, al
        }, exit: false);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(32, m.Cpu.Bitness);
        Assert.Equal(0x23, m.Cpu.Cs.Selector);
        Assert.Equal(0x2B, m.Cpu.Ss.Selector);
        Assert.Equal(4UL, m.Cpu.Registers[0]);
    }

    [Fact]
    public void Syscall_outside_64_bit_mode_is_invalid_on_an_intel_processor()
    {
        // SYSRET to compatibility mode, then SYSCALL there: #UD (Intel SDM Vol. 2B SYSCALL), delivered through the
        // 64-bit IDT; the handler records it.
        var (vector, m) = Run(a =>
        {
            var compatibility = a.CreateLabel();
            a.mov(ecx, Msr.Efer);
            a.rdmsr();
            a.or(eax, 1);
            a.wrmsr();
            a.mov(ecx, Msr.Star);
            a.xor(eax, eax);
            a.mov(edx, 0x0023_0008);
            a.wrmsr();
            a.lea(rcx, __[compatibility]);
            a.mov(r11d, 0x2);
            a.sysret();
            a.Label(ref compatibility);
            a.db(0x0F, 0x05); // SYSCALL
        });
        Assert.Equal(6, vector);
        Assert.Equal(0, m.Cpu.PrivilegeLevel);
    }

    [Fact]
    public void Rdpmc_raises_gp_since_the_machine_has_no_performance_counters()
    {
        Assert.Equal(13, Run(a => { a.xor(ecx, ecx); a.rdpmc(); }).Vector);
    }

    [Fact]
    public void Clflush_checks_its_address_and_does_nothing_else()
    {
        Assert.Equal(NoFault, Run(a => { a.mov(rdi, 0x20_0000); a.clflush(__byte_ptr[rdi]); a.clflushopt(__byte_ptr[rdi]); }).Vector);
        Assert.Equal(13, Run(a => { a.mov(rdi, 0x8000_0000_0000_0000UL); a.clflush(__byte_ptr[rdi]); }).Vector);
    }

    [Fact]
    public void Rdpid_reads_tsc_aux()
    {
        var (vector, m) = Run(a =>
        {
            a.mov(ecx, Msr.TscAux);
            a.mov(eax, 0x1234);
            a.xor(edx, edx);
            a.wrmsr();
            a.rdpid(r8);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(0x1234UL, m.Cpu.Registers[8]);
    }

    [Fact]
    public void Rdtsc_at_cpl_3_with_cr4_tsd_raises_gp()
    {
        var (vector, m) = Run(a =>
        {
            var ring3 = a.CreateLabel();
            WriteCr4(a, Cr4.PhysicalAddressExtension | Cr4.TimeStampDisable);
            a.rdtsc(); // CPL 0: allowed
            TestMachine.SysexitToRing3(a, ring3);
            a.Label(ref ring3);
            a.rdtsc();
        });
        Assert.Equal(13, vector);
        Assert.Equal(Cr4.TimeStampDisable, m.Cpu.Cr4 & Cr4.TimeStampDisable);
    }

    [Theory]
    [InlineData(Msr.FsBase)]
    [InlineData(Msr.GsBase)]
    [InlineData(Msr.KernelGsBase)]
    [InlineData(Msr.LongStar)]
    public void Msrs_holding_linear_addresses_refuse_non_canonical_ones(uint msr)
    {
        var (vector, m) = Run(a =>
        {
            a.mov(ecx, msr);
            a.mov(eax, 0xAAAA_AAAA);
            a.mov(edx, 0xAAAA_AAAA);
            a.wrmsr();
        });
        Assert.Equal(13, vector);
        Assert.Equal(0UL, m.Cpu.Gs.Base | m.Cpu.Fs.Base | m.Cpu.KernelGsBase | m.Cpu.LongStar);
    }

    [Fact]
    public void A_fault_saves_rflags_with_rf_set_and_a_trap_does_not()
    {
        // #GP (a fault) then INT3 (a trap): each handler keeps the RFLAGS image it was given.
        var m = new TestMachine(a =>
        {
            var fault = a.CreateLabel();
            var trap = a.CreateLabel();
            var afterFault = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 13, fault);
            TestMachine.Gate(a, 3, trap);
            a.mov(ecx, 0x1234_5678); // no such MSR
            a.rdmsr();
            a.Label(ref afterFault);
            a.int3();
            a.jmp(done);
            a.Label(ref fault);
            a.mov(r12, __qword_ptr[rsp + 24]); // error code, RIP, CS, then RFLAGS
            a.lea(rax, __[afterFault]);
            a.mov(__qword_ptr[rsp + 8], rax);   // resume after the RDMSR
            a.add(rsp, 8);
            a.iretq();
            a.Label(ref trap);
            a.mov(r13, __qword_ptr[rsp + 16]); // RIP, CS, then RFLAGS
            a.pushfq();
            a.pop(r14);                         // RF did not stay set after IRET
            a.iretq();
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(FlagBits.Resume, m.Cpu.Registers[12] & FlagBits.Resume);
        Assert.Equal(0UL, m.Cpu.Registers[13] & FlagBits.Resume);
        Assert.Equal(0UL, m.Cpu.Rflags & FlagBits.Resume);
    }

    [Fact]
    public void Invpcid_of_a_pcid_other_than_0_needs_cr4_pcide_for_types_0_and_1()
    {
        static void Invpcid(Assembler a, int type)
        {
            a.mov(rdi, 0x20_0000);
            a.mov(__qword_ptr[rdi], 1);     // PCID 1
            a.mov(__qword_ptr[rdi + 8], 0); // linear address 0
            a.mov(eax, type);
            a.invpcid(rax, __[rdi]);
        }
        Assert.Equal(13, Run(a => Invpcid(a, 0)).Vector);
        Assert.Equal(13, Run(a => Invpcid(a, 1)).Vector);
        Assert.Equal(NoFault, Run(a => Invpcid(a, 2)).Vector);
        Assert.Equal(NoFault, Run(a => { WriteCr4(a, Cr4.PhysicalAddressExtension | Cr4.ProcessContextIdentifiers); Invpcid(a, 1); }).Vector);
    }

    [Fact]
    public void Lgdt_and_lidt_refuse_a_non_canonical_base()
    {
        static void Load(Assembler a, bool idt)
        {
            a.mov(rdi, 0x20_0000);
            a.mov(__word_ptr[rdi], 0xFFF);
            a.mov(rax, 0xFFAA_AAAA_AAAA_AAAAUL);
            a.mov(__qword_ptr[rdi + 2], rax);
            if (idt)
            {
                a.lidt(__[rdi]);
            }
            else
            {
                a.lgdt(__[rdi]);
            }
        }
        var (gdt, m) = Run(a => Load(a, idt: false));
        Assert.Equal(13, gdt);
        Assert.Equal(0x6000UL, m.Cpu.GdtBase);
        Assert.Equal(13, Run(a => Load(a, idt: true)).Vector);
    }
}
