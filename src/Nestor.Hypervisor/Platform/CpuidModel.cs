using Nestor.Hypervisor.Engines;
using Nestor.Kvm;

namespace Nestor.Hypervisor.Platform;

/// <summary>What CPUID answers for a VM: the processor the guest is shown. Each engine has one; the platform asks it
/// whenever the guest executes CPUID on an engine that traps it.</summary>
public interface ICpuidModel
{
    /// <summary>CPUID for leaf EAX, subleaf ECX.</summary>
    (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf);
}

/// <summary>The software machine's CPUID: the features the model implements and no others
/// (<see cref="SoftwareCpuid"/>), with the paravirtual interface announced under paravirtualization, as the
/// VM's processor model (<paramref name="model"/>, Intel by default) identifies itself.</summary>
public sealed class SoftwareCpuidModel(bool paravirtual, Nestor.Machine.Processor.ProcessorModel? model = null) : ICpuidModel
{
    /// <summary>The processor model whose identity CPUID reports.</summary>
    public Nestor.Machine.Processor.ProcessorModel Model { get; } = model ?? Nestor.Machine.Processor.ProcessorModel.Intel;

    /// <summary>Leaf 0x40000001 EAX bit 1 announces the split driver's hypercalls (a VM of <c>--service-vm</c>).</summary>
    public bool SplitDriver { get; init; }

    /// <inheritdoc/>
    public (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf)
    {
        var result = SoftwareCpuid.Query(Model, leaf, subleaf, paravirtual);
        if (leaf == Nestor.Hypervisor.Engines.KvmEngine.HypervisorLeaf + 1 && SplitDriver)
        {
            result.Eax |= ServiceVm.SplitDriverDomain.CpuidBit;
        }
        return result;
    }
}

/// <summary>The CPUID a KVM guest sees: what this host's KVM supports, with the hypervisor bit and Nestor's own
/// hypervisor leaf (<see cref="KvmEngine.GuestCpuid"/>). KVM answers CPUID in the kernel from these entries; the
/// model answers the same from them for Nestor's own use (reports, tests).</summary>
public sealed class KvmCpuidModel(KvmCpuidEntry[] entries) : ICpuidModel
{
    /// <summary>The entries handed to <c>KVM_SET_CPUID2</c>.</summary>
    public KvmCpuidEntry[] Entries { get; } = entries;

    /// <inheritdoc/>
    public (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf)
    {
        foreach (var e in Entries)
        {
            // KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the subleaf selects the entry (Documentation/virt/kvm/api.rst, KVM_SET_CPUID2).
            if (e.Function == leaf && ((e.Flags & KvmCpuidEntry.SignificantIndex) == 0 || e.Index == subleaf))
            {
                return (e.Eax, e.Ebx, e.Ecx, e.Edx);
            }
        }
        return (0, 0, 0, 0);
    }
}
