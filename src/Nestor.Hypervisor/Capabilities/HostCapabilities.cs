using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Kvm;

namespace Nestor.Hypervisor.Capabilities;

/// <summary>The outcome of one probe guest.</summary>
/// <param name="Name">Short name, e.g. <c>exception-delivery</c>.</param>
/// <param name="Feature">The guest feature it tests, or null for the baseline.</param>
/// <param name="Description">What the probe guest does.</param>
/// <param name="Works">True when the probe guest reported success.</param>
/// <param name="Detail">How it ended when it did not work.</param>
public sealed record ProbeResult(string Name, GuestFeature? Feature, string Description, bool Works, string Detail);

/// <summary>What this host's KVM offers and what it can actually run, found by asking KVM for its capabilities and
/// by running tiny probe guests (the capabilities alone cannot tell: a nested, paravirtual host KVM may advertise
/// everything and still fail to deliver a guest exception).</summary>
public sealed class HostCapabilities
{
    internal static readonly (string Name, GuestFeature? Feature, string Description, Func<byte[]> Guest)[] AllProbes =
    [
        ("ring0-io", null, "straight-line ring-0 code with port I/O", ProbeGuests.RingZeroIo),
        ("exception-delivery", GuestFeature.ExceptionDelivery, "an invalid opcode (#UD) delivered through the guest's IDT", ProbeGuests.ExceptionDelivery),
        ("software-interrupt", GuestFeature.ExceptionDelivery, "int 0x40 through the guest's IDT", ProbeGuests.SoftwareInterrupt),
        ("enter-cpl3", GuestFeature.UserMode, "iretq from CPL 0 to CPL 3", ProbeGuests.UserModeEntry),
        ("sysret-to-cpl3", GuestFeature.UserMode, "sysretq from CPL 0 to CPL 3", ProbeGuests.SystemReturn),
        ("syscall-to-cpl0", GuestFeature.SystemCall, "syscall from CPL 3 to CPL 0", ProbeGuests.SystemCall),
        ("popcnt", GuestFeature.Popcnt, "the popcnt instruction", ProbeGuests.Popcnt),
        ("cmpxchg16b", GuestFeature.Cmpxchg16b, "the cmpxchg16b instruction", ProbeGuests.Cmpxchg16b),
    ];

    private static readonly KvmCapability[] ReportedCapabilities =
    [
        KvmCapability.UserMemory, KvmCapability.SetTssAddress, KvmCapability.ExtendedCpuid, KvmCapability.MemorySlots,
        KvmCapability.MaximumVcpus, KvmCapability.SynchronousMmu, KvmCapability.ImmediateExit, KvmCapability.BinaryStatistics,
        KvmCapability.ReadOnlyMemory, KvmCapability.VcpuEvents, KvmCapability.SetGuestDebug, KvmCapability.Xsave,
        KvmCapability.NestedState, KvmCapability.ExitOnEmulationFailure, KvmCapability.TripleFaultEvent,
        KvmCapability.InterruptController, KvmCapability.CoalescedMmio,
    ];

    private HostCapabilities(string devicePath)
    {
        DevicePath = devicePath;
    }

    /// <summary>The KVM device probed.</summary>
    public string DevicePath { get; }

    /// <summary>Null when KVM could be opened; otherwise why not and what to do.</summary>
    public NestorException? Unavailable { get; private init; }

    /// <summary>KVM_GET_API_VERSION.</summary>
    public int ApiVersion { get; private init; }

    /// <summary>KVM_CHECK_EXTENSION results for the capabilities Nestor reports.</summary>
    public IReadOnlyList<(KvmCapability Capability, int Value)> Capabilities { get; private init; } = [];

    /// <summary>The probes that ran, in order.</summary>
    public IReadOnlyList<ProbeResult> Probes { get; private init; } = [];

    /// <summary>Descriptions of every probe Nestor has, for listing.</summary>
    public static IEnumerable<(string Name, GuestFeature? Feature, string Description)> ProbeCatalogue =>
        AllProbes.Select(p => (p.Name, p.Feature, p.Description));

    /// <summary>False when some probe for <paramref name="feature"/> ran and failed.</summary>
    public bool Supports(GuestFeature feature) => Probes.Where(p => p.Feature == feature).All(p => p.Works);

    /// <summary>Opens <paramref name="devicePath"/>, reads its capabilities and runs the probes for
    /// <paramref name="features"/> (all probes when null). Never throws for an unusable KVM: that is a finding.</summary>
    public static HostCapabilities Probe(string devicePath, IEnumerable<GuestFeature>? features = null)
    {
        KvmSystem system;
        try
        {
            system = KvmEngine.OpenSystem(devicePath);
        }
        catch (HostUnsupportedException e)
        {
            return new HostCapabilities(devicePath) { Unavailable = e };
        }
        using (system)
        {
            var wanted = features?.ToHashSet();
            var probes = AllProbes
                .Where(p => wanted is null || p.Feature is null || wanted.Contains(p.Feature.Value))
                .Select(p => RunProbe(devicePath, p.Name, p.Feature, p.Description, p.Guest()))
                .ToList();
            return new HostCapabilities(devicePath)
            {
                ApiVersion = system.ApiVersion,
                Capabilities = ReportedCapabilities.Select(c => (c, system.CheckCapability(c))).ToList(),
                Probes = probes,
            };
        }
    }

    private static ProbeResult RunProbe(string devicePath, string name, GuestFeature? feature, string description, byte[] code)
    {
        var config = new VmConfig
        {
            Kernel = new KernelImageSource($"probe '{name}'", code, KernelFormat.Flat),
            MemoryBytes = 4UL << 20,
            Timeout = TimeSpan.FromSeconds(5),
            KvmDevicePath = devicePath,
        };
        try
        {
            using var vm = Vm.Create(config);
            var outcome = vm.Run(new KvmEngine()).Outcome;
            bool works = outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == ProbeGuests.Success;
            string detail = works ? "works" : outcome.Kind switch
            {
                VmOutcomeKind.DebugExit => $"ran, but gave the wrong result (status {outcome.GuestStatus})",
                VmOutcomeKind.TripleFault => $"the guest triple-faulted at rip=0x{outcome.FinalState?.Rip:x}",
                VmOutcomeKind.EmulationFailure => "KVM emulation failure" + (outcome.Instruction is null ? "" : $" at '{outcome.Instruction}'"),
                _ => outcome.Message,
            };
            return new ProbeResult(name, feature, description, works, detail);
        }
        catch (Exception e) when (e is NestorException or KvmException)
        {
            return new ProbeResult(name, feature, description, false, e.Message);
        }
    }
}
