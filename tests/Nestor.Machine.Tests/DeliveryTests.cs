using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>Faults during event delivery, as SDM Vol. 3A §6.15 (Interrupt 8, Tables 6-4 and 6-5) has them: serially
/// after a benign event, a double fault after a contributory one or a page fault, shutdown after a double fault; what
/// started a shutdown; and the instructions the machine does not model.</summary>
public class DeliveryTests
{
    /// <summary>A handler that keeps the error code in RBX and the saved RIP in R15, then goes on at
    /// <paramref name="resume"/> with the boot stack.</summary>
    private static void RecordingHandler(Assembler a, Label handler, Label resume, bool errorCode)
    {
        a.Label(ref handler);
        if (errorCode)
        {
            a.pop(rbx);
        }
        a.pop(r15);
        a.mov(rsp, 0x8000);
        a.jmp(resume);
    }

    [Fact]
    public void Int_n_through_a_gate_that_is_not_present_raises_np_at_the_int_not_a_double_fault()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 11, handler);
            at = a.CreateLabel();
            a.Label(ref at);
            a.@int(0x50);
            a.jmp(done);
            RecordingHandler(a, handler, done, errorCode: true);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x50UL * 8 + 2, m.Cpu.Registers[3]); // IDT entry 0x50, EXT clear: INT n is the program's own
        Assert.Equal(m.Address(at), m.Cpu.Registers[15]); // a fault of the INT instruction
        Assert.Equal(0, m.Cpu.Counters.ExceptionsByVector[8]);
        Assert.Equal(1, m.Cpu.Counters.ExceptionsByVector[11]);
        Assert.Equal(0, m.Cpu.Counters.ExceptionsByVector[0x50 & 31]); // INT n is not counted as an exception
        Assert.Equal(1, m.Cpu.Counters.SoftwareInterrupts);
    }

    [Fact]
    public void A_benign_exception_whose_gate_is_missing_is_followed_serially_by_np_with_ext_set()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 11, handler);
            at = a.CreateLabel();
            a.Label(ref at);
            a.ud2();
            RecordingHandler(a, handler, done, errorCode: true);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(6UL * 8 + 2 + 1, m.Cpu.Registers[3]); // IDT entry 6, EXT: during an earlier exception
        Assert.Equal(m.Address(at), m.Cpu.Registers[15]);
        Assert.Equal((1L, 1L, 0L), (m.Cpu.Counters.ExceptionsByVector[6], m.Cpu.Counters.ExceptionsByVector[11], m.Cpu.Counters.ExceptionsByVector[8]));
    }

    [Fact]
    public void A_contributory_exception_whose_gate_is_missing_becomes_a_double_fault()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 8, handler);
            a.mov(ecx, 0x1234_5678); // no such MSR: #GP(0)
            a.rdmsr();
            RecordingHandler(a, handler, done, errorCode: true);
            a.Label(ref done);
        });
        m.Cpu.Registers[3] = 0xBAD;
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0UL, m.Cpu.Registers[3]); // #DF's error code is zero
        Assert.Equal((1L, 1L, 0L), (m.Cpu.Counters.ExceptionsByVector[13], m.Cpu.Counters.ExceptionsByVector[8], m.Cpu.Counters.ExceptionsByVector[11]));
    }

    /// <summary>An external interrupt whose gate is missing: #NP (EXT set) with the interrupted RIP saved.</summary>
    [Fact]
    public void An_interrupt_whose_gate_is_missing_raises_np_at_the_interrupted_instruction()
    {
        var after = default(Label);
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 11, handler);
            a.mov(rbx, 0xFEE0_0000UL);
            a.mov(__dword_ptr[rbx + 0xF0], 0x1FF);
            a.mov(__dword_ptr[rbx + 0x3E0], 0xB);
            a.mov(__dword_ptr[rbx + 0x320], 0x40);
            a.mov(__dword_ptr[rbx + 0x380], 100);
            a.sti();
            a.hlt();
            after = a.CreateLabel();
            a.Label(ref after);
            a.cli();
            RecordingHandler(a, handler, done, errorCode: true);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x40UL * 8 + 2 + 1, m.Cpu.Registers[3]);
        Assert.Equal(m.Address(after), m.Cpu.Registers[15]);
        Assert.Equal(0, m.Cpu.Counters.ExceptionsByVector[8]);
    }

    [Fact]
    public void A_page_fault_without_an_idt_shuts_down_and_names_the_page_fault_first()
    {
        const ulong unmapped = 0x40_0000_0000;
        var at = default(Label);
        TestMemory? memory = null;
        var m = new TestMachine(a =>
        {
            a.mov(rax, unmapped);
            at = a.CreateLabel();
            a.Label(ref at);
            a.mov(__qword_ptr[rax + 8], rbx);
        }, setup: cpu =>
        {
            cpu.Cr0 = 0x8001_0033;
            cpu.Efer = 0xD00;
        });
        memory = m.Memory;
        memory.Map(0x1000, 0x1000, TestMemory.P | TestMemory.W);
        memory.Map(0x7000, 0x7000, TestMemory.P | TestMemory.W);
        m.Cpu.Cr3 = memory.Cr3;
        m.Cpu.ControlStateChanged();
        Assert.Null(m.Cpu.ShutdownCause);
        Assert.Equal(StopReason.Shutdown, m.RunToEnd().Stop);
        var cause = m.Cpu.ShutdownCause!.Value;
        Assert.Equal(ExceptionVector.PageFault, cause.Vector);
        Assert.Equal(DeliveredEvent.Exception, cause.Kind);
        Assert.Equal(2u, cause.ErrorCode);                   // a write to a page that is not present
        Assert.Equal(unmapped + 8, cause.FaultAddress);
        Assert.Equal(m.Address(at), cause.Rip);
        Assert.Equal(ExceptionVector.GeneralProtection, cause.DeliveryFault);
        Assert.Equal(14u * 8 + 2 + 1, cause.DeliveryErrorCode); // IDT entry 14 is beyond the limit; EXT
        Assert.Equal($"#PF (page fault) raised at rip=0x{m.Address(at):x}, error code 0x2, address 0x{unmapped + 8:x}", cause.Describe());
        Assert.Equal("#GP (general protection), error code 0x73 (IDT entry 14)", cause.DescribeDeliveryFault());
        // The #PF, then the double fault; nothing after.
        Assert.Equal((1L, 1L, 0L), (m.Cpu.Counters.ExceptionsByVector[14], m.Cpu.Counters.ExceptionsByVector[8], m.Cpu.Counters.ExceptionsByVector[13]));
    }

    [Theory]
    [InlineData("fsqrt", "Fsqrt", "FPU")]
    [InlineData("movaps", "Movaps", "SSE")]
    [InlineData("rdrand", "Rdrand", "RDRAND")]
    public void An_unmodelled_instruction_raises_ud_for_the_guest_and_is_remembered(string which, string mnemonic, string feature)
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 6, handler);
            at = a.CreateLabel();
            a.Label(ref at);
            switch (which)
            {
                case "fsqrt": a.fsqrt(); break;
                case "movaps": a.movaps(xmm0, xmm1); break;
                default: a.rdrand(eax); break;
            }
            RecordingHandler(a, handler, done, errorCode: false);
            a.Label(ref done);
        });
        Assert.Null(m.Cpu.LastUnmodelledInstruction);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(m.Address(at), m.Cpu.Registers[15]); // the guest's #UD handler saw it
        Assert.Equal(new UnmodelledInstruction(mnemonic, m.Address(at), feature, 1), m.Cpu.LastUnmodelledInstruction);
        Assert.Equal(1, m.Cpu.Counters.UnimplementedByMnemonic[mnemonic]);
        Assert.Null(m.Cpu.ShutdownCause);
    }

    [Fact]
    public void An_unmodelled_instruction_without_an_idt_shuts_down_at_its_ud()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            a.nop();
            at = a.CreateLabel();
            a.Label(ref at);
            a.fsqrt(); // x87 arithmetic is not modelled
        });
        Assert.Equal(StopReason.Shutdown, m.RunToEnd().Stop);
        var cause = m.Cpu.ShutdownCause!.Value;
        Assert.Equal((ExceptionVector.InvalidOpcode, m.Address(at), (uint?)null), (cause.Vector, cause.Rip, cause.ErrorCode));
        Assert.Equal(m.Address(at), m.Cpu.LastUnmodelledInstruction!.Value.Rip);
        Assert.Equal(m.Address(at), m.Cpu.Rip);
    }
}
