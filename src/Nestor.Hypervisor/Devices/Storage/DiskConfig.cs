namespace Nestor.Hypervisor.Devices.Storage;

/// <summary>The three ways the course names for giving a VM a disk.</summary>
public enum DiskInterface
{
    /// <summary>Emulated: an ATA disk on the primary IDE channel, programmed through I/O ports (PIO).</summary>
    Ata,

    /// <summary>Paravirtual: virtio-blk over virtio-mmio.</summary>
    Virtio,

    /// <summary>Dedicated: a DMA disk controller whose registers are mapped into the guest, its DMA confined by the
    /// IOMMU.</summary>
    Assigned,
}

/// <summary>One <c>--disk</c>: a raw image file on the host and the interface the guest sees it through.</summary>
/// <param name="Path">The raw disk image (its size a multiple of 512 bytes).</param>
/// <param name="Interface">How the guest sees it.</param>
/// <param name="ReadOnly">Writes are refused; the file is opened read-only.</param>
public sealed record DiskConfig(string Path, DiskInterface Interface = DiskInterface.Virtio, bool ReadOnly = false)
{
    /// <summary>A backend given directly instead of a file (tests, scratch disks); <see cref="Path"/> is then only a
    /// name.</summary>
    public IBlockBackend? Backend { get; init; }

    /// <summary>The interface names <c>if=</c> takes.</summary>
    public static string InterfaceName(DiskInterface kind) => kind switch
    {
        DiskInterface.Ata => "ata",
        DiskInterface.Virtio => "virtio",
        _ => "assigned",
    };

    /// <summary>Parses one <c>--disk</c> value: <c>FILE[,if=ata|virtio|assigned][,ro]</c>, the keys in any order, each
    /// at most once (QEMU's <c>-drive</c> spelling).</summary>
    /// <exception cref="Errors.BadInputException">No file, an unknown key or interface, or a key given twice.</exception>
    public static DiskConfig Parse(string text)
    {
        string[] parts = text.Split(',');
        string path = parts[0];
        if (path.Length == 0)
        {
            throw new Errors.BadInputException($"--disk '{text}' names no file",
                "Give the image file first: --disk FILE[,if=ata|virtio|assigned][,ro]");
        }
        DiskInterface? kind = null;
        bool? readOnly = null;
        foreach (string option in parts[1..])
        {
            int equals = option.IndexOf('=');
            string key = equals < 0 ? option : option[..equals];
            string? value = equals < 0 ? null : option[(equals + 1)..];
            switch (key)
            {
                case "if" when kind is null:
                    kind = value switch
                    {
                        "ata" => DiskInterface.Ata,
                        "virtio" => DiskInterface.Virtio,
                        "assigned" => DiskInterface.Assigned,
                        _ => throw new Errors.BadInputException($"--disk {text}: there is no disk interface '{value}'",
                            "Use if=ata (emulated IDE), if=virtio (paravirtual virtio-blk) or if=assigned (the dedicated controller)"),
                    };
                    break;
                case "ro" when readOnly is null:
                    readOnly = value switch
                    {
                        null or "on" => true,
                        "off" => false,
                        _ => throw new Errors.BadInputException($"--disk {text}: ro takes no value but on or off, not '{value}'",
                            "Write ,ro for a read-only disk, or leave it out"),
                    };
                    break;
                case "if" or "ro":
                    throw new Errors.BadInputException($"--disk {text}: '{key}' is given twice", $"Give {key} once");
                default:
                    throw new Errors.BadInputException($"--disk {text}: unknown option '{option}'",
                        "A disk takes FILE[,if=ata|virtio|assigned][,ro]");
            }
        }
        return new DiskConfig(path, kind ?? DiskInterface.Virtio, readOnly ?? false);
    }
}
