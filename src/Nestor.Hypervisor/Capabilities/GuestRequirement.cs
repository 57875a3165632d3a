using Iced.Intel;
using Nestor.Hypervisor.Boot;

namespace Nestor.Hypervisor.Capabilities;

/// <summary>Something a guest needs from the CPU that not every host KVM provides (the nested KVM on the
/// development machines runs straight-line ring-0 code with port I/O only).</summary>
public enum GuestFeature
{
    /// <summary>Delivery of exceptions and interrupts through the guest's IDT (lidt, int n, iretq).</summary>
    ExceptionDelivery,
    /// <summary>Entering CPL 3 (iretq/sysretq to user code).</summary>
    UserMode,
    /// <summary>CPL 3 → CPL 0 through SYSCALL/SYSENTER.</summary>
    SystemCall,
    /// <summary>The POPCNT instruction.</summary>
    Popcnt,
    /// <summary>The CMPXCHG16B instruction.</summary>
    Cmpxchg16b,
}

/// <summary>Evidence that a guest needs <paramref name="Feature"/>: the instruction at <paramref name="Address"/>.</summary>
public sealed record GuestRequirement(GuestFeature Feature, ulong Address, string Instruction);

/// <summary>Finds what a guest needs by decoding its executable code (a linear sweep with Iced's decoder over the
/// loaded executable ranges) and looking for the instructions that imply each <see cref="GuestFeature"/>.
/// Data mixed into code can only add spurious evidence, never hide real instructions, so a guest refused by
/// mistake can be run with <c>--force</c>.</summary>
public static class GuestRequirementScanner
{
    /// <summary>The first instruction found for each feature the kernel's code uses.</summary>
    public static IReadOnlyList<GuestRequirement> Scan(LoadedKernel kernel)
    {
        var found = new Dictionary<GuestFeature, GuestRequirement>();
        var formatter = new IntelFormatter();
        var output = new StringOutput();
        foreach (var range in kernel.Ranges.Where(r => r.Executable))
        {
            var decoder = Decoder.Create(64, new ByteArrayCodeReader(range.Bytes.ToArray()), range.Start.Value);
            ulong end = range.Start.Value + (ulong)range.Bytes.Length;
            while (decoder.IP < end)
            {
                decoder.Decode(out var instruction);
                if (instruction.IsInvalid)
                {
                    continue;
                }
                GuestFeature? feature = instruction.Mnemonic switch
                {
                    Mnemonic.Lidt or Mnemonic.Int or Mnemonic.Int1 or Mnemonic.Int3 or Mnemonic.Into or Mnemonic.Iretq
                        or Mnemonic.Iretd => GuestFeature.ExceptionDelivery,
                    Mnemonic.Sysretq or Mnemonic.Sysret or Mnemonic.Sysexitq or Mnemonic.Sysexit => GuestFeature.UserMode,
                    Mnemonic.Syscall or Mnemonic.Sysenter => GuestFeature.SystemCall,
                    Mnemonic.Popcnt => GuestFeature.Popcnt,
                    Mnemonic.Cmpxchg16b => GuestFeature.Cmpxchg16b,
                    _ => null,
                };
                if (feature is { } f && !found.ContainsKey(f))
                {
                    formatter.Format(instruction, output);
                    found[f] = new GuestRequirement(f, instruction.IP, output.ToStringAndReset());
                }
            }
        }
        return found.Values.OrderBy(r => r.Feature).ToList();
    }
}
