namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>What the host knows about one VM's memory when it decides how much the VM may keep (Waldspurger,
/// "Memory Resource Management in VMware ESX Server", OSDI'02 §5–6): its configured <c>min</c> and <c>max</c> (4 KiB
/// pages), its memory <c>shares</c>, the pages it holds now, and the fraction of them the guest actively uses, as the
/// host's sampler last estimated it (0…1).</summary>
public readonly record struct VmMemoryDemand(
    string Name, long MinPages, long MaxPages, long Shares, long AllocatedPages, double ActiveFraction);

/// <summary>Divides the pages the host can give its VMs among them. An implementation writes one target per VM into
/// <c>targetPages</c> (same order as <c>vms</c>), each between the VM's min and max, summing
/// to no more than <c>availablePages</c> unless the mins alone exceed it (admission control prevents
/// that). The host then moves each VM towards its target by ballooning, and by swapping when the balloon cannot.
/// Proportional share without a tax (τ = 0) and ESX's idle memory tax (§5.3) are the two policies.</summary>
public interface IMemoryAllocationPolicy
{
    /// <summary>Sets <paramref name="targetPages"/>[i] for each of <paramref name="vms"/>.</summary>
    void Allocate(ReadOnlySpan<VmMemoryDemand> vms, long availablePages, Span<long> targetPages);
}
