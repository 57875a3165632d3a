using System.Buffers.Binary;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Virtio.Balloon;

/// <summary>The memory statistics tags of the balloon's statsq (virtio 1.2 §5.5.6.3); values are bytes or counts.</summary>
public enum BalloonStatistic : ushort
{
    /// <summary>VIRTIO_BALLOON_S_SWAP_IN: bytes swapped in.</summary>
    SwapIn = 0,
    /// <summary>VIRTIO_BALLOON_S_SWAP_OUT: bytes swapped out.</summary>
    SwapOut = 1,
    /// <summary>VIRTIO_BALLOON_S_MAJFLT: major page faults.</summary>
    MajorFaults = 2,
    /// <summary>VIRTIO_BALLOON_S_MINFLT: minor page faults.</summary>
    MinorFaults = 3,
    /// <summary>VIRTIO_BALLOON_S_MEMFREE: bytes the guest is not using at all.</summary>
    FreeMemory = 4,
    /// <summary>VIRTIO_BALLOON_S_MEMTOT: bytes of memory the guest has.</summary>
    TotalMemory = 5,
    /// <summary>VIRTIO_BALLOON_S_AVAIL: bytes available to new applications without swapping.</summary>
    AvailableMemory = 6,
    /// <summary>VIRTIO_BALLOON_S_CACHES: bytes of disk caches that can be reclaimed quickly.</summary>
    Caches = 7,
}

/// <summary>virtio-balloon (virtio 1.2 §5.5, device ID 5): the host asks the guest for memory by raising the target
/// <c>num_pages</c> (<see cref="SetTarget"/>, with a configuration change notification); the driver allocates that
/// many pages inside the guest, hands their 4 KiB page frame numbers (32-bit PFNs, address >> 12) on the inflateq and
/// writes how many it holds to <c>actual</c>; each inflated page's memory is given back to the host at once (under a
/// VMM the P2M takes the guest frame away, <see cref="Paging.GuestPhysicalMap.Reclaim(ulong)"/>; without one, on sim
/// native and on KVM, the page of guest RAM is discarded with <c>madvise(MADV_DONTNEED)</c>, which KVM's MMU notifier
/// turns into an unmapped EPT entry). A lower target makes the driver deflate: the PFNs come back on the deflateq and
/// the guest may use the pages again; they are only accounted here, as the guest's next touch refills them (a zero
/// page). It offers VIRTIO_BALLOON_F_STATS_VQ (the statsq: the guest's memory statistics, kept as
/// <see cref="Statistics"/>) and VIRTIO_BALLOON_F_DEFLATE_ON_OOM (the driver deflates before the guest runs out of
/// memory, so <c>actual</c> may stay below the target). This is the mechanism of ESX's balloon (Waldspurger, OSDI
/// 2002, §3.2). A PFN that is not RAM of this VM, inflated twice, or deflated without being inflated is refused and
/// counted (<see cref="RefusedPfns"/>); the VM goes on.</summary>
public sealed class VirtioBalloon : IVirtioDevice
{
    /// <summary>VIRTIO_BALLOON_F_STATS_VQ (1): a statistics virtqueue is present.</summary>
    public const ulong FeatureStatsQueue = 1UL << 1;

    /// <summary>VIRTIO_BALLOON_F_DEFLATE_ON_OOM (2): the driver deflates when the guest runs out of memory.</summary>
    public const ulong FeatureDeflateOnOom = 1UL << 2;

    /// <summary>Queue indices (§5.5.2).</summary>
    public const int InflateQueue = 0, DeflateQueue = 1, StatsQueue = 2;

    /// <summary>Each queue's size.</summary>
    public const ushort QueueSize = 64;

    /// <summary>Bytes of a balloon page (§5.5.6: PFNs are of 4096-byte pages whatever the guest's page size).</summary>
    public const int PageBytes = 4096;

    private const int ConfigLength = 8; // num_pages, actual (§5.5.4; the others need features not offered)
    private const int StatBytes = 10;   // le16 tag, le64 val, packed (§5.5.6.3)
    private const int MaximumStats = 64;

    private readonly Vm vm;
    private readonly bool[] inflated; // by guest frame
    private readonly ulong ramPages;
    private readonly Dictionary<BalloonStatistic, ulong> statistics = [];
    private readonly byte[] buffer = new byte[PageBytes];
    private readonly Lock gate = new();
    private DescriptorChain? heldStats;
    private SplitVirtqueue? statsQueue;
    private uint target;
    private uint actual;

