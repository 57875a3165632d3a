using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests;

/// <summary>A privileged instruction of the deprivileged kernel that writes a page its shadow keeps read-only (a guest
/// page table, or a frame that was one lately): REP INSW traps as #GP in ring 1 (CPL &gt; IOPL), the VMM emulates it at
/// CPL 0, the emulation's write faults on the write-protected page, and shadow paging emulates the write once more.
/// That second emulation must run privileged too: it used to run the instruction in ring 1, take the #GP again and
/// inject it into the guest, which bare metal never raises (NestorOS's swap-in worked around it with a staging frame).</summary>
public sealed class PrivilegedWriteToPageTableTests
{
    private const ushort DataPort = 0x5E8;
    private const ulong Pdpt = 0x300000, Pd = 0x301000, Results = 0x302000;
    private const ulong HighAddress = 512UL << 30; // PML4 entry 1

    /// <summary>Gives 0xA000 + n for the n-th word read.</summary>
    private sealed class CountingPort : IPortDevice
    {
        public int Reads { get; private set; }

        public string Name => "words";

        public uint Read(ushort port, int size) => (uint)(0xA000 + Reads++);

        public void Write(ushort port, int size, uint value)
        {
        }
    }

    [Theory]
    [InlineData(Technique.TrapAndEmulate)]
    [InlineData(Technique.Paravirtual)]
    [InlineData(Technique.BinaryTranslation)]
    [InlineData(Technique.HardwareAssist)]
    public void Rep_insw_into_a_frame_that_was_a_page_table_lately_reads_the_words(Technique technique)
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            // A PDPT and a PD of the guest's own, mapping 512 GiB to physical 0 with a 2 MiB page (SDM Vol. 3A §4.5).
            a.mov(rdi, Pdpt);
            a.mov(ecx, 1024);
            a.xor(eax, eax);
            a.rep.stosq();                                          // both tables zeroed
            a.mov(rax, Pd | 3);
            a.mov(__qword_ptr[Pdpt], rax);
            a.mov(rax, 0x83UL);                                     // present, writable, PS
            a.mov(__qword_ptr[Pd], rax);
            a.mov(rbx, cr3);
            a.and(rbx, unchecked((int)0xFFFFF000));
            a.mov(rax, Pdpt | 3);
            a.mov(__qword_ptr[rbx + 8], rax);                       // PML4[1]
            a.mov(rax, HighAddress);
            a.mov(rax, __qword_ptr[rax + 0x100]);                   // a walk through both: the shadow now tracks them
            a.mov(__qword_ptr[rbx + 8], 0);                         // unlinked again: "lately a page table"
            a.mov(rax, HighAddress);
            a.invlpg(__byte_ptr[rax]);
            // Eight words from the port into the former PD, through the identity map.
            a.mov(rdi, Pd);
            a.mov(dx, DataPort);
            a.mov(ecx, 8);
            a.cld();
            a.rep.insw();
            a.mov(rax, __qword_ptr[Pd]);
            a.mov(__qword_ptr[Results], rax);
            a.mov(rax, __qword_ptr[Pd + 8]);
            a.mov(__qword_ptr[Results + 8], rax);
            a.mov(dx, 0xF4);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.hlt();
        });
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("insw-page-table", code),
            MemoryBytes = 16UL << 20,
            Timeout = TimeSpan.FromSeconds(60),
            SerialOutput = Stream.Null,
        });
        var port = new CountingPort();
        vm.Bus.Claim(port, DataPort, 1);
        var options = new SimOptions { Technique = technique, Memory = MemoryVirtualization.Shadow };
        using var engine = new SimEngine(options);
        var run = vm.Run(engine);

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        Assert.Equal(8, port.Reads);
        Assert.Equal(0xA003_A002_A001_A000UL, vm.Memory.ReadUInt64(new GuestPhysical(Results)));
        Assert.Equal(0xA007_A006_A005_A004UL, vm.Memory.ReadUInt64(new GuestPhysical(Results + 8)));
    }
}
