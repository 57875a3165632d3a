using Nestor.Hypervisor.Devices.Assigned.Iommu;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Assigned;

/// <summary>The DMA path of one assigned device: its remapping unit, programmed by the VMM with every page of the VM's
/// RAM, and the copies between the device and host memory through it, page by page.</summary>
/// <remarks>
/// <para>The device's DMA addresses are guest-physical (its guest driver knows no others), so the VMM maps each
/// guest-physical page of RAM to the host frame that backs it. Under a VMM on the software machine that is the P2M's
/// frame; the device may DMA at any moment, with no fault the VMM could take first (a DMA is no CPU access: there is no
/// EPT violation to fill a page in on demand), so every page must have its frame before the device runs and must keep
/// it while the mapping exists. That is why VFIO pins a VM's memory when a device is assigned to it
/// (<c>VFIO_IOMMU_MAP_DMA</c> pins the pages with write access, which also breaks copy-on-write sharing): here every
/// RAM page is made present in the P2M with a private frame (<c>Touch(…, write: true)</c>) and mapped. A pinned page
/// must then not be shared, swapped or ballooned away, or the device would write a frame that is no longer the guest's:
/// the overcommitment mechanisms must leave a VM with an assigned device alone (as a VM with VFIO devices cannot
/// overcommit its memory).</para>
/// <para>The mapping is (re)programmed when the VMM's P2M changes: each run under a VMM has a fresh P2M, so the first
/// DMA of a run programs a new unit (its tables from the VMM's table budget) and gives the old one's tables back.
/// Without a VMM (the bare software machine, KVM) the same unit maps guest RAM to itself.</para>
/// </remarks>
public sealed class AssignedDeviceDma : IDisposable
{
    private const int PageSize = 0x1000;
    private readonly Vm vm;
    private HostPhysicalSpace? space;
    private object? programmedFor;
    private long previousTranslations, previousWalks, previousReferences;

    /// <param name="vm">The VM the device is assigned to.</param>
    /// <param name="source">The device's requester ID.</param>
    public AssignedDeviceDma(Vm vm, SourceId source)
    {
        this.vm = vm;
        Source = source;
        Faults = new DmaFaultLog(vm.Config.Diagnostics);
    }

    /// <summary>The device's requester ID.</summary>
    public SourceId Source { get; }

    /// <summary>The domain every assigned device of a VM is put in (one domain per VM, as VFIO's container).</summary>
    public const ushort Domain = 1;

    /// <summary>The remapping unit as programmed for the current run, or null before the first DMA.</summary>
    public DmaRemappingUnit? Unit { get; private set; }

    /// <summary>Faults of every run.</summary>
    public DmaFaultLog Faults { get; }

    /// <summary>Translations over every run.</summary>
    public long Translations => previousTranslations + (Unit?.Translations ?? 0);

    /// <summary>Table walks over every run.</summary>
    public long Walks => previousWalks + (Unit?.Walks ?? 0);

    /// <summary>Table entries read by the walks over every run.</summary>
    public long WalkReferences => previousReferences + (Unit?.WalkReferences ?? 0);

    /// <summary>Times the VMM programmed a unit (once per run under a VMM, once without).</summary>
    public int Programmings { get; private set; }

    /// <summary>Whether the unit is programmed for the VM's memory as it is now (the current P2M, or guest RAM itself
    /// without a VMM); programs it if not.</summary>
    public DmaRemappingUnit Program()
    {
        GuestPhysicalMap? map = vm.Host.PhysicalMapOf(vm);
        object key = (object?)map ?? vm.Memory;
        if (Unit is not null && ReferenceEquals(key, programmedFor))
        {
            return Unit;
        }
        Release();
        space = map is null ? HostPhysicalSpace.Identity(vm.Memory) : HostPhysicalSpace.OfFramePool(map.Pool);
        var unit = new DmaRemappingUnit(space, Faults);
        unit.AttachDevice(Source, Domain);
        foreach (var (region, _) in vm.Memory.Regions)
        {
            for (ulong page = region.Start.Value; page < region.End.Value; page += PageSize)
            {
                // Pinned: a private frame, present in the P2M from now on (see the remarks).
                ulong host = map is null ? page : map.Touch(page, write: true) & ~0xFFFUL;
                unit.Map(Source, page, host, writable: true);
            }
        }
        Unit = unit;
        programmedFor = key;
        Programmings++;
        return unit;
    }

    /// <summary>Translates the <paramref name="length"/> bytes at DMA address <paramref name="address"/>, page by page,
    /// into <paramref name="hostPages"/> (host-physical address of each piece's start); false at the first page the
    /// unit blocks (recorded in <see cref="Faults"/>), with its address in <paramref name="faultAddress"/>.</summary>
    public bool TryTranslate(ulong address, int length, bool deviceWrites, Span<ulong> hostPages, out int pages, out ulong faultAddress)
    {
        var unit = Program();
        pages = 0;
        faultAddress = 0;
        ulong end = address + (ulong)length;
        if (end < address)
        {
            faultAddress = address;
            unit.Faults.Record(new DmaFault(Source, address, deviceWrites, DmaFaultReason.AddressBeyondWidth));
            return false;
        }
        for (ulong at = address; at < end; at = (at & ~0xFFFUL) + PageSize)
        {
            if (!unit.TryTranslate(Source, at, deviceWrites, out ulong host))
            {
                faultAddress = at;
                return false;
            }
            hostPages[pages++] = host;
        }
        return true;
    }

    /// <summary>Copies from host memory at the translated pages of DMA address <paramref name="address"/> into
    /// <paramref name="destination"/>.</summary>
    public unsafe void Read(ulong address, ReadOnlySpan<ulong> hostPages, Span<byte> destination)
    {
        var memory = space!.Memory;
        int done = 0;
        for (int i = 0; done < destination.Length; i++)
        {
            int piece = Math.Min(destination.Length - done, PageSize - (int)((address + (ulong)done) & 0xFFF));
            new ReadOnlySpan<byte>(memory.Pointer(hostPages[i], piece), piece).CopyTo(destination.Slice(done, piece));
            done += piece;
        }
    }

    /// <summary>Copies <paramref name="source"/> into host memory at the translated pages of DMA address
    /// <paramref name="address"/>; the engine is told the guest-physical range changed (<see cref="GuestDma.Written"/>),
    /// so that it drops what it derived from those bytes (decoded instructions), as a CPU snoops DMA.</summary>
    public unsafe void Write(ulong address, ReadOnlySpan<ulong> hostPages, ReadOnlySpan<byte> source)
    {
        var memory = space!.Memory;
        int done = 0;
        for (int i = 0; done < source.Length; i++)
        {
            int piece = Math.Min(source.Length - done, PageSize - (int)((address + (ulong)done) & 0xFFF));
            source.Slice(done, piece).CopyTo(new Span<byte>(memory.Pointer(hostPages[i], piece), piece));
            done += piece;
        }
        vm.Dma.Written?.Invoke(new GuestPhysical(address), source.Length);
    }

    /// <summary>Gives the unit's tables back.</summary>
    public void Dispose() => Release();

    private void Release()
    {
        if (Unit is { } old)
        {
            previousTranslations += old.Translations;
            previousWalks += old.Walks;
            previousReferences += old.WalkReferences;
            // The previous run's P2M may be gone, but its pool is the host's and lives on: the tables go back to it.
            old.Dispose();
        }
        space?.Dispose();
        (Unit, space, programmedFor) = (null, null, null);
    }
}
