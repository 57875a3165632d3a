using Nestor.Hypervisor.Engines;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Tests;

/// <summary>The sim's CPUID bits derive from the instruction table: each bit it reports is a feature the rows (or the
/// machine model) implement, and each feature they do not is not reported.</summary>
public sealed class SoftwareCpuidTableTests
{
    private static readonly uint[] FeatureLeaves = [1, 7, 0x8000_0001];

    private static uint RegisterOf(uint leaf, CpuidRegister register)
    {
        var (eax, ebx, ecx, edx) = SoftwareCpuid.Query(leaf, 0, paravirtual: false);
        return register switch { CpuidRegister.Eax => eax, CpuidRegister.Ebx => ebx, CpuidRegister.Ecx => ecx, _ => edx };
    }

    [Fact]
    public void Every_reported_bit_is_a_feature_backed_by_rows_needing_it_or_by_the_model()
    {
        int reported = 0;
        foreach (uint leaf in FeatureLeaves)
        {
            foreach (var register in new[] { CpuidRegister.Ebx, CpuidRegister.Ecx, CpuidRegister.Edx })
            {
                if (leaf == 1 && register == CpuidRegister.Ebx)
                {
                    continue; // not flags: the CLFLUSH line size and the initial APIC ID
                }
                uint bits = RegisterOf(leaf, register);
                for (int bit = 0; bit < 32; bit++)
                {
                    if ((bits & (1u << bit)) == 0)
                    {
                        continue;
                    }
                    reported++;
                    var feature = CpuidFeatures.All.SingleOrDefault(f => f.Leaf == leaf && f.Register == register && f.Bit == bit);
                    Assert.True(feature is not null, $"leaf 0x{leaf:x} {register} bit {bit} is reported but is no known feature");
                    if (feature.Instructions.Count == 0)
                    {
                        Assert.NotNull(feature.ModelledBy);
                    }
                    else
                    {
                        Assert.All(feature.Instructions, m => Assert.Equal(feature.Feature, InstructionTable.Find(m)?.Feature));
                    }
                }
            }
        }
        Assert.Equal(SoftwareCpuid.Features.Count, reported);
    }

    [Fact]
    public void A_feature_without_rows_for_all_its_instructions_is_not_reported()
    {
        var unbacked = CpuidFeatures.All.Where(f => f.Instructions.Count > 0 &&
                                                    f.Instructions.Any(m => InstructionTable.Find(m)?.Feature != f.Feature)).ToList();
        Assert.Contains(unbacked, f => f.Feature == CpuFeature.BitManipulation1); // TZCNT alone is not BMI1
        Assert.Contains(unbacked, f => f.Feature == CpuFeature.Sse);
        foreach (var f in unbacked)
        {
            Assert.True((RegisterOf(f.Leaf, f.Register) & (1u << f.Bit)) == 0, $"{f.Name} is reported without its rows");
            Assert.DoesNotContain(SoftwareCpuid.Features, s => s.Name == f.Name);
        }
    }
}
