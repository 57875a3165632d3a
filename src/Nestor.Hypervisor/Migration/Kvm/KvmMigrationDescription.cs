using System.Globalization;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Migration.Kvm;

/// <summary>What a KVM migration stream's header says about the VM, beyond the kernel it carries: its RAM and command
/// line, one <c>key=value</c> a line, as <see cref="MigrationVmDescription"/> does for hosted sim VMs. The destination
/// builds a <see cref="VmConfig"/> from it and checks that the VM it built has the source's configuration text
/// (<see cref="SnapshotFile.ConfigurationText"/>), by its fingerprint.</summary>
/// <param name="MemoryBytes">Guest RAM.</param>
/// <param name="CommandLine">The kernel command line.</param>
public sealed record KvmMigrationDescription(ulong MemoryBytes, string CommandLine)
{
    /// <summary>What a VM must not have to migrate on KVM, or null when it may: the KVM engine's migration moves RAM, the
    /// vCPU, COM1 and the debug-exit port, and nothing that writes guest RAM behind KVM's dirty log (a device's DMA is
    /// the VMM's write through the host mapping, which KVM does not log) or lives in a file of this host.</summary>
    public static string? Unsupported(VmConfig config) =>
        config.Engine != EngineKind.Kvm ? "it does not run on KVM"
        : config.Disks.Count > 0 ? "it has disks (their files stay on this host, and their DMA bypasses KVM's dirty log)"
        : config.VirtioConsole ? "it has a virtio-console (its DMA bypasses KVM's dirty log)"
        : config.Balloon ? "it has a virtio-balloon (its DMA bypasses KVM's dirty log)"
        : config.Multiboot || config.Modules.Count > 0 ? "it boots a Multiboot kernel, which runs on sim only"
        : config.CommandLine.Contains('\n') ? "its command line holds a line break"
        : null;

    /// <summary>The header of a stream migrating <paramref name="vm"/>.</summary>
    public static MigrationHeader HeaderOf(Vm vm, ushort? version = null)
    {
        string configuration = SnapshotFile.ConfigurationText(vm, null);
        string description = new KvmMigrationDescription(vm.Config.MemoryBytes, vm.Config.CommandLine).Encode();
        return new MigrationHeader(version ?? MigrationStream.FormatVersion, EngineKind.Kvm, Technique.Native, null, false, vm.Config.MemoryBytes,
            MigrationStream.FingerprintOf(configuration), configuration, description, vm.Config.Kernel);
    }

    /// <summary>Its text.</summary>
    public string Encode()
    {
        var text = new StringBuilder();
        text.Append("memory=").Append(MemoryBytes.ToString(CultureInfo.InvariantCulture)).Append('\n');
        text.Append("cmdline=").Append(CommandLine).Append('\n');
        return text.ToString();
    }

    /// <summary>The description <paramref name="text"/> holds.</summary>
    /// <exception cref="MigrationStreamException">Text this Nestor does not write.</exception>
    public static KvmMigrationDescription Decode(string text)
    {
        ulong? memory = null;
        string? cmdline = null;
        foreach (string line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith("memory=", StringComparison.Ordinal) && ulong.TryParse(line["memory=".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out ulong m))
            {
                memory = m;
            }
            else if (line.StartsWith("cmdline=", StringComparison.Ordinal))
            {
                cmdline = line["cmdline=".Length..];
            }
            else
            {
                throw Bad(line);
            }
        }
        return memory is { } bytes ? new KvmMigrationDescription(bytes, cmdline ?? "") : throw Bad("(no memory)");
    }

    private static MigrationStreamException Bad(string what) =>
        new($"the migration stream's VM description holds '{what}', which this Nestor does not write for a KVM VM", MigrationRefusal.Invalid);
}
