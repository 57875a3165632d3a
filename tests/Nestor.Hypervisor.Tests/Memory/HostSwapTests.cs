using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Memory.Swapping;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests.MemoryOvercommit;

/// <summary>Host swapping (Waldspurger, OSDI 2002, §3.3): a NestorOS VM squeezed to half the pages it touches still
/// gives its native RESULT lines, its pages going to the swap file and coming back on their faults; a full swap file
/// is a clear error that loses nothing; a device reading a swapped page is counted as double paging.</summary>
public sealed class HostSwapTests : IDisposable
{
    private const string Workload = "compute 20000 ; syscall 500 ; forkwait 5";
    private readonly string directory = Directory.CreateTempSubdirectory("nestor-swap-").FullName;

    public void Dispose() => Directory.Delete(directory, recursive: true);

    [Theory]
    [InlineData(SwapVictimPolicy.Random, MemoryVirtualization.Nested)]
    [InlineData(SwapVictimPolicy.Clock, MemoryVirtualization.Nested)]
    [InlineData(SwapVictimPolicy.Random, MemoryVirtualization.Shadow)]
    [InlineData(SwapVictimPolicy.Clock, MemoryVirtualization.Shadow)]
    public void A_vm_squeezed_to_half_its_pages_by_host_swapping_gives_its_native_results(SwapVictimPolicy policy, MemoryVirtualization memory)
    {
        // Under shadow paging a swapped-out page loses its shadow leaves and comes back on the shadow fault, and the
        // VMM's software walks read the guest's page tables through the P2M, so a swapped-out page table comes back too.
        long touched = 0;
        var native = NestorOS.Solo(Technique.HardwareAssist, memory, Workload,
            inspect: (vm, _) => touched = vm.Host.PhysicalMapOf(vm)!.TouchedPages);
        using var file = new HostSwapFile(Path.Combine(directory, "vm.swap"), 64UL << 20);
        var swap = new HostSwap(file, policy) { TargetResidentPages = touched / 2 };
        SwapQuantum? quantum = null;
        long residentAtEnd = 0;
        var squeezed = NestorOS.Solo(Technique.HardwareAssist, memory, Workload,
            vm => quantum = new SwapQuantum(vm, swap, 50_000),
            inspect: (vm, _) =>
            {
                swap.Enforce();
                residentAtEnd = vm.Host.PhysicalMapOf(vm)!.TouchedPages;
            });

        Assert.Equal(native, squeezed);
        Assert.Null(quantum!.Error);
        Assert.True(swap.PagesSwappedOut > 0 && swap.PagesSwappedIn > 0, $"out {swap.PagesSwappedOut}, in {swap.PagesSwappedIn}");
        Assert.True(residentAtEnd <= touched / 2, $"{residentAtEnd} resident, target {touched / 2}");
        Assert.Equal(swap.PagesSwappedOut - swap.PagesSwappedIn, swap.Map!.SwappedOutPages);
        Assert.Equal(0, swap.DoublePaging); // no disk: no device read
        if (policy == SwapVictimPolicy.Clock)
        {
            Assert.True(swap.SecondChances > 0);
        }
    }

    [Fact]
    public void A_full_swap_file_is_a_clear_error_and_the_vm_still_finishes_with_its_results()
    {
        var native = NestorOS.Solo(Technique.HardwareAssist, MemoryVirtualization.Nested, Workload);
        using var file = new HostSwapFile(Path.Combine(directory, "small.swap"), 16 * 4096UL);
        var swap = new HostSwap(file, SwapVictimPolicy.Random) { TargetResidentPages = 16 };
        SwapQuantum? quantum = null;
        var squeezed = NestorOS.Solo(Technique.HardwareAssist, MemoryVirtualization.Nested, Workload, vm => quantum = new SwapQuantum(vm, swap));
        Assert.Equal(native, squeezed);
        Assert.NotNull(quantum!.Error);
        Assert.Contains("is full", quantum.Error!.Message);
        Assert.NotNull(quantum.Error.Advice);
        Assert.True(file.UsedPages <= 16);
    }

    [Fact]
    public void A_swapped_page_leaves_the_vm_s_ram_and_comes_back_on_a_touch_or_a_device_read_counted_as_double_paging()
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        using var vm = Vm.Create(new VmConfig { Kernel = BuiltIn.GuestAssembler.Flat("x", [0xF4]), MemoryBytes = 16UL << 20, SerialOutput = Stream.Null }, host);
        var map = host.NewPhysicalMap(vm);
        using var file = new HostSwapFile(Path.Combine(directory, "unit.swap"), 1UL << 20);
        map.AttachSwap(file);
        var a = new GuestPhysical(0x40_0000);
        var b = new GuestPhysical(0x40_1000);
        vm.Memory.WriteUInt64(a, 0xAAAA);
        vm.Memory.WriteUInt64(b, 0xBBBB);
        map.Touch(a);
        map.Touch(b);
        Assert.True(map.SwapOut(a.Value >> 12));
        Assert.True(map.SwapOut(b.Value >> 12));
        Assert.False(map.SwapOut(b.Value >> 12)); // not resident any more
        Assert.True(map.IsSwappedOut(a));
        Assert.False(map.TryHostPhysical(a, out _));
        Assert.Equal(0UL, BitConverter.ToUInt64(vm.Memory.Home(a, 8))); // its home's memory went back to the host kernel
        Assert.Equal(2, file.UsedPages);

        map.Touch(a, write: false); // the guest's fault
        Assert.Equal(0xAAAAUL, vm.Memory.ReadUInt64(a));
        Assert.Equal(0, map.DeviceSwapIns);

        vm.Dma.BeforeRead = (address, length) => map.DeviceRead(address.Value, length); // as the sim engine hooks it
        var buffer = new byte[8];
        Assert.True(vm.Dma.TryRead(b, buffer));
        Assert.Equal(0xBBBBUL, BitConverter.ToUInt64(buffer));
        Assert.Equal(1, map.DeviceSwapIns);
        Assert.Equal(0, map.SwappedOutPages);
        Assert.Equal(2, map.PagesSwappedIn);
        Assert.Equal(0, file.UsedPages);

        // A page out at disposal comes back into the VM's RAM, so that nothing is lost.
        map.Touch(a);
        Assert.True(map.SwapOut(a.Value >> 12));
        map.Dispose();
        Assert.Equal(0xAAAAUL, vm.Memory.ReadUInt64(a));
    }

    [Fact]
    public void A_swap_file_that_exists_or_is_too_small_is_refused()
    {
        string path = Path.Combine(directory, "taken.swap");
        File.WriteAllText(path, "someone's");
        Assert.Throws<HostSwapException>(() => new HostSwapFile(path, 1UL << 20));
        Assert.Equal("someone's", File.ReadAllText(path));
        Assert.Throws<Errors.BadInputException>(() => new HostSwapFile(Path.Combine(directory, "tiny.swap"), 100));
    }
}
