using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.ServiceVm;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.ServiceVm;

/// <summary>The service VM's VMM side with two Iced-assembled ring-0 guests on one host: the user VM grants frames
/// and notifies; the service VM takes the event, copies the granted frame, writes through a writable grant, tries
/// forged grants (read-only for a write, another domain's, not granted, past the table, past the frame), which are
/// refused and counted, then notifies back, and the user VM takes the completion interrupt.</summary>
public class ServiceVmHostTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const ulong Table = 0x300000, Readable = 0x310000, Writable = 0x320000, OtherDomains = 0x330000, Secret = 0x340000;
    private const ulong Idt = 0x190000, Results = 0x191000, Scratch = 0x192000;
    private const ulong Local = 0x400000, Forged = 0x402000, Descriptor = 0x403000;
    private const int Vector = 0x50;
    private const ushort OtherDomain = 7;
    private const ulong Pattern = 0x1122_3344_5566_7788, SecretValue = 0x5EC2_E75E_C2E7_5EC2;

    // Grant references the user VM makes, and the forged ones the service VM tries.
    private const uint ReadOnlyReference = 0, WritableReference = 1, OtherDomainReference = 2, NotGrantedReference = 3, Entries = 4;
    private const uint PastTableReference = 99;

    // Result slots (8 bytes each, at Results) of the user VM.
    private const int UserCpuid = 0, UserSetup = 1, UserNotify = 2, UserInterrupts = 3;
    // ... and of the service VM.
    private const int ServiceCpuid = 0, ServiceTake = 1, CopyIn = 2, WriteReadOnly = 3, OtherDomainCopy = 4, NotGrantedCopy = 5,
        PastTableCopy = 6, PastFrameCopy = 7, CopyOut = 8, BadChannel = 9, ServiceNotify = 10;

    private static void Hypercall(Assembler a, SplitDriverHypercall number, ulong rdiValue = 0, ulong rsiValue = 0)
    {
        a.mov(rax, (ulong)number);
        a.mov(rdi, rdiValue);
        a.mov(rsi, rsiValue);
        a.vmcall();
    }

    private static void Store(Assembler a, int slot) => a.mov(__qword_ptr[r15 + slot * 8], rax);

    private static void Cpuid(Assembler a, int slot)
    {
        a.mov(eax, 0x4000_0001);
        a.xor(ecx, ecx);
        a.cpuid();
        Store(a, slot);
    }

    private static void Grant(Assembler a, uint reference, ushort flags, ushort domain, ulong frameAddress)
    {
        a.mov(rdi, Table + reference * (ulong)GrantEntry.Size);
        a.mov(__word_ptr[rdi], flags);
        a.mov(__word_ptr[rdi + 2], domain);
        a.mov(__dword_ptr[rdi + 4], (uint)(frameAddress >> 12));
    }

    private static void DebugExit(Assembler a)
    {
        a.mov(dx, DebugExitPort.Port);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();
    }

    /// <summary>The user VM: grants, sets up its table, the event channel's interrupt (edge, through the I/O APIC),
    /// notifies, and halts until the completion interrupt has come.</summary>
    private static byte[] UserGuest(bool halts = true) => GuestAssembler.Assemble(a =>
    {
        var handler = a.CreateLabel();
        var start = a.CreateLabel();
        var wait = a.CreateLabel();
        var done = a.CreateLabel();
        a.jmp(start);
        a.Label(ref handler);
        a.inc(__qword_ptr[r15 + UserInterrupts * 8]);
        a.mov(__dword_ptr[rbx + 0xB0], 0);                      // EOI
        a.iretq();

        a.Label(ref start);
        a.mov(r15, Results);
        a.mov(rbx, 0xFEE0_0000UL);
        a.mov(rsi, 0xFEC0_0000UL);
        GuestInterruptSetup.Emit(a, Idt, Vector, handler, Scratch, rbx);
        GuestInterruptSetup.RouteIoApicPin(a, rsi, ServiceVmHost.EventChannelGsi, Vector); // edge-triggered, active high, unmasked

        Cpuid(a, UserCpuid);
        // The data: a pattern at both ends of the read-only frame, a secret in a frame never granted.
        a.mov(rax, Pattern);
        a.mov(rdi, Readable);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(__qword_ptr[rdi + 0xFF8], rax);
        a.mov(rax, SecretValue);
        a.mov(rdi, Secret);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(rdi, OtherDomains);
        a.mov(__qword_ptr[rdi], rax);
        Grant(a, ReadOnlyReference, GrantEntry.PermitAccess | GrantEntry.ReadOnly, 0, Readable);
        Grant(a, WritableReference, GrantEntry.PermitAccess, 0, Writable);
        Grant(a, OtherDomainReference, GrantEntry.PermitAccess, OtherDomain, OtherDomains);
        Grant(a, NotGrantedReference, 0, 0, Secret);
        Hypercall(a, SplitDriverHypercall.GrantTableSetup, Table, Entries);
        Store(a, UserSetup);
        Hypercall(a, SplitDriverHypercall.EventNotify, 0);
        Store(a, UserNotify);
        a.Label(ref wait);
        a.cmp(__qword_ptr[r15 + UserInterrupts * 8], 0);
        a.jne(done);
        a.sti();                                                // (again: a ring-1 kernel's IRETQ cannot set IF)
        if (halts)
        {
            a.hlt();
        }
        a.jmp(wait);
        a.Label(ref done);
        a.cli();
        DebugExit(a);
    });

    private static void Copy(Assembler a, uint reference, bool toGranted, ulong local, uint offset, uint length, int slot)
    {
        a.mov(rdi, Descriptor);
        a.mov(__dword_ptr[rdi], reference);
        a.mov(__dword_ptr[rdi + 4], toGranted ? GrantCopy.ToGrantedFrame : 0);
        a.mov(rax, local);
        a.mov(__qword_ptr[rdi + 8], rax);
        a.mov(__dword_ptr[rdi + 16], offset);
        a.mov(__dword_ptr[rdi + 20], length);
        a.mov(rax, (ulong)SplitDriverHypercall.GrantCopy);
        a.vmcall();
        Store(a, slot);
    }

    /// <summary>The service VM: ready (halts with interrupts off: it polls EVENT_TAKE), then serves the one request.</summary>
    private static byte[] ServiceGuest(bool halts = true) => GuestAssembler.Assemble(a =>
    {
        var idle = a.CreateLabel();
        a.cli();
        a.mov(r15, Results);
        Cpuid(a, ServiceCpuid);
        a.hlt();                                                // ready: the host runs the user VM
        Hypercall(a, SplitDriverHypercall.EventTake);
        Store(a, ServiceTake);
        Copy(a, ReadOnlyReference, toGranted: false, Local, 0, 4096, CopyIn);
        Copy(a, ReadOnlyReference, toGranted: true, Local, 0, 8, WriteReadOnly);
        Copy(a, OtherDomainReference, toGranted: false, Forged, 0, 8, OtherDomainCopy);
        Copy(a, NotGrantedReference, toGranted: false, Forged, 0, 8, NotGrantedCopy);
        Copy(a, PastTableReference, toGranted: false, Forged, 0, 8, PastTableCopy);
        Copy(a, WritableReference, toGranted: true, Local, 0xF00, 0x200, PastFrameCopy);
        Copy(a, WritableReference, toGranted: true, Local, 0, 4096, CopyOut);
        Hypercall(a, SplitDriverHypercall.EventNotify, SplitDriverDomain.Channels);
        Store(a, BadChannel);
        Hypercall(a, SplitDriverHypercall.EventNotify, 0);
        Store(a, ServiceNotify);
        a.Label(ref idle);
        if (halts)
        {
            a.hlt();
        }
        a.jmp(idle);
    });

    private static VmConfig Config(string name, byte[] code, TimeSpan? timeout = null) => new()
    {
        Kernel = GuestAssembler.Flat(name, code),
        MemoryBytes = 16UL << 20,
        SerialOutput = Stream.Null,
        Timeout = timeout ?? TimeSpan.FromSeconds(60),
    };

    private static ulong Slot(Vm vm, int slot) => vm.Memory.ReadUInt64(new GuestPhysical(Results + (ulong)slot * 8));

    public static TheoryData<Technique, MemoryVirtualization> Techniques() => new()
    {
        { Technique.HardwareAssist, MemoryVirtualization.Nested },
        { Technique.HardwareAssist, MemoryVirtualization.Shadow },
        { Technique.Paravirtual, MemoryVirtualization.Shadow },
        { Technique.TrapAndEmulate, MemoryVirtualization.Shadow },
    };

    [Theory]
    [MemberData(nameof(Techniques))]
    public void The_service_vm_copies_only_what_the_user_vm_granted_and_the_completion_interrupt_reaches_it(Technique technique, MemoryVirtualization memory)
    {
        using var host = Host.ForGuestMemory(32UL << 20);
        using var user = Vm.Create(Config("user", UserGuest()), host);
        using var service = Vm.Create(Config("service", ServiceGuest()), host);
        using var pair = new ServiceVmHost(user, service, new SimOptions { Technique = technique, Memory = memory });

        var run = pair.Run();

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0,
            $"{run.Outcome.Kind}: {run.Outcome.Message}; service: {run.ServiceOutcome?.Message}");
        // Both VMs see the split driver announced.
        Assert.NotEqual(0UL, Slot(user, UserCpuid) & SplitDriverDomain.CpuidBit);
        Assert.NotEqual(0UL, Slot(service, ServiceCpuid) & SplitDriverDomain.CpuidBit);
        Assert.Equal(0UL, Slot(user, UserSetup));
        Assert.Equal(0UL, Slot(user, UserNotify));
        Assert.Equal(1UL, Slot(service, ServiceTake));                // channel 0 pending
        Assert.Equal(0UL, Slot(service, CopyIn));
        Assert.Equal(0UL, Slot(service, CopyOut));
        foreach (int forged in new[] { WriteReadOnly, OtherDomainCopy, NotGrantedCopy, PastTableCopy, PastFrameCopy, BadChannel })
        {
            Assert.Equal(SplitDriverDomain.Refused, Slot(service, forged));
        }
        // The read-only frame reached the service VM whole; its copy went back through the writable grant.
        Assert.Equal(user.Memory.Span(new GuestPhysical(Readable), 4096).ToArray(), service.Memory.Span(new GuestPhysical(Local), 4096).ToArray());
        Assert.Equal(Pattern, user.Memory.ReadUInt64(new GuestPhysical(Writable + 0xFF8)));
        // Nothing of the secret or of another domain's frame reached the service VM; the read-only frame is unchanged.
        Assert.All(service.Memory.Span(new GuestPhysical(Forged), 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Pattern, user.Memory.ReadUInt64(new GuestPhysical(Readable)));
        var d = pair.ServiceDomain;
        foreach (var cause in new[] { GrantRefusal.ReadOnly, GrantRefusal.OtherDomain, GrantRefusal.NotGranted, GrantRefusal.NoSuchReference, GrantRefusal.OutOfRange })
        {
            Assert.Equal(1, d.RefusedGrants(cause));
        }
        Assert.Equal(1, d.RefusedArguments);
        Assert.Equal(2, d.GrantCopies);
        Assert.Equal(2 * 4096, d.GrantCopyBytes);
        // The per-step counts: one notify each way, one completion interrupt taken, one switch each way.
        var counters = run.Counters.ToDictionary(c => c.Name, c => c.Value);
        Assert.Equal(Slot(user, UserInterrupts), counters["service_vm_completion_interrupts"]);
        Assert.Equal(1UL, counters["service_vm_completion_interrupts"]);
        Assert.Equal((ulong)pair.UserDomain.Notifies, counters["service_vm_notify_exits"]);
        Assert.Equal(1UL, counters["service_vm_notify_exits"]);
        Assert.Equal(1UL, counters["service_vm_completion_notifies"]);
        Assert.Equal(2UL, counters["service_vm_switches"]);
        Assert.Equal((ulong)d.RefusedGrantsTotal, counters["service_vm_refused_grants"]);
        Assert.True(counters["service_vm_service_instructions"] > 0 && counters["service_vm_user_instructions"] > 0);
        // Every split-driver call exited as a hypercall.
        Assert.Equal(d.Hypercalls, service.Exits.Count(VmExitReason.Hypercall));
        output.WriteLine($"{technique}/{memory}: " + string.Join(", ", run.Counters.Select(c => $"{c.Name}={c.Value}")));
    }

    [Fact]
    public void Hostile_arguments_are_refused_and_counted_without_touching_host_memory()
    {
        using var host = Host.ForGuestMemory(32UL << 20);
        const ulong OutsideRam = 0x10_0000_0000;
        using var user = Vm.Create(Config("user", GuestAssembler.Assemble(a =>
        {
            a.mov(r15, Results);
            Hypercall(a, SplitDriverHypercall.GrantTableSetup, Table, GrantTable.MaximumEntries + 1);
            Store(a, 0);
            Hypercall(a, SplitDriverHypercall.GrantTableSetup, OutsideRam, 1);
            Store(a, 1);
            Hypercall(a, SplitDriverHypercall.GrantTableSetup, Table + 4, 1);
            Store(a, 2);
            Hypercall(a, SplitDriverHypercall.GrantCopy, OutsideRam);
            Store(a, 3);
            Grant(a, 0, GrantEntry.PermitAccess, 0, OutsideRam);       // a grant of a frame the user VM does not have
            Hypercall(a, SplitDriverHypercall.GrantTableSetup, Table, 1);
            Store(a, 5);
            Hypercall(a, SplitDriverHypercall.EventNotify, 0);
            a.cli();
            a.hlt();                                                    // the service VM's turn
            DebugExit(a);
        })), host);
        using var service = Vm.Create(Config("service", GuestAssembler.Assemble(a =>
        {
            a.cli();
            a.mov(r15, Results);
            a.hlt();
            Copy(a, 0, toGranted: false, Local, 0, 8, 0);              // the frame outside the user VM's RAM
            Hypercall(a, SplitDriverHypercall.EventNotify, 0);
            a.hlt();
        })), host);
        using var pair = new ServiceVmHost(user, service, new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });

        var run = pair.Run();

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit, run.Outcome.Message);
        for (int slot = 0; slot < 4; slot++)
        {
            Assert.Equal(SplitDriverDomain.Refused, Slot(user, slot));
        }
        Assert.Equal(0UL, Slot(user, 5));
        Assert.Equal(4, pair.UserDomain.RefusedArguments);
        Assert.Equal(SplitDriverDomain.Refused, Slot(service, 0));
        Assert.Equal(1, pair.ServiceDomain.RefusedGrants(GrantRefusal.OutOfRange));
        Assert.Equal(0, pair.ServiceDomain.GrantCopies);
    }

    [Theory]
    [InlineData(Technique.HardwareAssist)]
    [InlineData(Technique.Paravirtual)]
    public void A_notify_ends_the_turn_of_a_vm_that_never_halts(Technique technique)
    {
        using var host = Host.ForGuestMemory(32UL << 20);
        using var user = Vm.Create(Config("user", UserGuest(halts: false)), host);
        using var service = Vm.Create(Config("service", ServiceGuest(halts: false)), host);
        var memory = technique == Technique.HardwareAssist ? MemoryVirtualization.Nested : MemoryVirtualization.Shadow;
        using var pair = new ServiceVmHost(user, service, new SimOptions { Technique = technique, Memory = memory });

        var run = pair.Run();

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit, $"{run.Outcome.Kind}: {run.Outcome.Message}; service: {run.ServiceOutcome?.Message}");
        Assert.Equal(1UL, Slot(user, UserInterrupts));
        Assert.Equal(0UL, Slot(service, CopyOut));
        Assert.Equal(Pattern, user.Memory.ReadUInt64(new GuestPhysical(Writable)));
        var counters = run.Counters.ToDictionary(c => c.Name, c => c.Value);
        Assert.Equal(2UL, counters["service_vm_switches"]);
        Assert.Equal(1UL, counters["service_vm_completion_interrupts"]);
    }

    [Fact]
    public void The_pair_s_timeout_stops_the_turn_under_way()
    {
        using var host = Host.ForGuestMemory(32UL << 20);
        using var user = Vm.Create(Config("user", GuestAssembler.Assemble(a =>
        {
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.jmp(spin);
        }), TimeSpan.FromMilliseconds(300)), host);
        using var service = Vm.Create(Config("service", ServiceGuest()), host);
        using var pair = new ServiceVmHost(user, service, new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        Assert.Equal(VmOutcomeKind.Timeout, pair.Run().Outcome.Kind);
    }

    [Fact]
    public void The_split_driver_numbers_are_those_of_the_guests_header()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "guest", "include", "nestoros.h")))
        {
            directory = directory.Parent;
        }
        Assert.NotNull(directory);
        string header = File.ReadAllText(Path.Combine(directory.FullName, "guest", "include", "nestoros.h"));
        var defined = System.Text.RegularExpressions.Regex.Matches(header, @"^#define\s+SPLIT_HC_([A-Z_]+)\s+(\d+)", System.Text.RegularExpressions.RegexOptions.Multiline)
            .ToDictionary(m => m.Groups[1].Value, m => ulong.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
        var expected = Enum.GetValues<SplitDriverHypercall>().ToDictionary(
            h => string.Concat(h.ToString().Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + c : char.ToUpperInvariant(c).ToString())), h => (ulong)h);
        Assert.Equal(expected.OrderBy(e => e.Key), defined.OrderBy(d => d.Key));
        var feature = System.Text.RegularExpressions.Regex.Match(header, @"NESTOR_FEATURE_SPLIT_DRIVER\s+\(1u << (\d+)\)");
        Assert.Equal(SplitDriverDomain.CpuidBit, 1u << int.Parse(feature.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void A_vm_without_a_service_vm_is_not_shown_the_split_driver()
    {
        using var vm = Vm.Create(Config("alone", GuestAssembler.Assemble(a =>
        {
            a.mov(r15, Results);
            Cpuid(a, 0);
            DebugExit(a);
        })));
        using var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
        Assert.Equal(0UL, Slot(vm, 0) & SplitDriverDomain.CpuidBit);
    }

    [Fact]
    public void Without_a_vmm_there_is_no_service_vm()
    {
        using var host = Host.ForGuestMemory(32UL << 20);
        using var user = Vm.Create(Config("user", UserGuest()), host);
        using var service = Vm.Create(Config("service", ServiceGuest()), host);
        var e = Assert.Throws<BadInputException>(() => new ServiceVmHost(user, service, new SimOptions()));
        Assert.Contains("native", e.Message);
    }

    [Fact]
    public void A_user_vm_that_never_notifies_ends_the_pair_as_a_deadlock_not_a_hang()
    {
        using var host = Host.ForGuestMemory(32UL << 20);
        using var user = Vm.Create(Config("user", GuestAssembler.Assemble(a =>
        {
            a.cli();
            a.hlt();
        })), host);
        using var service = Vm.Create(Config("service", ServiceGuest()), host);
        using var pair = new ServiceVmHost(user, service, new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        var run = pair.Run();
        Assert.Equal(VmOutcomeKind.Halted, run.Outcome.Kind);
        Assert.Contains("no event pending", run.Outcome.Message);
        Assert.Equal(0UL, run.Counters.Single(c => c.Name == "service_vm_switches").Value);
    }
}
