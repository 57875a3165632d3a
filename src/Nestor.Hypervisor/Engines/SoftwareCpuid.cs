using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Engines;

/// <summary>The CPUID the software machine reports: by default an Intel processor (<see cref="ProcessorModel.Intel"/>:
/// vendor <c>GenuineIntel</c>, family 6 model 0x3D stepping 4, a Broadwell-U signature), or with <c>--cpu-model amd</c>
/// an AMD Opteron-class one (<see cref="ProcessorModel.Amd"/>), with exactly the features the model
/// implements, so a guest that checks CPUID (as it must, Intel SDM Vol. 2A "CPUID", Tables 3-8 to 3-11) takes the
/// Intel paths and never one the machine cannot run. The bits derive from the instruction table
/// (<see cref="CpuidFeatures.Reported"/>): an instruction feature is reported when every instruction of it has a row
/// needing it, a feature of the machine model (paging, the APIC, long mode) when the model backs it; the same list
/// decides which CR4 bits the CPU accepts (<see cref="ProcessorModel.Cr4Writable"/>). Not reported because not
/// modelled: MMX, SSE and later, FXSAVE/XSAVE, VME/PSE/MTRR, BMI1 and BMI2 (TZCNT is
/// implemented, but ANDN, BEXTR and BLSI/BLSMSK/BLSR are not), MOVBE, RDRAND, PKU, UMIP, LA57, FSGSBASE,
/// and a performance-monitoring unit (leaf 0xA version 0: RDPMC raises #GP). The hypervisor bit is set and leaves
/// 0x40000000–0x40000001 name Nestor (docs/paravirt.md). The tests run one instruction per advertised feature on the
/// machine and check that each not-advertised one raises #UD.</summary>
public static class SoftwareCpuid
{
    /// <summary>The default (Intel) model's vendor string (leaf 0).</summary>
    public static string Vendor => ProcessorModel.Intel.Vendor;

    /// <summary>The Intel model's highest basic leaf: 0xB, extended topology (after 0xA, the architectural
    /// performance-monitoring leaf, which says there is none). The AMD model's is 7
    /// (<see cref="ProcessorModel.HighestBasicLeaf"/>).</summary>
    public const uint HighestBasicLeaf = 0xB;

    /// <summary>The highest extended leaf: 0x80000008 (address sizes).</summary>
    public const uint HighestExtendedLeaf = 0x8000_0008;

    /// <summary>Which register of a leaf a feature bit is in.</summary>
    public enum Register
    {
        Eax,
        Ebx,
        Ecx,
        Edx,
    }

    /// <summary>One advertised feature: where its bit is, its name in the SDM's tables, and what of the model
    /// backs it.</summary>
    public sealed record Feature(uint Leaf, Register Register, int Bit, string Name, string ImplementedBy);

    /// <summary>Every feature bit the machine sets, from <see cref="CpuidFeatures.Reported"/>.</summary>
    public static readonly IReadOnlyList<Feature> Features =
    [
        .. CpuidFeatures.Reported.Select(f => new Feature(f.Leaf, (Register)f.Register, f.Bit, f.Name, ImplementedBy(f))),
    ];

    private static string ImplementedBy(CpuidFeatureInfo f)
    {
        string instructions = string.Join("/", f.Instructions.Select(m => m.ToString().ToUpperInvariant()));
        return (instructions, f.ModelledBy) switch
        {
            ("", { } model) => model,
            (_, null) => instructions,
            (_, { } model) => $"{instructions}, and {model}",
        };
    }

    private static readonly uint[] Leaf1 = Bits(1), Leaf7 = Bits(7), Extended1 = Bits(0x8000_0001);

    // Leaf 0x80000001 EDX on AMD repeats these leaf-1 EDX bits at the same positions (APM Vol. 3 Appendix E.4.2:
    // FPU, VME, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, MTRR, PGE, MCA, CMOV, PAT, PSE36, MMX, FXSR); Intel defines
    // none of them there (SDM Vol. 2A Table 3-8). Only those the machine reports in leaf 1 are set.
    private const uint AmdMirroredLeaf1Edx = 0x0183_F3FF;
    private static readonly uint AmdExtended1Edx = Extended1[3] | (Leaf1[3] & AmdMirroredLeaf1Edx);

    private static uint[] Bits(uint leaf)
    {
        var registers = new uint[4];
        foreach (var f in Features.Where(f => f.Leaf == leaf))
        {
            registers[(int)f.Register] |= 1u << f.Bit;
        }
        return registers;
    }

