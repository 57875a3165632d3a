using System.Text;
using Nestor.Hypervisor.Boot;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Inspection;

/// <summary>A process of a NestorOS guest, read from guest memory by the VMM.</summary>
/// <param name="PageTableRoot">Its PML4 (guest-physical): the CR3 it runs with.</param>
public sealed record GuestProcess(int Pid, string Name, int State, ulong PageTableRoot);

/// <summary>Virtual-machine introspection of NestorOS: the kernel publishes where its process table is and how an
/// entry is laid out (the <c>nestor_introspection</c> symbol, docs/guest.md), and the VMM reads the table from guest
/// memory — the guest takes no part.</summary>
public static class NestorOSProcesses
{
    private const ulong Magic = 0x5450524f5453454e; // "NESTORPT"

    /// <summary>The live processes, or null when the kernel is not one that publishes its table.</summary>
    public static IReadOnlyList<GuestProcess>? Read(Vm vm)
    {
        if (ElfImage.FindSymbol(vm.Config.Kernel.Contents, "nestor_introspection") is not { } descriptor ||
            !vm.Memory.IsRam(new GuestPhysical(descriptor), 48) || vm.Memory.ReadUInt64(new GuestPhysical(descriptor)) != Magic)
        {
            return null;
        }
        var d = vm.Memory.Span(new GuestPhysical(descriptor), 48);
        ulong table = BitConverter.ToUInt64(d[8..]);
        uint count = BitConverter.ToUInt32(d[16..]), stride = BitConverter.ToUInt32(d[20..]);
        uint pidAt = BitConverter.ToUInt32(d[24..]), stateAt = BitConverter.ToUInt32(d[28..]);
        uint rootAt = BitConverter.ToUInt32(d[32..]), nameAt = BitConverter.ToUInt32(d[36..]);
        uint free = BitConverter.ToUInt32(d[40..]);
        if (stride == 0 || count > 4096 || !vm.Memory.IsRam(new GuestPhysical(table), (ulong)count * stride))
        {
            return null;
        }
        var processes = new List<GuestProcess>();
        for (uint i = 0; i < count; i++)
        {
            var entry = vm.Memory.Span(new GuestPhysical(table + (ulong)i * stride), (int)stride);
            int state = BitConverter.ToInt32(entry[(int)stateAt..]);
            if (state == free)
            {
                continue;
            }
            var name = entry.Slice((int)nameAt, 16);
            int length = name.IndexOf((byte)0);
            processes.Add(new GuestProcess(BitConverter.ToInt32(entry[(int)pidAt..]),
                Encoding.ASCII.GetString(name[..(length < 0 ? 16 : length)]), state, BitConverter.ToUInt64(entry[(int)rootAt..])));
        }
        return processes;
    }
}
