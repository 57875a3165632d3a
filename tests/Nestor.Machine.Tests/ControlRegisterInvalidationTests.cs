using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>What MOV to CR0 and MOV to CR4 must and need not invalidate (SDM Vol. 3A §4.10.4.1), seen by guest code:
/// CR0.WP applies to the next access whatever the TLB holds (the TLB keeps the paging-structure rights, §4.10.2.2,
/// and the access combines them with CR0.WP, §4.6.1), and a CR4.PGE toggle drops global translations. Each guest
/// fills the TLB first and then relies only on what the SDM guarantees.</summary>
public class ControlRegisterInvalidationTests
{
    private const ulong Data = 0x20_0000, Frame = 0x30_0000, OtherFrame = 0x40_0000;

    private static TestMachine Paged(Action<Iced.Intel.Assembler> emit, ulong cr0)
    {
        var m = new TestMachine(emit, setup: cpu =>
        {
            cpu.Cr0 = cr0;
            cpu.Cr4 = 0x20 | 0x80; // PAE, PGE
            cpu.Efer = 0xD00;
        });
        m.Memory.Map(0x1000, 0x1000, TestMemory.P | TestMemory.W | TestMemory.G);
        m.Memory.Map(0x7000, 0x7000, TestMemory.P | TestMemory.W);
        m.Cpu.Cr3 = m.Memory.Cr3;
        return m;
    }

    [Fact]
    public void Setting_cr0_wp_without_invlpg_makes_the_next_supervisor_write_to_a_read_only_page_fault()
    {
        var at = default(Iced.Intel.Label);
        var m = Paged(a =>
        {
            a.mov(rbx, Data);
            a.mov(__qword_ptr[rbx], 1);  // WP = 0: allowed, and the read-only translation is now in the TLB
            a.mov(rax, cr0);
            a.or(eax, 0x1_0000);         // CR0.WP
            a.mov(cr0, rax);
            at = a.CreateLabel();
            a.Label(ref at);
            a.mov(__qword_ptr[rbx], 2);  // WP = 1: #PF, with no IDT a shutdown
        }, cr0: 0x8000_0033);
        m.Memory.Map(Data, Frame, TestMemory.P | TestMemory.A | TestMemory.D);
        m.Cpu.ControlStateChanged();
        Assert.Equal(StopReason.Shutdown, m.RunToEnd().Stop);
        var cause = m.Cpu.ShutdownCause!.Value;
        Assert.Equal((ExceptionVector.PageFault, 3u, Data, m.Address(at)), (cause.Vector, cause.ErrorCode, cause.FaultAddress, cause.Rip));
        Assert.Equal(1UL, m.Memory.Read(Frame));
    }

    [Fact]
    public void Clearing_cr0_wp_without_invlpg_lets_the_next_supervisor_write_to_a_read_only_page_through()
    {
        var m = Paged(a =>
        {
            a.mov(rbx, Data);
            a.mov(rcx, __qword_ptr[rbx]); // fills the TLB with the read-only translation under WP = 1
            a.mov(rax, cr0);
            a.and(eax, ~0x1_0000);
            a.mov(cr0, rax);
            a.mov(__qword_ptr[rbx], 2);
        }, cr0: 0x8001_0033);
        m.Memory.Map(Data, Frame, TestMemory.P | TestMemory.A | TestMemory.D);
        m.Cpu.ControlStateChanged();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(2UL, m.Memory.Read(Frame));
    }

    [Fact]
    public void Toggling_cr4_pge_drops_a_global_translation_whose_pte_the_guest_changed()
    {
        var m = Paged(a =>
        {
            a.mov(rbx, Data);
            a.mov(rcx, __qword_ptr[rbx]);    // the global translation to Frame is in the TLB
            a.mov(rax, OtherFrame | TestMemory.P | TestMemory.W | TestMemory.G | TestMemory.A | TestMemory.D);
            a.mov(rdx, 0x50_0000);           // the PTE (entry 0 of its table: Data is 2 MiB-aligned), mapped at 0x500000
            a.mov(__qword_ptr[rdx], rax);
            a.mov(rax, cr3);
            a.mov(cr3, rax);                 // a CR3 write keeps global translations (§4.10.4.1)
            a.mov(rsi, __qword_ptr[rbx]);    // may still read Frame: not checked, the SDM does not promise it
            a.mov(rax, cr4);
            a.xor(eax, 0x80);
            a.mov(cr4, rax);
            a.xor(eax, 0x80);
            a.mov(cr4, rax);
            a.mov(rdi, __qword_ptr[rbx]);    // must read OtherFrame
        }, cr0: 0x8001_0033);
        var entries = m.Memory.Map(Data, Frame, TestMemory.P | TestMemory.W | TestMemory.G | TestMemory.A | TestMemory.D);
        m.Memory.Map(0x50_0000, entries[^1] & ~0xFFFUL, TestMemory.P | TestMemory.W);
        m.Memory.Write(Frame, 0x1111);
        m.Memory.Write(OtherFrame, 0x2222);
        m.Cpu.ControlStateChanged();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x1111UL, m.Cpu.Registers[1]);
        Assert.Equal(0x2222UL, m.Cpu.Registers[7]);
    }
}
