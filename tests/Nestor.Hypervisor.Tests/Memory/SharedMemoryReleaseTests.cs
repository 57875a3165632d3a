using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Memory.Sharing;
using Nestor.Hypervisor.Memory.Swapping;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests.MemoryOvercommit;

/// <summary>Sharing and swapping free the host's real memory (Waldspurger, OSDI 2002, §4.1: the redundant copy is
/// reclaimed): a merged page's home memory is given back to the host kernel, measured by mincore over the VMs' RAM and
/// the pool's store and by the process's VmRSS, while every VMM-side access (device DMA, the VMM's reads and writes,
/// snapshots) sees the page's true content through the P2M.</summary>
[Collection(SerialMemoryCollection.Name)]
public sealed class SharedMemoryReleaseTests : IDisposable
{
    private const int Pages = 4096; // 16 MiB per VM: far above the process's own noise in VmRSS
    private const ulong Base = 0x40_0000;
    private readonly string directory = Directory.CreateTempSubdirectory("nestor-release-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    private static Vm NewVm(Host host) =>
        Vm.Create(new VmConfig { Kernel = BuiltIn.GuestAssembler.Flat("x", [0xF4]), MemoryBytes = 32UL << 20, SerialOutput = Stream.Null }, host);

    /// <summary>Page <paramref name="i"/>'s bytes: distinct pages (none zero), the same in every VM.</summary>
    private static void Fill(Vm vm, int i, ulong salt = 0)
    {
        var page = vm.Memory.Span(new GuestPhysical(Base + (ulong)i * 4096), 4096);
        for (int q = 0; q < 512; q++)
        {
            BitConverter.TryWriteBytes(page[(q * 8)..], ((ulong)i << 32) ^ (ulong)q ^ 0x5EED_0000_0000_0001 ^ salt);
        }
    }

    private static ulong ResidentBytes(Host host, params Vm[] vms) =>
        host.FramePool.StoreResidentBytes() + (ulong)vms.Sum(vm => vm.Memory.Regions.Sum(r => (long)r.Backing.ResidentBytes()));

    [Fact]
    public void Merging_identical_vms_pages_gives_their_home_memory_back_and_resident_memory_falls_by_the_pages_saved()
    {
        using var host = Host.ForGuestMemory(128UL << 20);
        using var one = NewVm(host);
        using var two = NewVm(host);
        var first = host.NewPhysicalMap(one);
        var second = host.NewPhysicalMap(two);
        for (int i = 0; i < Pages; i++)
        {
            Fill(one, i);
            Fill(two, i);
            first.Touch(new GuestPhysical(Base + (ulong)i * 4096));
            second.Touch(new GuestPhysical(Base + (ulong)i * 4096));
        }
        using var scanner = new PageSharingScanner(host, new ScanRates(1e9));
        GC.Collect();
        ulong residentBefore = ResidentBytes(host, one, two);
        long rssBefore = Memory.ProcessMemory.ResidentSetBytes();

        scanner.ScanAll(1);

        GC.Collect();
        ulong residentAfter = ResidentBytes(host, one, two);
        long rssAfter = Memory.ProcessMemory.ResidentSetBytes();
        var counters = scanner.Counters();
        Assert.True(counters.PagesSharing >= Pages, counters.ToString());
        // Each pair of equal pages: two homes given back, one frame of the pool's own written.
        Assert.Equal(2L * Pages, first.HomesReleased + second.HomesReleased);
        long saved = (long)residentBefore - (long)residentAfter;
        Assert.True(saved >= Pages * 4096L, $"mincore: {residentBefore} bytes resident before, {residentAfter} after");
        Assert.True(rssBefore - rssAfter >= Pages * 4096L * 9 / 10, $"VmRSS {rssBefore} before, {rssAfter} after: expected to fall by {Pages * 4096L}");

        // The VMM still reads every page's true bytes, and a snapshot writer's read leaves them shared.
        for (int i = 0; i < Pages; i += 97)
        {
            var address = new GuestPhysical(Base + (ulong)i * 4096 + 8);
            ulong expected = ((ulong)i << 32) ^ 1 ^ 0x5EED_0000_0000_0001;
            Assert.Equal(expected, one.Memory.ReadUInt64(address));
            Assert.Equal(expected, two.Memory.ReadUInt64(address));
        }
        Assert.Equal(2L * Pages, first.HomesReleased + second.HomesReleased);

        // Disposing a map brings every page home again: the VM's RAM holds all its bytes.
        second.Dispose();
        Assert.Equal(0, second.HomesReleased);
        for (int i = 0; i < Pages; i += 97)
        {
            var home = two.Memory.Home(new GuestPhysical(Base + (ulong)i * 4096 + 8), 8);
            Assert.Equal(((ulong)i << 32) ^ 1 ^ 0x5EED_0000_0000_0001, BitConverter.ToUInt64(home));
        }
    }

    [Fact]
    public void A_device_write_to_a_shared_page_breaks_sharing_and_a_device_read_leaves_it_shared()
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        using var one = NewVm(host);
        using var two = NewVm(host);
        var first = host.NewPhysicalMap(one);
        var second = host.NewPhysicalMap(two);
        var page = new GuestPhysical(Base);
        Fill(one, 0);
        Fill(two, 0);
        first.Touch(page);
        second.Touch(page);
        var shared = first.Share(page, second, page);
        Assert.Equal(2, first.HomesReleased + second.HomesReleased);
        Assert.False(one.Memory.Regions.First(r => r.Region.Contains(page, 4096)).Backing.IsResident(Base - one.Memory.Regions.First(r => r.Region.Contains(page, 4096)).Region.Start.Value));

        // A DMA read (a disk write of the page) reads the shared frame's bytes, and the page stays shared.
        var buffer = new byte[4096];
        Assert.True(two.Dma.TryRead(page, buffer));
        Assert.Equal(first.PageContents(page).ToArray(), buffer);
        Assert.Equal(0x5EED_0000_0000_0001UL, BitConverter.ToUInt64(buffer));
        Assert.True(second.TryHostPhysical(page, out var stillShared) && stillShared == shared);

        // A DMA write (a disk read into the page) gives the writer its own copy; the other VM keeps the old bytes.
        Assert.True(two.Dma.TryWrite(page + 8, BitConverter.GetBytes(0xD15C_0000_0000_0002UL)));
        Assert.Equal(1, second.CopyOnWriteBreaks);
        Assert.True(second.TryHostPhysical(page, out var own) && own != shared);
        Assert.False(second.IsWriteProtected(page));
        Assert.Equal(0xD15C_0000_0000_0002UL, BitConverter.ToUInt64(second.PageContents(page)[8..]));
        Assert.Equal(0x5EED_0000_0000_0001UL, BitConverter.ToUInt64(second.PageContents(page))); // the rest came from the shared frame
        Assert.Equal(0x5EED_0000_0000_0001UL ^ 1, BitConverter.ToUInt64(first.PageContents(page)[8..]));
        Assert.Equal(0x5EED_0000_0000_0001UL ^ 1, one.Memory.ReadUInt64(page + 8));
        Assert.Equal(1, first.HomesReleased);
        Assert.Equal(0, second.HomesReleased);

        // A VMM write through GuestMemory (a loader) breaks sharing the same way.
        one.Memory.WriteUInt64(page, 0x10AD);
        Assert.Equal(1, first.CopyOnWriteBreaks);
        Assert.Equal(0x10ADUL, BitConverter.ToUInt64(first.PageContents(page)));
    }