    /// <summary>A balloon for <paramref name="vm"/> whose first target is <paramref name="initialTarget"/> pages.</summary>
    public VirtioBalloon(Vm vm, uint initialTarget = 0)
    {
        this.vm = vm;
        ulong top = vm.Memory.Regions.Max(r => r.Region.End.Value);
        inflated = new bool[top / PageBytes];
        ramPages = (ulong)vm.Memory.Regions.Sum(r => (long)(r.Region.Length / PageBytes));
        CheckTarget(initialTarget);
        target = initialTarget;
    }

    public string Name => "virtio-balloon";

    public VirtioDeviceType DeviceType => VirtioDeviceType.Balloon;

    public ulong DeviceFeatures => FeatureStatsQueue | FeatureDeflateOnOom;

    public int QueueCount => 3;

    public ushort MaximumQueueSize(int queue) => QueueSize;

    public int ConfigSize => ConfigLength;

    /// <summary>The transport the device sits behind (for the configuration change notification).</summary>
    public VirtioMmioTransport? Transport { get; set; }

    /// <summary>The pages the host wants the guest to give up (<c>num_pages</c>).</summary>
    public uint Target
    {
        get
        {
            lock (gate)
            {
                return target;
            }
        }
    }

    /// <summary>The pages the driver says the balloon holds (<c>actual</c>, written by the driver).</summary>
    public uint Actual => actual;

    /// <summary>Pages in the balloon now (inflated and not deflated), as the device counted the PFNs.</summary>
    public long InflatedPages { get; private set; }

    /// <summary>Pages inflated so far.</summary>
    public long PagesInflated { get; private set; }

    /// <summary>Pages deflated so far.</summary>
    public long PagesDeflated { get; private set; }

    /// <summary>Bytes of inflated pages that were resident in the host when they were discarded (measured with
    /// <c>mincore</c> just before the discard): the memory the balloon gave back to the host.</summary>
    public long BytesReturnedToHost { get; private set; }

    /// <summary>PFNs refused: not RAM of this VM, inflated while in the balloon, or deflated while not in it.</summary>
    public long RefusedPfns { get; private set; }

    /// <summary>Statistics buffers the driver sent on the statsq.</summary>
    public long StatisticsReports { get; private set; }

    /// <summary>The guest's last-known memory statistics (§5.5.6.3), by tag.</summary>
    public IReadOnlyDictionary<BalloonStatistic, ulong> Statistics => statistics;

    /// <summary>The features the driver accepted.</summary>
    public ulong Negotiated { get; private set; }

    /// <summary>The balloon of <paramref name="vm"/>, or null when it has none.</summary>
    public static VirtioBalloon? Of(Vm vm) => VirtioSlots.Of(vm).Select(t => t.Device).OfType<VirtioBalloon>().FirstOrDefault();

    /// <summary>Attaches a balloon in the virtio-mmio slot after the virtio-blk disks and the virtio-console when the
    /// configuration asks for one (<see cref="Configuration.VmConfig.Balloon"/>).</summary>
    internal static void AttachIfConfigured(Vm vm)
    {
        if (!vm.Config.Balloon)
        {
            return;
        }
        int slot = vm.Config.Disks.Count(d => d.Interface == Storage.DiskInterface.Virtio) + (vm.Config.VirtioConsole ? 1 : 0);
        var device = new VirtioBalloon(vm, vm.Config.BalloonTargetPages);
        device.Transport = VirtioSlots.Attach(vm, device, slot);
    }

    /// <summary>Sets the target (<c>num_pages</c>) the driver inflates or deflates to, and notifies the driver of the
    /// configuration change (§5.5.6: the device sets num_pages; §4.2.3.4: the configuration change notification).</summary>
    /// <exception cref="Errors.BadInputException">More pages than the VM has.</exception>
    public void SetTarget(uint pages)
    {
        CheckTarget(pages);
        lock (gate)
        {
            if (pages == target)
            {
                return;
            }
            target = pages;
            Transport?.ConfigurationChanged();
        }
    }

