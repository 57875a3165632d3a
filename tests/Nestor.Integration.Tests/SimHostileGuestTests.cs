using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Exits;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary>Issue 10 on the software machine: when a guest stops on something the machine does not model, or
/// triple-faults, the message says what started it.</summary>
public class SimHostileGuestTests
{
    /// <summary>`fld1` (x87) with no IDT: the CPU raises #UD as one without an FPU would, the #UD cannot be
    /// delivered, and the triple-fault message names the instruction and says it is not modelled.</summary>
    [Fact]
    public void An_x87_instruction_without_an_idt_is_named_as_not_modelled()
    {
        string guest = FlatGuest(a =>
        {
            a.nop();
            a.fld1();
            a.hlt();
        });
        try
        {
            var r = Run("run", "--flat", guest, "--timeout", "30");
            Assert.True(r.ExitCode == 122, r.ToString()); // triple fault
            Assert.Contains("fld1 at rip=0x100001 (an x87 FPU instruction), which is not modelled by the software machine", r.Stderr);
            Assert.Contains("#UD", r.Stderr);
            Assert.Contains("IDT entry 6", r.Stderr);
        }
        finally
        {
            File.Delete(guest);
        }
    }

    /// <summary>A write above the identity map with no IDT: the message names the page fault, its error code and
    /// address, and why it could not be delivered, before the double fault.</summary>
    [Fact]
    public void A_page_fault_without_an_idt_names_the_page_fault_first()
    {
        var code = GuestAssembler.Assemble(a =>
        {
            a.mov(rax, 0x10_0000_0000UL); // 64 GiB: not mapped
            a.mov(__qword_ptr[rax], rbx);
            a.hlt();
        });
        var (outcome, _, vm) = SimEngineTests.RunInProcess(GuestAssembler.Flat("pf", code));
        vm.Dispose();
        Assert.Equal(VmOutcomeKind.TripleFault, outcome.Kind);
        Assert.Contains("#PF (page fault) raised at rip=0x10000a, error code 0x2, address 0x1000000000 could not be delivered", outcome.Message);
        Assert.Contains("(IDT entry 14)", outcome.Message);
        Assert.Contains("nor the double fault that followed", outcome.Message);
        Assert.DoesNotContain("not modelled", outcome.Message);
    }

    /// <summary>A guest that handles the #UD of an unmodelled instruction keeps running; a later triple fault for
    /// another reason still mentions the instruction, as something that happened before.</summary>
    [Fact]
    public void An_earlier_unmodelled_instruction_is_mentioned_after_another_triple_fault()
    {
        var code = GuestAssembler.Assemble(a =>
        {
            var handler = a.CreateLabel();
            var resume = a.CreateLabel();
            // IDT at 0x200000 with only vector 6 (a #UD handler that goes on at `resume`); limit covers vector 14.
            a.lea(rax, __[handler]);
            a.mov(rdi, 0x200000UL + 6 * 16);
            a.mov(__word_ptr[rdi], ax);
            a.mov(__word_ptr[rdi + 2], 8);
            a.mov(__word_ptr[rdi + 4], 0x8E00);
            a.shr(rax, 16);
            a.mov(__word_ptr[rdi + 6], ax);
            a.mov(__dword_ptr[rdi + 8], 0);
            a.mov(rdi, 0x1F0000UL);
            a.mov(__word_ptr[rdi], 16 * 16 - 1);
            a.mov(rax, 0x200000UL);
            a.mov(__qword_ptr[rdi + 2], rax);
            a.lidt(__[rdi]);
            a.movaps(xmm0, xmm1);
            a.Label(ref resume);
            a.mov(rax, 0x10_0000_0000UL);
            a.mov(__qword_ptr[rax], rbx); // #PF: gate 14 not present
            a.hlt();
            a.Label(ref handler);
            a.lea(rax, __[resume]);
            a.mov(__qword_ptr[rsp], rax);
            a.iretq();
        });
        var (outcome, _, vm) = SimEngineTests.RunInProcess(GuestAssembler.Flat("ud-then-pf", code));
        vm.Dispose();
        Assert.Equal(VmOutcomeKind.TripleFault, outcome.Kind);
        Assert.Contains("#PF (page fault)", outcome.Message);
        Assert.Contains("#NP (segment not present), error code 0x73 (IDT entry 14)", outcome.Message);
        Assert.Contains("Before that, the guest executed movaps at rip=", outcome.Message);
        Assert.Contains("(SSE), which is not modelled by the software machine", outcome.Message);
    }
}