    [Fact]
    public void A_device_read_of_a_host_swapped_page_reads_its_true_bytes_and_counts_as_double_paging()
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        using var vm = NewVm(host);
        var map = host.NewPhysicalMap(vm);
        using var file = new HostSwapFile(Path.Combine(directory, "dma.swap"), 1UL << 20);
        map.AttachSwap(file);
        var page = new GuestPhysical(Base + 3 * 4096);
        Fill(vm, 3);
        map.Touch(page);
        Assert.True(map.SwapOut(page.Value >> 12));
        var region = vm.Memory.Regions.First(r => r.Region.Contains(page, 4096));
        Assert.False(region.Backing.IsResident(page.Value - region.Region.Start.Value)); // its home's memory went back to the host kernel

        vm.Dma.BeforeRead = (address, length) => map.DeviceRead(address.Value, length); // as the sim engine hooks it
        var buffer = new byte[4096];
        Assert.True(vm.Dma.TryRead(page, buffer)); // the guest writing the page to its own swap disk
        Assert.Equal((3UL << 32) ^ 0x5EED_0000_0000_0001, BitConverter.ToUInt64(buffer));
        Assert.Equal(1, map.DeviceSwapIns);
        Assert.False(map.IsSwappedOut(page));

        // Without the engine's hook, the VMM's own read brings it in too (not counted as the guest's double paging).
        map.Touch(page);
        Assert.True(map.SwapOut(page.Value >> 12));
        Assert.Equal((3UL << 32) ^ 0x5EED_0000_0000_0001 ^ 1, vm.Memory.ReadUInt64(page + 8));
        Assert.Equal(1, map.DeviceSwapIns);
        Assert.Equal(2, map.PagesSwappedIn);
    }
}

/// <summary>Tests that measure the process's resident memory, run alone: a VM booting in a test beside them moves VmRSS
/// by more than they measure.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialMemoryCollection
{
    public const string Name = "process memory, measured";
}
