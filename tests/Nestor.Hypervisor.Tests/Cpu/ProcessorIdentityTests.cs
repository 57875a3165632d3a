using System.Text;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Platform;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.CpuModel;

/// <summary>The processor a guest of the software machine sees (issue 18): an Intel part by vendor and signature, with
/// Nestor named in the hypervisor leaves, its brand string and address sizes, asked by a real guest on the bare
/// machine and under hardware assist (where CPUID exits to the VMM, which answers from the same model); and CPUID's
/// feature bits and the CPU's CR4 checks as one truth.</summary>
public sealed class ProcessorIdentityTests
{
    /// <summary>Runs CPUID for <paramref name="leaf"/> in a guest; its EAX, EBX, ECX, EDX.</summary>
    private static (uint Eax, uint Ebx, uint Ecx, uint Edx) GuestCpuid(uint leaf, Technique technique = Technique.Native,
        ProcessorModel? model = null)
    {
        using var vm = Vm.Create(new VmConfig
        {
            CpuModel = model ?? ProcessorModel.Intel,
            Kernel = GuestAssembler.Flat("cpuid", GuestAssembler.Assemble(a =>
            {
                a.mov(eax, leaf);
                a.xor(ecx, ecx);
                a.cpuid();
                a.mov(r9d, edx); // the exit needs DX
                a.mov(dx, 0xF4);
                a.@out(dx, al);
                a.hlt();
            })),
            MemoryBytes = 32UL << 20,
            SerialOutput = Stream.Null,
            Timeout = TimeSpan.FromSeconds(60),
        });
        var outcome = vm.Run(new SimEngine(new SimOptions { Technique = technique })).Outcome;
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        var s = outcome.FinalState!;
        return ((uint)s.Rax, (uint)s.Rbx, (uint)s.Rcx, (uint)s.R9);
    }

    private static string Text(params uint[] words) =>
        Encoding.ASCII.GetString([.. words.SelectMany(BitConverter.GetBytes)]).TrimEnd('\0');

    [Theory]
    [InlineData(Technique.Native)]
    [InlineData(Technique.HardwareAssist)]
    public void A_guest_sees_genuine_intel_family_6_model_0x3d(Technique technique)
    {
        var leaf0 = GuestCpuid(0, technique);
        Assert.Equal("GenuineIntel", Text(leaf0.Ebx, leaf0.Edx, leaf0.Ecx));
        Assert.Equal(SoftwareCpuid.HighestBasicLeaf, leaf0.Eax);
        // Display family and model as SDM Vol. 2A (CPUID, "Family ID and Model ID") computes them.
        uint signature = GuestCpuid(1, technique).Eax;
        uint family = (signature >> 8) & 0xF, model = (signature >> 4) & 0xF, stepping = signature & 0xF;
        if (family is 6 or 15)
        {
            model |= ((signature >> 16) & 0xF) << 4;
        }
        Assert.Equal((6u, 0x3Du, 4u), (family, model, stepping));
        Assert.Equal(((uint)ProcessorModel.Intel.Family, (uint)ProcessorModel.Intel.Model), (family, model));
    }

    [Theory]
    [InlineData(Technique.Native)]
    [InlineData(Technique.HardwareAssist)]
    public void With_the_amd_model_a_guest_sees_authentic_amd_family_0xf_model_6_stepping_1(Technique technique)
    {
        var leaf0 = GuestCpuid(0, technique, ProcessorModel.Amd);
        Assert.Equal("AuthenticAMD", Text(leaf0.Ebx, leaf0.Edx, leaf0.Ecx));
        Assert.Equal(ProcessorModel.Amd.HighestBasicLeaf, leaf0.Eax);
        uint signature = GuestCpuid(1, technique, ProcessorModel.Amd).Eax;
        // APM Vol. 3 Appendix E.3.2: family = base + extended when base is 0xF; model likewise extended.
        uint family = ((signature >> 8) & 0xF) + ((signature >> 20) & 0xFF), model = ((signature >> 4) & 0xF) | (((signature >> 16) & 0xF) << 4);
        Assert.Equal((0xFu, 6u, 1u), (family, model, signature & 0xF));
        // Leaf 0x80000001: the signature again in EAX; EDX with SYSCALL (11), NX (20), LM (29), and the leaf-1 bits AMD
        // mirrors there (TSC, MSR, PAE, APIC, ...: APM Vol. 3 Appendix E.4.2), which Intel leaves 0.
        var extended = GuestCpuid(0x8000_0001, technique, ProcessorModel.Amd);
        var leaf1 = GuestCpuid(1, technique, ProcessorModel.Amd);
        Assert.Equal(signature, extended.Eax);
        Assert.Equal((1u << 11) | (1u << 20) | (1u << 29), extended.Edx & ((1u << 11) | (1u << 20) | (1u << 29)));
        Assert.Equal(leaf1.Edx & (1u << 4), extended.Edx & (1u << 4)); // TSC
        Assert.Equal(0u, GuestCpuid(0x8000_0001).Edx & (1u << 4));
        Assert.Equal("Nestor software CPU (AMD Opteron-class)", ProcessorModel.Amd.BrandString);
    }

    [Fact]
    public void Amd_has_no_intel_only_leaves_and_answers_zeros_past_the_highest()
    {
        // APM Vol. 3 Appendix E.2: a function above the highest returns zeros; leaves 0xA (architectural PMU) and 0xB
        // (x2APIC topology) are Intel's.
        Assert.Equal((0u, 0u, 0u, 0u), SoftwareCpuid.Query(ProcessorModel.Amd, 0xA, 0, false));
        Assert.Equal((0u, 0u, 0u, 0u), SoftwareCpuid.Query(ProcessorModel.Amd, 0xB, 0, false));
        Assert.Equal((0u, 0u, 0u, 0u), SoftwareCpuid.Query(ProcessorModel.Amd, 0x8000_0009, 0, false));
        Assert.NotEqual((0u, 0u, 0u, 0u), SoftwareCpuid.Query(ProcessorModel.Amd, 7, 0, false));
    }

