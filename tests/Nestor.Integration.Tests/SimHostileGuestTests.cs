using System.Diagnostics;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Exits;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary>Issue 10 on the software machine: a guest cannot hold the host with one instruction, and when it stops on
/// something the machine does not model, or triple-faults, the message says what started it.</summary>
public class SimHostileGuestTests
{
    /// <summary>One REP STOSB of 2^40 bytes is one instruction; the timeout still ends the run within moments,
    /// because the instruction is suspended between iterations. The guest maps the whole terabyte it writes onto one
    /// 2 MiB frame of RAM (its own page tables), so that no write goes to a device.</summary>
    [Fact]
    public void A_huge_rep_stosb_is_stopped_by_the_timeout()
    {
        const ulong pml4 = 0x180000, pdptA = 0x181000, pdptB = 0x182000, pdA = 0x183000, pdB = 0x184000, frame = 0x200000;
        void Prefix(Iced.Intel.Assembler a)
        {
            void Fill(ulong table, int from, int to, ulong entry)
            {
                var loop = a.CreateLabel();
                a.mov(rdi, table);
                a.mov(ecx, from);
                a.mov(rax, entry);
                a.Label(ref loop);
                a.mov(__qword_ptr[rdi + rcx * 8], rax);
                a.inc(ecx);
                a.cmp(ecx, to);
                a.jb(loop);
            }
            Fill(pdA, 0, 1, 0x83);                  // the first 2 MiB: identity (this code, the GDT, the stack)
            Fill(pdA, 1, 512, frame | 0x83);        // every other 2 MiB: the one frame
            Fill(pdB, 0, 512, frame | 0x83);
            Fill(pdptA, 0, 1, pdA | 3);
            Fill(pdptA, 1, 512, pdB | 3);
            Fill(pdptB, 0, 512, pdB | 3);
            Fill(pml4, 0, 1, pdptA | 3);
            Fill(pml4, 1, 256, pdptB | 3);
            a.mov(rax, pml4);
            a.mov(cr3, rax);
            a.mov(rdi, frame);
            a.mov(rcx, 1UL << 40);
        }
        ulong repAt = 0x100000 + (ulong)GuestAssembler.Assemble(Prefix).Length;
        var code = GuestAssembler.Assemble(a =>
        {
            Prefix(a);
            a.rep.stosb();
            a.hlt();
        });
        var clock = Stopwatch.StartNew();
        var (outcome, _, vm) = SimEngineTests.RunInProcess(GuestAssembler.Flat("rep", code), timeoutSeconds: 1);
        clock.Stop();
        vm.Dispose();
        Assert.True(outcome.Kind == VmOutcomeKind.Timeout, outcome.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"the run took {clock.Elapsed.TotalSeconds:F1} s past a 1 s timeout");
        var state = outcome.FinalState!;
        Assert.Equal(repAt, state.Rip);                           // still at the REP
        Assert.InRange(state.Rcx, 1UL, (1UL << 40) - (1UL << 20)); // partly done: at least one slice
        Assert.Equal(frame + ((1UL << 40) - state.Rcx), state.Rdi);
    }

    /// <summary>`fsqrt` (x87 arithmetic, not modelled) with no IDT: the CPU raises #UD for it, the #UD cannot be
    /// delivered, and the triple-fault message names the instruction and says it is not modelled.</summary>
    [Fact]
    public void An_x87_instruction_without_an_idt_is_named_as_not_modelled()
    {
        string guest = FlatGuest(a =>
        {
            a.nop();
            a.fsqrt();
            a.hlt();
        });
        try
        {
            var r = Run("run", "--flat", guest, "--timeout", "30");
            Assert.True(r.ExitCode == 122, r.ToString()); // triple fault
            Assert.Contains("fsqrt at rip=0x100001 (an x87 FPU instruction), which is not modelled by the software machine", r.Stderr);
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
