namespace Nestor.Hypervisor.Devices.Platform;

/// <summary>The optional platform devices a PC-booted (Multiboot) VM may be given with <c>nestor run --device NAME</c>,
/// named as QEMU names them: <c>intel-iommu</c> (the VT-d unit at 0xFED90000 with interrupt remapping, QEMU's
/// <c>-device intel-iommu,intremap=on,eim=off</c>) and <c>edu</c> (QEMU's educational PCI device at 00:01.0). None by
/// default, so every other guest sees the platform unchanged.</summary>
public sealed record PlatformDevices
{
    /// <summary>The names <see cref="Parse"/> accepts.</summary>
    public static readonly IReadOnlyList<string> Names = ["intel-iommu", "edu"];

    /// <summary>No optional device.</summary>
    public static readonly PlatformDevices None = new();

    /// <summary>The VT-d remapping unit.</summary>
    public bool IntelIommu { get; init; }

    /// <summary>The edu device.</summary>
    public bool Edu { get; init; }

    /// <summary>True when any is asked for.</summary>
    public bool Any => IntelIommu || Edu;

    /// <summary>Parses the <c>--device</c> values.</summary>
    /// <exception cref="ArgumentException">A name that is not a device Nestor has (the message lists those it has).</exception>
    public static PlatformDevices Parse(IEnumerable<string> names)
    {
        var devices = None;
        foreach (var name in names)
        {
            devices = name.Trim().ToLowerInvariant() switch
            {
                "intel-iommu" => devices with { IntelIommu = true },
                "edu" => devices with { Edu = true },
                _ => throw new ArgumentException($"there is no platform device '{name}'; the devices are {string.Join(", ", Names)}"),
            };
        }
        return devices;
    }
}
