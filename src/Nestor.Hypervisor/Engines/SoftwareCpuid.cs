using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Engines;

/// <summary>The CPUID the software machine reports: exactly the features the model implements, so a guest that
/// checks CPUID (as it must, Intel SDM Vol. 2A "CPUID", Tables 3-8 to 3-11, and AMD APM Vol. 3 E.3) never takes a
/// path the machine cannot run. The bits derive from the instruction table (<see cref="CpuidFeatures.Reported"/>): an
/// instruction feature is reported when every instruction of it has a row needing it, a feature of the machine
/// model (paging, the APIC, long mode) when the model backs it. Not reported because not modelled: x87 (FPU), MMX,
/// SSE and later, FXSAVE/XSAVE, SYSENTER/SYSEXIT (SEP), PSE/PSE-36/PAT/MTRR (32-bit paging extras and memory types),
/// MCE/MCA, BMI1 and BMI2 (TZCNT is implemented, but ANDN, BEXTR and BLSI/BLSMSK/BLSR are not), MOVBE, RDRAND. The
/// tests run one instruction per advertised feature on the machine and check that each not-advertised one raises
/// #UD.</summary>
public static class SoftwareCpuid
{
    /// <summary>The CPU's vendor string (leaf 0).</summary>
    public const string Vendor = "NestorSimCPU";

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

    private static uint[] Bits(uint leaf)
    {
        var registers = new uint[4];
        foreach (var f in Features.Where(f => f.Leaf == leaf))
        {
            registers[(int)f.Register] |= 1u << f.Bit;
        }
        return registers;
    }

    /// <summary>CPUID for leaf EAX, subleaf ECX. <paramref name="paravirtual"/>: leaf 0x40000001 announces the
    /// paravirtual interface (docs/paravirt.md).</summary>
    public static (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf, bool paravirtual)
    {
        static uint Word(string s, int at) => BitConverter.ToUInt32(System.Text.Encoding.ASCII.GetBytes(s), at);
        return leaf switch
        {
            // Highest basic leaf 7; vendor in EBX, EDX, ECX order.
            0 => (7, Word(Vendor, 0), Word(Vendor, 8), Word(Vendor, 4)),
            // Family 6, model 0, stepping 0.
            1 => (0x0000_0600, Leaf1[1], Leaf1[2], Leaf1[3]),
            7 when subleaf == 0 => (0, Leaf7[1], Leaf7[2], Leaf7[3]),
            KvmEngine.HypervisorLeaf + 1 => (paravirtual ? 1u : 0, 0, 0, 0),
            KvmEngine.HypervisorLeaf => (KvmEngine.HypervisorLeaf + 1, Word(KvmEngine.HypervisorSignature, 0),
                Word(KvmEngine.HypervisorSignature, 4), Word(KvmEngine.HypervisorSignature, 8)),
            0x8000_0000 => (0x8000_0001, 0, 0, 0),
            0x8000_0001 => (0, Extended1[1], Extended1[2], Extended1[3]),
            _ => (0, 0, 0, 0),
        };
    }
}