    private static uint Word(string s, int at) =>
        at >= s.Length ? 0 : BitConverter.ToUInt32(System.Text.Encoding.ASCII.GetBytes(s.PadRight(at + 4, '\0')), at);

    /// <summary>CPUID for leaf EAX, subleaf ECX. <paramref name="paravirtual"/>: leaf 0x40000001 announces the
    /// paravirtual interface (docs/paravirt.md).</summary>
    public static (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf, bool paravirtual) =>
        Query(ProcessorModel.Intel, leaf, subleaf, paravirtual);

    /// <summary>CPUID of <paramref name="model"/> for leaf EAX, subleaf ECX: the same features, the model's identity
    /// and the leaves its vendor defines.</summary>
    public static (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(ProcessorModel model, uint leaf, uint subleaf, bool paravirtual)
    {
        uint highestBasic = model.HighestBasicLeaf;
        bool outOfRange = leaf is > HighestExtendedLeaf or (>= 0x5000_0000 and < 0x8000_0000) || (leaf > highestBasic && leaf < 0x4000_0000);
        if (outOfRange)
        {
            // A leaf above the highest basic or extended one returns the highest basic leaf's data on Intel processors
            // (SDM Vol. 2A, CPUID, "If a value entered for CPUID.EAX is higher than the maximum input value…"), and
            // zeros on AMD's (APM Vol. 3 Appendix E.2: an unsupported function returns 0 in EAX, EBX, ECX, EDX); the
            // hypervisor range 0x40000000–0x4FFFFFFF is the hypervisor's own.
            if (model.IsAmd)
            {
                return (0, 0, 0, 0);
            }
            leaf = highestBasic;
        }
        string brand = model.BrandString;
        string vendor = model.Vendor;
        return leaf switch
        {
            // The highest basic leaf; the vendor in EBX, EDX, ECX order.
            0 => (highestBasic, Word(vendor, 0), Word(vendor, 8), Word(vendor, 4)),
            // The signature; EBX: CLFLUSH line size in 8-byte units (bits 15:8), initial APIC ID 0 (bits 31:24).
            1 => (model.Signature,
                  ProcessorModel.Has(CpuFeature.CacheLineFlush) ? (uint)(ProcessorModel.CacheLineBytes / 8) << 8 : 0,
                  Leaf1[2], Leaf1[3]),
            // Subleaf 0: EAX the highest subleaf (0).
            7 when subleaf == 0 => (0, Leaf7[1], Leaf7[2], Leaf7[3]),
            // Extended topology as the bootstrap processor of a one-processor VM sees it; the CPU puts in its own
            // x2APIC ID and the VM's processor count (Cpu.System's CPUID).
            0xB => ProcessorModel.ExtendedTopology(subleaf, 0, 1),
            KvmEngine.HypervisorLeaf + 1 => (paravirtual ? 1u : 0, 0, 0, 0),
            KvmEngine.HypervisorLeaf => (KvmEngine.HypervisorLeaf + 1, Word(KvmEngine.HypervisorSignature, 0),
                Word(KvmEngine.HypervisorSignature, 4), Word(KvmEngine.HypervisorSignature, 8)),
            0x8000_0000 => (HighestExtendedLeaf, 0, 0, 0),
            // AMD repeats the signature in EAX and mirrors leaf 1's EDX bits (above); Intel's EAX is reserved (0).
            0x8000_0001 when model.IsAmd => (model.Signature, Extended1[1], Extended1[2], AmdExtended1Edx),
            0x8000_0001 => (0, Extended1[1], Extended1[2], Extended1[3]),
            // The brand string, 16 bytes a leaf, zero-padded to 48.
            >= 0x8000_0002 and <= 0x8000_0004 => BrandLeaf(brand, (int)(leaf - 0x8000_0002) * 16),
            // Address sizes: physical bits 7:0, linear bits 15:8 (SDM Vol. 2A Table 3-8).
            0x8000_0008 => ((uint)(ProcessorModel.LinearAddressBits << 8 | ProcessorModel.PhysicalAddressBits), 0, 0, 0),
            // Leaves 2–6, 8–0xA (caches, power, PMU version 0), 0x80000005–7, and subleaves of 7 above 0: zero.
            _ => (0, 0, 0, 0),
        };
    }

    private static (uint, uint, uint, uint) BrandLeaf(string brand, int at) =>
        (Word(brand, at), Word(brand, at + 4), Word(brand, at + 8), Word(brand, at + 12));
}