    /// <summary>Asks the driver for fresh statistics: the buffer it left on the statsq is returned to it (§5.5.6.3:
    /// the device uses the buffer when it wants statistics), and it refills and returns it. False when the driver has
    /// left none (no STATS_VQ, or it has not answered the last request yet).</summary>
    public bool RequestStatistics()
    {
        lock (gate)
        {
            if (heldStats is null || statsQueue is null)
            {
                return false;
            }
            statsQueue.Complete(heldStats, 0);
            heldStats = null;
            return true;
        }
    }

    private void CheckTarget(uint pages)
    {
        if (pages > ramPages)
        {
            throw new Errors.BadInputException(
                $"a balloon target of {pages} pages ({(ulong)pages * PageBytes >> 20} MiB) is more than the VM's {ramPages} pages of RAM",
                $"Give a target of at most {ramPages} pages ({ramPages * PageBytes >> 20} MiB)");
        }
    }

    public void ReadConfig(int offset, Span<byte> destination)
    {
        Span<byte> config = stackalloc byte[ConfigLength];
        lock (gate)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(config, target);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(config[4..], actual);
        config.Slice(offset, destination.Length).CopyTo(destination);
    }

    public void WriteConfig(int offset, ReadOnlySpan<byte> source)
    {
        // §5.5.4: only actual is the driver's to write; num_pages is the device's (a write to it is ignored).
        if (offset < 4 || offset + source.Length > ConfigLength)
        {
            return;
        }
        Span<byte> value = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(value, actual);
        source.CopyTo(value[(offset - 4)..]);
        actual = BinaryPrimitives.ReadUInt32LittleEndian(value);
    }

    public void Activate(ulong negotiated) => Negotiated = negotiated;

    /// <summary>A reset gives the guest its pages back: a driver that starts again starts with an empty balloon
    /// (§5.5.5: actual is 0 at initialization).</summary>
    public void Reset()
    {
        lock (gate)
        {
            Array.Clear(inflated);
            InflatedPages = 0;
            actual = 0;
            heldStats = null;
            statsQueue = null;
        }
    }

    public void Process(int index, SplitVirtqueue queue)
    {
        switch (index)
        {
            case InflateQueue:
                ServePfns(queue, inflate: true);
                break;
            case DeflateQueue:
                ServePfns(queue, inflate: false);
                break;
            default:
                ServeStatistics(queue);
                break;
        }
    }

    // §5.5.6.1: each buffer is an array of le32 PFNs, readable by the device.
    private void ServePfns(SplitVirtqueue queue, bool inflate)
    {
        while (queue.TryTake(out var chain))
        {
            for (long done = 0; done + 4 <= chain.ReadableLength;)
            {
                int n = (int)Math.Min(buffer.Length, (chain.ReadableLength - done) & ~3L);
                var bytes = buffer.AsSpan(0, n);
                if (!chain.Read(done, bytes))
                {
                    queue.Fail(VirtqueueFault.OutsideRam);
                    return;
                }
                for (int i = 0; i < n; i += 4)
                {
                    uint pfn = BinaryPrimitives.ReadUInt32LittleEndian(bytes[i..]);
                    if (inflate)
                    {
                        Inflate(pfn);
                    }
                    else
                    {
                        Deflate(pfn);
                    }
                }
                done += n;
            }
            queue.Complete(chain, 0);
        }
    }

    private void Inflate(uint pfn)
    {
        ulong address = (ulong)pfn * PageBytes;
        if (pfn >= (uint)inflated.Length || !vm.Memory.IsRam(new GuestPhysical(address), PageBytes) || inflated[pfn])
        {
            RefusedPfns++;
            return;
        }
        inflated[pfn] = true;
        InflatedPages++;
        PagesInflated++;
        var page = new GuestPhysical(address);
        // What the CPU decoded from the page goes before its bytes do (the P2M's mapping of it is still there to
        // name its host frame).
        vm.Dma.Written?.Invoke(page, PageBytes);
        if (IsHomeResident(address))
        {
            BytesReturnedToHost += PageBytes;
        }
        if (vm.Host.PhysicalMapOf(vm) is { } map)
        {
            map.Reclaim(address);
        }
        else
        {
            DiscardHome(address);
        }
    }

    private void Deflate(uint pfn)
    {
        if (pfn >= (uint)inflated.Length || !inflated[pfn])
        {
            RefusedPfns++;
            return;
        }
        // Only accounted: the page's memory was given back at inflation, and the guest's next touch refills it.
        inflated[pfn] = false;
        InflatedPages--;
        PagesDeflated++;
    }

