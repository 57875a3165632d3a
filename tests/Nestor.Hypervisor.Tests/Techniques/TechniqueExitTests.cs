using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.BinaryTranslation;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Hypervisor.Techniques.Paravirtual;
using Nestor.Hypervisor.Techniques.TrapAndEmulate;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests;

/// <summary>Each technique and memory virtualization driven with hand-made exits, as the CPU raises them: the action
/// the VMM answers with, the state it changes and what it counts.</summary>
public class TechniqueExitTests
{
    [Theory]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Nested, typeof(HardwareAssistTechnique), typeof(NestedMemoryVirtualization))]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Shadow, typeof(HardwareAssistTechnique), typeof(ShadowMemoryVirtualization))]
    [InlineData(Technique.TrapAndEmulate, MemoryVirtualization.Shadow, typeof(TrapAndEmulateTechnique), typeof(ShadowMemoryVirtualization))]
    [InlineData(Technique.BinaryTranslation, MemoryVirtualization.Shadow, typeof(BinaryTranslationTechnique), typeof(ShadowMemoryVirtualization))]
    [InlineData(Technique.Paravirtual, MemoryVirtualization.Shadow, typeof(ParavirtualTechnique), typeof(ShadowMemoryVirtualization))]
    public void The_vmm_holds_the_class_of_its_technique_and_memory_virtualization(Technique technique, MemoryVirtualization memory,
        Type techniqueClass, Type memoryClass)
    {
        using var bench = MonitorBench.Create(technique, memory);
        Assert.IsType(techniqueClass, bench.Monitor.CpuVirtualization);
        Assert.IsType(memoryClass, bench.Monitor.Memory);
        Assert.Equal(technique, bench.Monitor.Technique);
        Assert.Equal(memory, bench.Monitor.Memory.Kind);
        Assert.Equal(memory == MemoryVirtualization.Shadow, bench.Monitor.Shadow is not null);
        Assert.Equal(technique != Technique.HardwareAssist, bench.Monitor.RingCompression is not null);
        Assert.Equal(technique == Technique.BinaryTranslation, bench.Monitor.RingCompression?.Translated ?? false);
    }

    [Theory]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Nested)]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Shadow)]
    [InlineData(Technique.TrapAndEmulate, MemoryVirtualization.Shadow)]
    [InlineData(Technique.BinaryTranslation, MemoryVirtualization.Shadow)]
    [InlineData(Technique.Paravirtual, MemoryVirtualization.Shadow)]
    public void Each_technique_and_memory_virtualization_sets_its_own_controls(Technique technique, MemoryVirtualization memory)
    {
        using var bench = MonitorBench.Create(technique, memory);
        var c = bench.Monitor.Vmcs.Controls;
        bool hardware = technique == Technique.HardwareAssist, shadow = memory == MemoryVirtualization.Shadow;
        Assert.True(c.ExternalInterruptExiting);
        Assert.Equal(hardware, c.HltExiting);
        Assert.Equal(hardware, c.IoExiting);
        Assert.Equal(hardware, c.MsrExiting);
        Assert.Equal(!hardware, c.Intercepts((int)ExceptionVector.GeneralProtection));
        Assert.Equal(shadow, c.Intercepts((int)ExceptionVector.PageFault));
        Assert.Equal(shadow, c.Cr3LoadExiting);
        Assert.Equal(shadow && hardware, c.Cr3StoreExiting);
        Assert.Equal(shadow, c.Cr0Cr4WriteExiting);
        Assert.Equal(shadow, c.InvlpgExiting);
        Assert.Equal(!shadow, c.NestedPaging);
        Assert.Equal(shadow ? 0UL : bench.Monitor.Memory.NestedTable!.Root.Value, c.NestedRoot);
        Assert.Equal(!shadow, bench.Cpu.Mmu.NestedPaging);
    }

    [Fact]
    public void Hardware_assist_completes_cpuid_hlt_msr_and_io_exits_and_counts_them_by_reason()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Nested);
        var exits = bench.Vm.Exits;
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.Cpuid, 2));
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.Hlt, 1));
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.Rdmsr, 2));
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.Wrmsr, 2));
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.Wrmsr, 2));
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.IoInstruction, 1));
        Assert.Equal(1, exits.Count(VmExitReason.Cpuid));
        Assert.Equal(1, exits.Count(VmExitReason.Halt));
        Assert.Equal(1, exits.Count(VmExitReason.MsrRead));
        Assert.Equal(2, exits.Count(VmExitReason.MsrWrite));
        // Port I/O is recorded by the device bus, by port, not by the VMM.
        Assert.Equal(0, exits.Count(VmExitReason.Other));
        Assert.Equal(6, bench.Monitor.Vmcs.TotalExits);
        Assert.Equal(1, bench.Monitor.Vmcs.Exits(ExitReason.IoInstruction));
    }

    [Fact]
    public void A_vmcall_is_no_hypercall_under_hardware_assist()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Nested);
        bench.Cpu.Registers[0] = (ulong)Hypercall.SetInterrupts;
        ulong rip = bench.Cpu.Rip;
        Assert.Equal(VmExitAction.Complete, bench.Exit(ExitReason.Vmcall, 3));
        Assert.Equal(0, bench.Monitor.Hypercalls);
        Assert.Equal(rip, bench.Cpu.Rip);
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.Other));
        Assert.Equal(0, bench.Vm.Exits.Count(VmExitReason.Hypercall));
    }

    [Theory]
    [InlineData(Technique.TrapAndEmulate)]
    [InlineData(Technique.Paravirtual)]
    public void A_gp_exit_on_the_deprivileged_kernels_cli_is_emulated_on_its_virtual_if(Technique technique)
    {
        using var bench = MonitorBench.Create(technique, MemoryVirtualization.Shadow, a =>
        {
            a.cli();
            a.hlt();
        });
        var cpu = bench.Cpu;
        cpu.Rflags |= FlagBits.Interrupt;
        ulong rip = cpu.Rip;
        Assert.Equal(MonitorBench.CodeAddress, rip);
        Assert.Equal(0, cpu.PrivilegeLevel); // the kernel's own view: ring compression runs it in ring 1
        var exit = new VmExit { Reason = ExitReason.ExceptionOrNmi, Vector = ExceptionVector.GeneralProtection, HasErrorCode = true };
        Assert.Equal(VmExitAction.Skip, bench.Exit(ref exit));
        Assert.Equal(0UL, cpu.Rflags & FlagBits.Interrupt);
        Assert.Equal(rip + 1, cpu.Rip); // CLI is one byte; the emulation moved past it
        Assert.Equal(1, bench.Monitor.PrivilegedInstructionTraps);
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.Exception));
        // The emulation's instruction fetch went through the shadows, which the VMM filled on the way (a hidden fault).
        Assert.True(bench.Monitor.Shadow!.HiddenFaults >= 1);
    }

    [Fact]
    public void A_gp_exit_on_mov_to_cr3_loads_cr3_and_switches_the_shadow_address_space()
    {
        using var bench = MonitorBench.Create(Technique.TrapAndEmulate, MemoryVirtualization.Shadow, a =>
        {
            a.mov(rax, cr3);
            a.mov(cr3, rax);
            a.hlt();
        });
        var cpu = bench.Cpu;
        ulong guestCr3 = cpu.Cr3;
        var exit = new VmExit { Reason = ExitReason.ExceptionOrNmi, Vector = ExceptionVector.GeneralProtection, HasErrorCode = true };
        Assert.Equal(VmExitAction.Skip, bench.Exit(ref exit)); // MOV RAX, CR3: the guest reads its own CR3
        Assert.Equal(guestCr3, cpu.Registers[0]);
        long switches = bench.Monitor.Shadow!.AddressSpaceSwitches;
        exit = new VmExit { Reason = ExitReason.ExceptionOrNmi, Vector = ExceptionVector.GeneralProtection, HasErrorCode = true };
        Assert.Equal(VmExitAction.Skip, bench.Exit(ref exit)); // MOV CR3, RAX
        Assert.Equal(2, bench.Monitor.PrivilegedInstructionTraps);
        Assert.Equal(switches + 1, bench.Monitor.Shadow.AddressSpaceSwitches);
        Assert.Equal(guestCr3, cpu.Cr3);
        Assert.NotNull(bench.Monitor.Shadow.RootFor(guestCr3));
    }

    [Fact]
    public void A_gp_exit_from_user_mode_is_the_guests_own_and_injected()
    {
        using var bench = MonitorBench.Create(Technique.TrapAndEmulate, MemoryVirtualization.Shadow);
        var state = bench.Cpu.SaveState();
        state.Cs.Selector = 0x2B; // a user code selector: RPL 3
        bench.Cpu.LoadState(in state);
        var exit = new VmExit { Reason = ExitReason.ExceptionOrNmi, Vector = ExceptionVector.GeneralProtection, HasErrorCode = true };
        Assert.Equal(VmExitAction.Inject, bench.Exit(ref exit));
        Assert.Equal(0, bench.Monitor.PrivilegedInstructionTraps);
        Assert.Equal(ExceptionVector.GeneralProtection, exit.Vector);
    }

    [Fact]
    public void Shadow_paging_fills_a_hidden_fault_and_reflects_a_true_one()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Shadow);
        var shadow = bench.Monitor.Shadow!;
        // The kernel's code page is mapped by the guest's tables but not yet by the shadow: a hidden fault.
        var hidden = new VmExit
        {
            Reason = ExitReason.ExceptionOrNmi,
            Vector = ExceptionVector.PageFault,
            HasErrorCode = true,
            ErrorCode = 0x10,
            GuestLinear = MonitorBench.CodeAddress,
            Qualification = MonitorBench.CodeAddress,
        };
        Assert.Equal(VmExitAction.Resume, bench.Exit(ref hidden));
        Assert.Equal(1, shadow.HiddenFaults);
        Assert.Equal(0, shadow.TrueFaults);
        // An address the guest's own tables do not map: a true fault, the guest's, injected with CR2 = the address.
        const ulong unmapped = 0x0000_7F00_0000_0000;
        var real = new VmExit
        {
            Reason = ExitReason.ExceptionOrNmi,
            Vector = ExceptionVector.PageFault,
            HasErrorCode = true,
            ErrorCode = 0,
            GuestLinear = unmapped,
            Qualification = unmapped,
        };
        Assert.Equal(VmExitAction.Inject, bench.Exit(ref real));
        Assert.Equal(1, shadow.TrueFaults);
        Assert.Equal(ExceptionVector.PageFault, real.Vector);
        Assert.Equal(unmapped, real.GuestLinear);
        Assert.Equal(2, bench.Vm.Exits.Count(VmExitReason.Exception));
        Assert.Empty(bench.Monitor.Memory.Verify(bench.Cpu));
    }

    [Fact]
    public void An_invlpg_exit_reaches_shadow_paging_and_a_cr3_load_exit_switches_address_space()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Shadow);
        var shadow = bench.Monitor.Shadow!;
        var cpu = bench.Cpu;
        long switches = shadow.AddressSpaceSwitches;
        cpu.Registers[1] = cpu.Cr3;
        // MOV CR3, RCX: control register 3, access type 0 (MOV to CR), register 1 (SDM Vol. 3C Table 28-3).
        var load = new VmExit { Reason = ExitReason.ControlRegisterAccess, Qualification = 3 | (1 << 8), InstructionLength = 3 };
        Assert.Equal(VmExitAction.Complete, bench.Exit(ref load));
        Assert.Equal(switches + 1, shadow.AddressSpaceSwitches);
        var invlpg = new VmExit { Reason = ExitReason.Invlpg, Qualification = MonitorBench.CodeAddress, InstructionLength = 3 };
        Assert.Equal(VmExitAction.Complete, bench.Exit(ref invlpg));
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.ControlRegisterAccess));
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.Invlpg));
    }

    [Fact]
    public void An_ept_violation_maps_guest_ram_and_a_fetch_from_no_ram_is_a_machine_check()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Nested);
        const ulong page = 0x40_0000;
        Assert.False(bench.Map.TryHostPhysical(page, out _));
        var exit = new VmExit { Reason = ExitReason.EptViolation, GuestPhysical = page + 0x18, Qualification = VmExit.QualificationWrite };
        Assert.Equal(VmExitAction.Resume, bench.Exit(ref exit));
        Assert.True(bench.Map.TryHostPhysical(page, out _));
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.NestedPageFault));

        const ulong beyondRam = 0x1_0000_0000;
        var fetch = new VmExit { Reason = ExitReason.EptViolation, GuestPhysical = beyondRam, Qualification = VmExit.QualificationFetch };
        Assert.Equal(VmExitAction.Inject, bench.Exit(ref fetch));
        Assert.Equal(ExceptionVector.MachineCheck, fetch.Vector);
        var read = new VmExit { Reason = ExitReason.EptViolation, GuestPhysical = beyondRam, Qualification = VmExit.QualificationRead };
        Assert.Equal(VmExitAction.Resume, bench.Exit(ref read)); // mapped into the device window
        Assert.Equal(3, bench.Vm.Exits.Count(VmExitReason.NestedPageFault));
    }

    [Fact]
    public void An_ept_violation_the_mapping_does_not_cure_stops_the_guest_with_a_message()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Nested);
        VmExitAction action = VmExitAction.Resume;
        for (int i = 0; i < 100 && action == VmExitAction.Resume; i++)
        {
            var exit = new VmExit { Reason = ExitReason.EptViolation, GuestPhysical = 0x40_0000, Qualification = VmExit.QualificationRead };
            action = bench.Exit(ref exit);
        }
        Assert.Equal(VmExitAction.Stop, action);
        Assert.Contains("keeps causing EPT violations", bench.Monitor.StopMessage);
    }

    [Fact]
    public void An_ept_violation_under_shadow_paging_stops_the_guest()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Shadow);
        var exit = new VmExit { Reason = ExitReason.EptViolation, GuestPhysical = 0x40_0000 };
        Assert.Equal(VmExitAction.Stop, bench.Exit(ref exit));
        Assert.Contains("without nested paging", bench.Monitor.StopMessage);
    }

    [Fact]
    public void An_interrupt_the_guest_cannot_take_opens_a_window_and_is_injected_when_it_can()
    {
        using var bench = MonitorBench.Create(Technique.HardwareAssist, MemoryVirtualization.Nested);
        var cpu = bench.Cpu;
        Assert.Equal(VmExitAction.Resume, bench.Exit(ExitReason.ExternalInterrupt)); // nothing requested: nothing to inject
        cpu.Apic.Write(0xF0, 0x1FF, 0); // software-enable the local APIC (SDM Vol. 3A §10.9)
        Assert.True(cpu.Apic.RequestInterrupt(0x30, levelTriggered: false));
        cpu.Rflags &= ~FlagBits.Interrupt;
        Assert.Equal(VmExitAction.Resume, bench.Exit(ExitReason.ExternalInterrupt));
        Assert.Equal(1, bench.Monitor.InterruptWindowsRequested);
        Assert.True(bench.Monitor.Vmcs.Controls.InterruptWindowExiting);
        Assert.True(bench.Monitor.InterruptPending);
        cpu.Rflags |= FlagBits.Interrupt;
        var window = new VmExit { Reason = ExitReason.InterruptWindow };
        Assert.Equal(VmExitAction.Inject, bench.Exit(ref window));
        Assert.Equal((ExceptionVector)0x30, window.Vector);
        Assert.True(window.ExternalInterrupt);
        Assert.Equal(1, bench.Monitor.InjectedInterrupts);
        Assert.False(bench.Monitor.InterruptPending);
        Assert.Equal(2, bench.Vm.Exits.Count(VmExitReason.ExternalInterrupt));
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.InterruptWindow));
    }

    [Fact]
    public void A_translator_callout_on_a_page_table_write_is_performed_by_the_vmm_and_counted()
    {
        using var bench = MonitorBench.Create(Technique.BinaryTranslation, MemoryVirtualization.Shadow, a =>
        {
            a.mov(__qword_ptr[r8], r9);
            a.hlt();
        });
        var cpu = bench.Cpu;
        // An unused entry of the guest's top-level table (shadowed since VM entry, so write-protected): a value without
        // the present bit, so the write changes no translation.
        ulong entry = (cpu.Cr3 & ~0xFFFUL) + 300 * 8;
        const ulong value = 0x1234_5000;
        cpu.Registers[8] = entry; // the loader's tables are identity-mapped
        cpu.Registers[9] = value;
        // The CPU fetched the instruction before calling out: the shadow maps its page (a hidden fault filled it).
        var fetch = new VmExit
        {
            Reason = ExitReason.ExceptionOrNmi,
            Vector = ExceptionVector.PageFault,
            HasErrorCode = true,
            ErrorCode = 0x10,
            GuestLinear = cpu.Rip,
            Qualification = cpu.Rip,
        };
        Assert.Equal(VmExitAction.Resume, bench.Exit(ref fetch));
        var exit = new VmExit { Reason = ExitReason.TranslatorCallout, InstructionLength = 3, GuestLinear = cpu.Rip };
        var action = bench.Exit(ref exit);
        Assert.Equal(VmExitAction.Skip, action);
        Assert.Equal(value, bench.Vm.Memory.ReadUInt64(new Nestor.Machine.Addresses.GuestPhysical(entry)));
        Assert.Equal(1, bench.Monitor.Callouts);
        Assert.Equal(1, bench.Monitor.Shadow!.CalloutWrites);
        Assert.Equal(1, bench.Vm.Exits.Count(VmExitReason.Callout));
        Assert.Empty(bench.Monitor.Memory.Verify(cpu));
    }
}
