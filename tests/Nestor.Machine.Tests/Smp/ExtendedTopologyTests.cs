using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.Smp;

/// <summary>CPUID leaf 0BH, extended topology (SDM Vol. 2A CPUID), on each processor of a VM (issue 18: kvm-unit-tests'
/// <c>apic</c> with two processors failed <c>x2apic id matches cpuid</c> on the AP, where leaf 0xB, above the highest
/// basic leaf, answered leaf 0xA's zeros): EDX is the executing processor's x2APIC ID at every subleaf, and the
/// levels describe N single-threaded cores of one package.</summary>
public class ExtendedTopologyTests
{
    /// <summary>Runs CPUID 0xB subleaves 0, 1 and 2 on every processor of a <paramref name="count"/>-processor machine;
    /// per processor, per subleaf, (EAX, EBX, ECX, EDX).</summary>
    private static (uint, uint, uint, uint)[][] Topology(int count)
    {
        var m = new SmpMachine(count);
        for (int cpu = 0; cpu < count; cpu++)
        {
            ulong results = 0x30000 + (ulong)cpu * 0x100;
            m.Load(cpu, 0x20000 + (ulong)cpu * 0x1000, a =>
            {
                for (int subleaf = 0; subleaf < 3; subleaf++)
                {
                    a.mov(eax, 0xB);
                    a.mov(ecx, subleaf);
                    a.cpuid();
                    a.mov(rdi, results + (ulong)subleaf * 16);
                    a.mov(__dword_ptr[rdi], eax);
                    a.mov(__dword_ptr[rdi + 4], ebx);
                    a.mov(__dword_ptr[rdi + 8], ecx);
                    a.mov(__dword_ptr[rdi + 12], edx);
                }
            }, stack: 0x9000 + (ulong)cpu * 0x1000);
            Assert.Equal(StopReason.PlatformStop, m.Run(cpu));
        }
        return [.. Enumerable.Range(0, count).Select(cpu => Enumerable.Range(0, 3).Select(subleaf =>
        {
            ulong at = 0x30000 + (ulong)cpu * 0x100 + (ulong)subleaf * 16;
            return ((uint)m.Memory.Read(at), (uint)m.Memory.Read(at + 4), (uint)m.Memory.Read(at + 8), (uint)m.Memory.Read(at + 12));
        }).ToArray())];
    }

    [Fact]
    public void Each_processor_reads_its_own_x2apic_id_at_every_subleaf()
    {
        var topology = Topology(3);
        for (uint cpu = 0; cpu < 3; cpu++)
        {
            Assert.All(topology[cpu], registers => Assert.Equal(cpu, registers.Item4));
        }
    }

    [Fact]
    public void The_levels_are_one_thread_per_core_and_all_cores_in_one_package()
    {
        var topology = Topology(3);
        var (smt, core, invalid) = (topology[2][0], topology[2][1], topology[2][2]);
        Assert.Equal((0u, 1u, 0x100u), (smt.Item1, smt.Item2, smt.Item3));     // SMT: shift 0, 1 processor, type 1, level 0
        Assert.Equal((2u, 3u, 0x201u), (core.Item1, core.Item2, core.Item3));  // core: shift 2 (IDs 0-2), 3 processors, type 2
        Assert.Equal((0u, 0u, 2u), (invalid.Item1, invalid.Item2, invalid.Item3)); // past the last level: type 0
        Assert.Equal(0u, 2u >> (int)core.Item1); // the package ID of the highest x2APIC ID is 0
    }

    [Fact]
    public void Leaf_0xb_is_within_the_intel_models_basic_leaves_and_absent_from_amds()
    {
        Assert.True(ProcessorModel.Intel.HighestBasicLeaf >= 0xB);
        Assert.True(ProcessorModel.Amd.HighestBasicLeaf < 0xB);
    }
}