    private bool IsHomeResident(ulong address)
    {
        foreach (var (region, backing) in vm.Memory.Regions)
        {
            if (address >= region.Start.Value && address < region.End.Value)
            {
                return backing.IsResident(address - region.Start.Value);
            }
        }
        return false;
    }

    private void DiscardHome(ulong address)
    {
        foreach (var (region, backing) in vm.Memory.Regions)
        {
            if (address >= region.Start.Value && address < region.End.Value)
            {
                backing.Discard(address - region.Start.Value, PageBytes);
                return;
            }
        }
    }

    // §5.5.6.3: the driver leaves one buffer of {le16 tag, le64 val} entries; the device reads it and keeps it until
    // it wants new statistics (RequestStatistics), when it returns it to the driver.
    private void ServeStatistics(SplitVirtqueue queue)
    {
        while (queue.TryTake(out var chain))
        {
            int n = (int)Math.Min(chain.ReadableLength / StatBytes, MaximumStats) * StatBytes;
            var bytes = buffer.AsSpan(0, n);
            if (!chain.Read(0, bytes))
            {
                queue.Fail(VirtqueueFault.OutsideRam);
                return;
            }
            for (int i = 0; i < n; i += StatBytes)
            {
                var tag = (BalloonStatistic)BinaryPrimitives.ReadUInt16LittleEndian(bytes[i..]);
                statistics[tag] = BinaryPrimitives.ReadUInt64LittleEndian(bytes[(i + 2)..]);
            }
            StatisticsReports++;
            lock (gate)
            {
                if (heldStats is not null && statsQueue is not null)
                {
                    // A second buffer while one is held: give the older back, keep the newer.
                    statsQueue.Complete(heldStats, 0);
                }
                heldStats ??= new DescriptorChain(vm.Dma, 1);
                heldStats.Start(chain.Head);
                statsQueue = queue;
            }
        }
    }

    /// <summary>The target, actual, counters, the inflated PFNs and the last statistics.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteUInt32(target);
        writer.WriteUInt32(actual);
        writer.WriteInt64(PagesInflated);
        writer.WriteInt64(PagesDeflated);
        writer.WriteInt64(BytesReturnedToHost);
        writer.WriteInt64(RefusedPfns);
        writer.WriteInt64(StatisticsReports);
        writer.WriteInt64(InflatedPages);
        for (int pfn = 0; pfn < inflated.Length; pfn++)
        {
            if (inflated[pfn])
            {
                writer.WriteUInt32((uint)pfn);
            }
        }
        writer.WriteInt32(statistics.Count);
        foreach (var (tag, value) in statistics)
        {
            writer.WriteUInt16((ushort)tag);
            writer.WriteUInt64(value);
        }
    }

    public void Restore(Persistence.SnapshotReader reader)
    {
        uint savedTarget = reader.ReadUInt32();
        if (savedTarget > ramPages)
        {
            throw reader.Invalid($"a balloon target of {savedTarget} pages, more than the VM's {ramPages}");
        }
        target = savedTarget;
        actual = reader.ReadUInt32();
        PagesInflated = reader.ReadInt64();
        PagesDeflated = reader.ReadInt64();
        BytesReturnedToHost = reader.ReadInt64();
        RefusedPfns = reader.ReadInt64();
        StatisticsReports = reader.ReadInt64();
        long count = reader.ReadInt64();
        if (count < 0 || count > inflated.Length)
        {
            throw reader.Invalid($"{count} inflated pages, more than the VM's {inflated.Length} frames");
        }
        Array.Clear(inflated);
        for (long i = 0; i < count; i++)
        {
            uint pfn = reader.ReadUInt32();
            if (pfn >= (uint)inflated.Length || inflated[pfn])
            {
                throw reader.Invalid($"inflated PFN 0x{pfn:x} is beyond the VM's RAM or listed twice");
            }
            inflated[pfn] = true;
        }
        InflatedPages = count;
        int stats = reader.ReadInt32();
        if (stats is < 0 or > MaximumStats)
        {
            throw reader.Invalid($"{stats} balloon statistics, more than {MaximumStats}");
        }
        statistics.Clear();
        for (int i = 0; i < stats; i++)
        {
            var tag = (BalloonStatistic)reader.ReadUInt16();
            statistics[tag] = reader.ReadUInt64();
        }
        heldStats = null;
        statsQueue = null;
    }
}
