namespace Nestor.Containers.Cgroups;

/// <summary>What a control group's processes have used, read back from its interface files (v1: memory.usage_in_bytes,
/// memory.failcnt, cpuacct.usage, cpu.stat, pids.current, blkio.throttle.io_service_bytes; v2: memory.current,
/// memory.events, cpu.stat, pids.current, io.stat). A limit of null means unlimited.</summary>
public sealed record ControlGroupUsage
{
    public long MemoryBytes { get; init; }
    /// <summary>The highest memory use seen (v1 memory.max_usage_in_bytes, v2 memory.peak where the kernel has it).</summary>
    public long MemoryMaxBytes { get; init; }
    public long? MemoryLimitBytes { get; init; }
    /// <summary>How often the limit was hit (v1 memory.failcnt plus memory.memsw.failcnt, which kernels from 6.x no longer count; v2 memory.events "max").</summary>
    public long MemoryLimitHits { get; init; }
    /// <summary>Processes the OOM killer killed in this group (v1 memory.oom_control oom_kill, v2 memory.events oom_kill).</summary>
    public long OomKills { get; init; }
    public ulong CpuNanoseconds { get; init; }
    public long CpuThrottledPeriods { get; init; }
    public ulong CpuThrottledNanoseconds { get; init; }
    public long Pids { get; init; }
    public long? PidsLimit { get; init; }
    public ulong IoReadBytes { get; init; }
    public ulong IoWriteBytes { get; init; }
}
