namespace Nestor.Hypervisor.Engines;

/// <summary>The CPUID the software machine reports: exactly the features the model implements, one row each, so a
/// guest that checks CPUID (as it must, Intel SDM Vol. 2A "CPUID", Tables 3-8 to 3-11, and AMD APM Vol. 3 E.3) never
/// takes a path the machine cannot run. Not advertised because not modelled: x87 (FPU), MMX, SSE and later, FXSAVE/
/// XSAVE, SYSENTER/SYSEXIT (SEP), PSE/PSE-36/PAT/MTRR (32-bit paging extras and memory types), MCE/MCA, BMI1 and
/// BMI2 (TZCNT is implemented, but ANDN, BEXTR and BLSI/BLSMSK/BLSR are not, so BMI1 is not claimed; a guest using
/// TZCNT's encoding as REP BSF, as compilers do for a count that is never of zero, gets the same result), MOVBE,
/// RDRAND. The tests run one instruction per advertised feature on the
/// machine and check that each not-advertised one raises #UD.</summary>
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

    /// <summary>Every feature bit the machine sets.</summary>
    public static readonly IReadOnlyList<Feature> Features =
    [
        new(1, Register.Edx, 4, "TSC", "RDTSC, the time-stamp counter (one tick per retired instruction)"),
        new(1, Register.Edx, 5, "MSR", "RDMSR/WRMSR"),
        new(1, Register.Edx, 6, "PAE", "PAE and 4-level paging (the page walker)"),
        new(1, Register.Edx, 8, "CX8", "CMPXCHG8B"),
        new(1, Register.Edx, 9, "APIC", "the local APIC at IA32_APIC_BASE (its timer)"),
        new(1, Register.Edx, 13, "PGE", "global pages (CR4.PGE, TLB entries kept across CR3 loads)"),
        new(1, Register.Edx, 15, "CMOV", "CMOVcc"),
        new(1, Register.Ecx, 13, "CX16", "CMPXCHG16B"),
        new(1, Register.Ecx, 23, "POPCNT", "POPCNT"),
        new(1, Register.Ecx, 31, "hypervisor", "the machine is virtual: leaves 0x40000000 and up describe Nestor"),
        new(7, Register.Ebx, 7, "SMEP", "CR4.SMEP in the page walker"),
        new(7, Register.Ebx, 20, "SMAP", "CR4.SMAP with RFLAGS.AC in the page walker, and CLAC/STAC"),
        new(0x8000_0001, Register.Ecx, 0, "LAHF-SAHF", "LAHF and SAHF in 64-bit mode"),
        new(0x8000_0001, Register.Ecx, 5, "LZCNT", "LZCNT"),
        new(0x8000_0001, Register.Edx, 11, "SYSCALL", "SYSCALL/SYSRET and their MSRs"),
        new(0x8000_0001, Register.Edx, 20, "NX", "EFER.NXE and the execute-disable bit in the page walker"),
        new(0x8000_0001, Register.Edx, 26, "Page1GB", "1 GiB pages in the page walker"),
        new(0x8000_0001, Register.Edx, 27, "RDTSCP", "RDTSCP and IA32_TSC_AUX"),
        new(0x8000_0001, Register.Edx, 29, "LM", "long mode"),
    ];

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