    [Fact]
    public void The_amd_model_is_the_software_machines_only()
    {
        var kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat);
        var kvm = Assert.Throws<Nestor.Hypervisor.Errors.BadInputException>(() =>
            new VmConfig { Kernel = kernel, CpuModel = ProcessorModel.Amd, Engine = EngineKind.Kvm }.Validate());
        Assert.Contains("--cpu-model amd", kvm.Message);
        Assert.Contains("--engine sim", kvm.Advice);
        new VmConfig { Kernel = kernel, CpuModel = ProcessorModel.Amd }.Validate();
    }

    [Fact]
    public void The_hypervisor_bit_is_set_and_leaf_0x40000000_names_nestor()
    {
        Assert.NotEqual(0u, GuestCpuid(1).Ecx & (1u << 31));
        var hypervisor = GuestCpuid(KvmEngine.HypervisorLeaf);
        Assert.Equal("NestorNestor", Text(hypervisor.Ebx, hypervisor.Ecx, hypervisor.Edx));
        Assert.Equal(KvmEngine.HypervisorLeaf + 1, hypervisor.Eax);
    }

    [Fact]
    public void The_brand_string_and_address_sizes_are_the_models()
    {
        var words = new List<uint>();
        for (uint leaf = 0x8000_0002; leaf <= 0x8000_0004; leaf++)
        {
            var r = GuestCpuid(leaf);
            words.AddRange([r.Eax, r.Ebx, r.Ecx, r.Edx]);
        }
        Assert.Equal(ProcessorModel.Intel.BrandString, Text([.. words]));
        Assert.Equal(SoftwareCpuid.HighestExtendedLeaf, GuestCpuid(0x8000_0000).Eax);
        uint sizes = GuestCpuid(0x8000_0008).Eax;
        Assert.Equal((ProcessorModel.PhysicalAddressBits, ProcessorModel.LinearAddressBits), ((int)(sizes & 0xFF), (int)((sizes >> 8) & 0xFF)));
    }

    [Fact]
    public void There_is_no_performance_monitoring_unit_to_find()
    {
        var pmu = SoftwareCpuid.Query(0xA, 0, paravirtual: false);
        Assert.Equal(0u, pmu.Eax & 0xFF); // version 0: no architectural PMU, so RDPMC raises #GP
        Assert.Equal(0u, SoftwareCpuid.Query(1, 0, false).Ecx & (1u << 15)); // PDCM: no PERF_CAPABILITIES
    }

    [Fact]
    public void Leaves_above_the_highest_return_the_highest_basic_leaf_as_intel_parts_do()
    {
        // Leaf 1 is distinctive (the signature); if the highest basic leaf were 1, 0x20 would return it. Here the
        // highest is 0xB: its answer and that of leaves past either range must be the same.
        var highest = SoftwareCpuid.Query(SoftwareCpuid.HighestBasicLeaf, 0, false);
        Assert.Equal(highest, SoftwareCpuid.Query(0x20, 0, false));
        Assert.Equal(highest, SoftwareCpuid.Query(SoftwareCpuid.HighestExtendedLeaf + 1, 0, false));
        Assert.NotEqual(SoftwareCpuid.Query(0x8000_0008, 0, false), SoftwareCpuid.Query(0x8000_0009, 0, false));
    }

    [Fact]
    public void The_platforms_model_answers_exactly_what_the_software_cpuid_does()
    {
        var model = new SoftwareCpuidModel(paravirtual: false);
        foreach (uint leaf in (uint[])[0, 1, 2, 7, 0xA, 0xB, 0x4000_0000, 0x4000_0001, 0x8000_0000, 0x8000_0001, 0x8000_0002,
                     0x8000_0003, 0x8000_0004, 0x8000_0008, 0x8000_0009])
        {
            Assert.Equal(SoftwareCpuid.Query(leaf, 0, false), model.Query(leaf, 0));
        }
    }

    [Fact]
    public void A_cr4_bit_the_cpu_accepts_is_one_whose_cpuid_feature_bit_is_set()
    {
        foreach (var (bit, name, feature) in ProcessorModel.Cr4Bits)
        {
            bool writable = (ProcessorModel.Cr4Writable & (1UL << bit)) != 0;
            if (feature == CpuFeature.None)
            {
                Assert.True(writable, $"CR4.{name} has no feature and is always writable");
                continue;
            }
            var info = CpuidFeatures.Of(feature);
            var r = SoftwareCpuid.Query(info.Leaf, 0, false);
            uint register = info.Register switch { CpuidRegister.Eax => r.Eax, CpuidRegister.Ebx => r.Ebx, CpuidRegister.Ecx => r.Ecx, _ => r.Edx };
            Assert.True(writable == ((register & (1u << info.Bit)) != 0), $"CR4.{name}: writable {writable}, CPUID {info.Name} {(register >> info.Bit) & 1}");
        }
        // What kvm-unit-tests and the issue name: not offered, so refused.
        foreach (ulong refused in (ulong[])[1UL << 12, 1UL << 18, 1UL << 22, 1UL << 11])
        {
            Assert.Equal(0UL, ProcessorModel.Cr4Writable & refused);
        }
    }
}
