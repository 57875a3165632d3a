using Iced.Intel;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Memory;

namespace Nestor.Hypervisor.BuiltIn;

/// <summary>Assembles small guests with Iced's assembler, for the built-in demo and the host capability probes, so
/// that no guest binary is ever committed: every guest Nestor ships is built from the source next to it.</summary>
public static class GuestAssembler
{
    /// <summary>Assembles what <paramref name="emit"/> writes, for loading at <paramref name="loadAddress"/>.</summary>
    public static byte[] Assemble(Action<Assembler> emit, ulong? loadAddress = null, int bitness = 64)
    {
        var assembler = new Assembler(bitness);
        emit(assembler);
        using var stream = new MemoryStream();
        assembler.Assemble(new StreamCodeWriter(stream), loadAddress ?? GuestMemoryLayout.DefaultFlatLoadAddress.Value);
        return stream.ToArray();
    }

    /// <summary>A flat kernel source for the assembled bytes, loaded at the default flat address.</summary>
    public static KernelImageSource Flat(string name, byte[] code) => new(name, code, KernelFormat.Flat);

    /// <summary>Emits <paramref name="text"/> as NUL-terminated bytes.</summary>
    public static void AsciiZ(this Assembler a, string text)
    {
        a.db(System.Text.Encoding.ASCII.GetBytes(text + "\0"));
    }
}
