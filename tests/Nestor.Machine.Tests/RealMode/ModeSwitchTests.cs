using Iced.Intel;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.RealMode;

/// <summary>Real mode to protected mode to long mode, as an AP start-up trampoline or a boot loader goes (SDM Vol. 3A
/// §9.9.1 "switching to protected mode", §9.8.5 "initializing IA-32e mode"), and back from protected to real mode
/// (§9.9.2).</summary>
public class ModeSwitchTests
{
    // GDT at 0x9000: 0x08 = 32-bit flat code, 0x10 = flat data, 0x18 = 64-bit code, 0x20 = 16-bit code at base 0,
    // 0x28 = 16-bit data with a 4 GiB limit.
    private static void WriteGdt(RealModeMachine m)
    {
        m.Memory.Write(0x9008, 0x00CF_9A00_0000_FFFFUL);
        m.Memory.Write(0x9010, 0x00CF_9200_0000_FFFFUL);
        m.Memory.Write(0x9018, 0x00AF_9A00_0000_FFFFUL);
        m.Memory.Write(0x9020, 0x0000_9A00_0000_FFFFUL);
        m.Memory.Write(0x9028, 0x008F_9200_0000_FFFFUL);
    }

    /// <summary>A trampoline at CS = 0x0800 (base 0x8000, as a SIPI with vector 8 starts an AP) reads its GDT
    /// pointer through DS = CS with a 66h LGDT, sets CR0.PE, far-jumps (66 EA ptr16:32) into 32-bit code, loads the
    /// data segments there, turns on PAE, CR3, EFER.LME and paging, far-jumps into 64-bit code, and writes the debug
    /// exit. Every step leaves a mark the test checks.</summary>
    [Fact]
    public void A_trampoline_goes_from_real_mode_through_protected_mode_to_long_mode()
    {
        var m = new RealModeMachine(0x0800);
        WriteGdt(m);
        // GDTR image at CS:0x0F00 (physical 0x8F00): limit, then base 0x9000.
        m.Memory.Write(0x8F00, 0x9000UL << 16 | 0x2F);
        m.Memory.Map(0, 0, TestMemory.P | TestMemory.W, leafLevel: 2); // identity 2 MiB for long mode
        m.Place(16, 0x8000, 0, a =>
        {
            a.cli();
            a.mov(ax, cs);
            a.mov(ds, ax);
            a.mov(__word_ptr[0x0E00], 0x5151);                              // DS:0x0E00 = physical 0x8E00
            a.AddInstruction(Instruction.Create(Code.Lgdt_m1632, new MemoryOperand(Register.None, 0x0F00, 2)));
            a.mov(eax, cr0);
            a.or(eax, 1);
            a.mov(cr0, eax);
            a.AddInstruction(Instruction.CreateBranch(Code.Jmp_ptr1632, 0x08, 0x8100));
        });
        m.Place(32, 0x8100, 0x8100, a =>
        {
            a.mov(ax, 0x10);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(esp, 0x7000);
            a.mov(__dword_ptr[0x8E04], 0x3232);
            a.mov(eax, cr4);
            a.or(eax, 0x20);                                                 // PAE
            a.mov(cr4, eax);
            a.mov(eax, (uint)m.Memory.Cr3);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC000_0080);
            a.rdmsr();
            a.or(eax, 0x100);                                                // EFER.LME
            a.wrmsr();
            a.mov(eax, cr0);
            a.or(eax, 0x8000_0000);
            a.mov(cr0, eax);                                                 // IA-32e mode, compatibility
            a.AddInstruction(Instruction.CreateBranch(Code.Jmp_ptr1632, 0x18, 0x8200));
        });
        m.Place(64, 0x8200, 0x8200, a =>
        {
            a.mov(rbx, 0x1234_5678_9ABCUL);
            a.push(rbx);                                                     // a 64-bit stack at 0x7000
            a.mov(dx, 0xF4);
            a.@out(dx, al);
        });
        m.RunToExit();
        Assert.Equal(64, m.Cpu.Bitness);
        Assert.Equal(0x5151, m.ReadWord(0x8E00));                           // real mode: DS = CS, base 0x8000
        Assert.Equal(0x3232u, m.ReadDword(0x8E04));                         // 32-bit protected mode, flat DS
        Assert.Equal(0x9000UL, m.Cpu.GdtBase);
        Assert.Equal(0x1234_5678_9ABCUL, m.Memory.Read(0x6FF8));
        Assert.Equal(0x18, m.Cpu.Cs.Selector);
        Assert.Equal(0, m.Cpu.PrivilegeLevel);
    }

    /// <summary>16-bit addressing in real mode: the ModRM forms BX+SI+disp and BP+DI (BP's default segment is SS),
    /// an ES override, disp16 alone, offsets wrapping at 64 KiB within the segment (SDM Vol. 2A Table 2-1); a 67h
    /// prefix selects 32-bit addressing ([EBX+ECX*4]); MOV to a segment register loads base = selector × 16; a near
    /// CALL and RET move 2 bytes on SS:SP, a 66h CALL and RET 4 (the return EIP).</summary>
    [Fact]
    public void Real_mode_addresses_are_segment_base_plus_a_16_bit_offset()
    {
        var m = new RealModeMachine(0x0100); // code at 0x1000
        m.Poke(0x2000 + 0x10 + 0x20 + 4, 0x11, 0x22);            // DS = 0x200: [BX+SI+4] with BX 0x10, SI 0x20
        m.Poke(0x3000 + 0x40 + 0x08, 0x33, 0x44);                // SS = 0x300: [BP+DI] with BP 0x40, DI 0x08
        m.Poke(0x4000 + 0x1234, 0x55, 0x66);                     // ES = 0x400: ES:[0x1234]
        m.Poke(0x2000 + 0x0002, 0x77, 0x88);                     // [BX+SI+disp] wrapping: 0xFFF0 + 0x10 + 2 = 0x1_0002
        m.Poke(0x2000 + 0x0100 + 0x0010 * 4, 0x99, 0xAA);        // 67h: [EBX+ECX*4], EBX 0x100, ECX 0x10
        m.Place(16, 0x1000, 0, a =>
        {
            var function = a.CreateLabel();
            a.mov(ax, 0x200);
            a.mov(ds, ax);
            a.mov(ax, 0x300);
            a.mov(ss, ax);
            a.mov(sp, 0x800);
            a.mov(ax, 0x400);
            a.mov(es, ax);
            a.mov(bx, 0x10);
            a.mov(si, 0x20);
            a.mov(cx, __word_ptr[bx + si + 4]);
            a.mov(__word_ptr[0x0600], cx);                       // disp16 alone: DS:0x0600 = 0x2600
            a.mov(bp, 0x40);
            a.mov(di, 0x08);
            a.mov(dx, __word_ptr[bp + di]);
            a.mov(__word_ptr[0x0602], dx);
            a.mov(ax, __word_ptr.es[0x1234]);
            a.mov(__word_ptr[0x0604], ax);
            a.mov(bx, 0xFFF0);
            a.mov(si, 0x10);
            a.mov(di, __word_ptr[bx + si + 2]);
            a.mov(__word_ptr[0x0606], di);
            a.mov(ebx, 0x100);
            a.mov(ecx, 0x10);
            a.mov(si, __word_ptr[ebx + ecx * 4]);
            a.mov(__word_ptr[0x0608], si);
            a.call(function);
            a.mov(eax, 0x0800);
            a.AddInstruction(Instruction.Create(Code.Call_rm32, Register.EAX)); // 66 FF D0: pushes EIP, 4 bytes
            a.mov(__word_ptr[0x060E], sp);
            a.mov(dx, 0xF4);
            a.@out(dx, al);
            a.Label(ref function);
            a.mov(bp, sp);
            a.mov(bp, __word_ptr[bp]);                           // the return IP, through SS
            a.mov(__word_ptr[0x060A], bp);
            a.ret();
        });
        m.Place(16, 0x1800, 0x0800, a =>
        {
            a.mov(bp, sp);
            a.mov(eax, __dword_ptr[bp]);
            a.mov(__dword_ptr[0x0610], eax);
            a.mov(__word_ptr[0x060C], sp);
            a.AddInstruction(Instruction.Create(Code.Retnd));    // 66 C3: pops EIP
        });
        m.RunToExit();
        Assert.Equal(0x2211, m.ReadWord(0x2600));
        Assert.Equal(0x4433, m.ReadWord(0x2602));
        Assert.Equal(0x6655, m.ReadWord(0x2604));
        Assert.Equal(0x8877, m.ReadWord(0x2606));
        Assert.Equal(0xAA99, m.ReadWord(0x2608));
        ushort returnIp = m.ReadWord(0x260A);
        Assert.InRange(returnIp, 0x40, 0x80);                   // the offset after the CALL, not a linear address
        Assert.Equal(0x7FC, m.ReadWord(0x260C));                // the o32 CALL pushed 4 bytes
        Assert.True(m.ReadDword(0x2610) > returnIp);            // its return EIP, after the first CALL's
        Assert.Equal(0x800, m.ReadWord(0x260E));                // both returns restored SP
        Assert.Equal(0x3000UL, m.Cpu.Ss.Base);
        Assert.Equal(16, m.Cpu.Bitness);
    }
}
