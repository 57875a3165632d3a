using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.State;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor;

/// <summary>One virtual CPU of a <see cref="Vm"/>, owned by the VM between runs: its architectural state as the
/// engine-neutral <see cref="CpuState"/>. An engine loads it when a run starts and writes it back when the run ends,
/// so that the next run, on the same engine or another, continues where this one stopped.</summary>
public sealed class Vcpu(int index, CpuState initial) : ISnapshottable
{
    /// <summary>The vCPU's state: at the first instruction before any run, else as the last run left it.</summary>
    public CpuState State = initial;

    /// <summary>Which vCPU of the VM (0 is the bootstrap processor).</summary>
    public int Index { get; } = index;

    /// <summary>The state as a <see cref="VcpuState"/> (for <c>--dump-state</c>, JSON and listings).</summary>
    public VcpuState View => CpuStateConversion.ToVcpuState(in State);

    // CPU0 to CPU9, then CPUA to CPUF (VmConfig.MaximumCpus is 16).
    public string SectionTag => $"CPU{"0123456789ABCDEF"[Index]}";

    public ushort SectionVersion => CpuStateFormat.Version;

    public void Save(SnapshotWriter writer) => CpuStateFormat.Write(writer, in State);

    public void Restore(SnapshotReader reader, ushort version) => State = CpuStateFormat.Read(reader, version);
}
