using System.Text.Json.Serialization;

namespace Nestor.Hypervisor.Hosting.ControlApi;

// The control API's JSON bodies. Their shape follows Firecracker's API (its swagger/firecracker.yaml): snake_case
// names, a PATCH whose "state" is "Paused" or "Resumed", PUT .../actions with an "action_type", errors as
// {"fault_message": ...}; adapted to a host of many VMs, where every VM route is under /vms/{name}.

/// <summary><c>GET /</c>: what answers on the socket (Firecracker's InstanceInfo, for a host of many VMs).</summary>
/// <param name="AppName">Always <c>nestor</c>.</param>
/// <param name="Id">What this server serves: <c>host</c>.</param>
/// <param name="State">The host's state: <c>Running</c> while the server is up.</param>
/// <param name="VmmVersion">Nestor's version.</param>
/// <param name="VmCount">How many VMs the host has, in any state.</param>
public sealed record InstanceInfoDocument(string AppName, string Id, string State, string VmmVersion, int VmCount);

/// <summary>One counter: a name, a value and its unit (empty for a count).</summary>
public sealed record CounterDocument(string Name, ulong Value, string Unit);

/// <summary><c>GET /host</c> and <c>GET /vms/{name}/counters</c>: a list of counters.</summary>
public sealed record CountersDocument(IReadOnlyList<CounterDocument> Counters);

/// <summary>A VM's CPU controls. A PUT must give the shares; a reservation not given is none and a limit not given is
/// none. A PATCH changes only the fields it gives.</summary>
/// <param name="Shares">Relative weight, at least 1.</param>
/// <param name="Reservation">Guaranteed percent of one host CPU.</param>
/// <param name="Limit">Most percent it may have, null for none.</param>
public sealed record CpuDocument(int? Shares, double? Reservation, double? Limit);

/// <summary>A VM's memory controls, in bytes.</summary>
public sealed record MemoryDocument(ulong MinBytes, ulong MaxBytes, int Shares);

/// <summary><c>GET /vms/{name}</c>: a VM as it is now.</summary>
public sealed record VmDocument(string Name, string State, string Technique, int VcpuCount, CpuDocument Cpu,
    MemoryDocument Memory, string? Outcome, IReadOnlyList<CounterDocument> Counters, IReadOnlyList<VcpuDocument>? Vcpus = null);

/// <summary>One vCPU of a VM with several, in <see cref="VmDocument.Vcpus"/>: its index (its APIC ID; 0 is the
/// bootstrap processor) and what the scheduler gave it (the VM's counters add them up).</summary>
public sealed record VcpuDocument(int Index, IReadOnlyList<CounterDocument> Counters);

/// <summary><c>GET /vms</c>: every VM on the host, in the order configured.</summary>
public sealed record VmListDocument(IReadOnlyList<VmDocument> Vms);

/// <summary><c>PATCH /vms/{name}</c>: <c>{"state": "Paused"}</c> or <c>{"state": "Resumed"}</c> (Firecracker's
/// PATCH /vm).</summary>
public sealed record VmStateDocument(string? State);

/// <summary><c>PUT /vms/{name}/actions</c>: <c>{"action_type": "Stop"}</c> (Firecracker's InstanceActionInfo).</summary>
public sealed record ActionDocument(string? ActionType);

/// <summary><c>PUT /vms/{name}/balloon</c>: <c>{"target_mib": N}</c>, the pages the guest is asked to give up, in MiB
/// (Firecracker's PATCH /balloon has <c>amount_mib</c>; here the operator's target is a floor under the host's own).</summary>
public sealed record BalloonTargetDocument(long? TargetMib);

/// <summary>One statistic the guest reported on the statsq (virtio 1.2 §5.5.6.3), by its tag's name.</summary>
public sealed record BalloonStatisticDocument(string Name, ulong Value);

/// <summary><c>GET /vms/{name}/balloon</c>: the target, what the driver holds, and the guest's statistics
/// (Firecracker's GET /balloon and /balloon/statistics in one).</summary>
public sealed record BalloonDocument(ulong TargetMib, uint TargetPages, uint ActualPages, long InflatedPages, long PagesInflated,
    long PagesDeflated, long ReturnedBytes, long RefusedPfns, bool SetByOperator, ulong AllocationTargetBytes, ulong HeldBytes,
    IReadOnlyList<BalloonStatisticDocument> Statistics);

/// <summary>Every error: what went wrong, and what to do (Firecracker's Error object).</summary>
public sealed record FaultDocument(string FaultMessage);

/// <summary>The source-generated serializers of the control API's documents (NativeAOT has no reflection-based
/// JSON). Strict on input: an unknown member is an error, so a misspelt field is a 400, not silently ignored.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow, NumberHandling = JsonNumberHandling.Strict,
    DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(InstanceInfoDocument))]
[JsonSerializable(typeof(CountersDocument))]
[JsonSerializable(typeof(CpuDocument))]
[JsonSerializable(typeof(VmDocument))]
[JsonSerializable(typeof(VmListDocument))]
[JsonSerializable(typeof(VmStateDocument))]
[JsonSerializable(typeof(ActionDocument))]
[JsonSerializable(typeof(FaultDocument))]
[JsonSerializable(typeof(BalloonTargetDocument))]
[JsonSerializable(typeof(BalloonDocument))]
public sealed partial class ControlApiJson : JsonSerializerContext;
