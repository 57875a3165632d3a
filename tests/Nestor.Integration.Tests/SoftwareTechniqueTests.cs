using System.Text.RegularExpressions;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Virtualization;

namespace Nestor.Integration.Tests;

/// <summary>The software techniques on the software machine: trap-and-emulate (the kernel in ring 1) and binary
/// translation, both over shadow paging, against the same guest natively.</summary>
public class SoftwareTechniqueTests(NativeWorkload native) : IClassFixture<NativeWorkload>
{
    private static (VmOutcome Outcome, string Serial, SimEngine Engine) Run(Technique technique)
    {
        var engine = new SimEngine(new SimOptions { Technique = technique });
        var (outcome, serial, vm) = SimEngineTests.RunInProcess(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf), engine: engine);
        vm.Dispose();
        return (outcome, serial, engine);
    }

    /// <summary>Trap-and-emulate runs every program as bare metal does except <c>sensitive</c>: the sensitive but
    /// unprivileged instructions the ring-1 kernel executes are not caught, and report ring 1 and the VMM's registers.
    /// That is the technique's documented failure on x86 (Robin &amp; Irvine), not a bug.</summary>
    [Fact]
    public void Trap_and_emulate_gives_native_results_except_the_sensitive_instructions()
    {
        var (outcome, serial, engine) = Run(Technique.TrapAndEmulate);
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        var expected = SimEngineTests.ResultsWithoutTimings(native.Serial);
        var actual = SimEngineTests.ResultsWithoutTimings(serial);
        Assert.Equal(expected.Where(l => !l.StartsWith("RESULT sensitive ", StringComparison.Ordinal)),
            actual.Where(l => !l.StartsWith("RESULT sensitive ", StringComparison.Ordinal)));
        Assert.Equal("RESULT sensitive user_cpl=3 kernel_cpl=0 kernel_popf_cleared_if=1 sgdt_limit=55 sgdt_base=112520 sidt_limit=4095 " +
                     "sidt_base=1114a0 sldt=0 str=28 smsw=33", expected.Single(l => l.StartsWith("RESULT sensitive ", StringComparison.Ordinal)));
        // Ring 1, POPF unable to clear IF, and the VMM's GDT, IDT, task register and CR0 (see RingCompression).
        Assert.Equal("RESULT sensitive user_cpl=3 kernel_cpl=1 kernel_popf_cleared_if=0 sgdt_limit=127 sgdt_base=fffffe0000000000 " +
                     "sidt_limit=4095 sidt_base=fffffe0000001000 sldt=0 str=40 smsw=3b", actual.Single(l => l.StartsWith("RESULT sensitive ", StringComparison.Ordinal)));
        var monitor = engine.Monitor!;
        Assert.True(monitor.PrivilegedInstructionTraps > 100, $"{monitor.PrivilegedInstructionTraps} privileged instructions trapped");
        Assert.True(monitor.RingCompression!.UncaughtSensitive > 0);
        Assert.Equal(0, monitor.RingCompression.Callouts);
        Assert.True(engine.Vmcs!.Exits(ExitReason.ExceptionOrNmi) >= monitor.PrivilegedInstructionTraps);
    }

    /// <summary>Binary translation gives every program's native results, <c>sensitive</c> included: the kernel's
    /// privileged and sensitive instructions become callouts, and none traps.</summary>
    [Fact]
    public void Binary_translation_gives_native_results_for_every_program()
    {
        var (outcome, serial, engine) = Run(Technique.BinaryTranslation);
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Equal(SimEngineTests.ResultsWithoutTimings(native.Serial), SimEngineTests.ResultsWithoutTimings(serial));
        var monitor = engine.Monitor!;
        Assert.Equal(0, monitor.PrivilegedInstructionTraps);
        Assert.Equal(0, monitor.RingCompression!.UncaughtSensitive);
        Assert.True(monitor.RingCompression.Callouts > 100, $"{monitor.RingCompression.Callouts} callouts");
    }
}
