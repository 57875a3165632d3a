using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Reference;
using Nestor.Hypervisor.Techniques;
using Xunit.Abstractions;

namespace Nestor.Integration.Tests;

/// <summary>NestorOS's demand paging with a swap area on a disk (guest/kernel/swap.c, docs/overcommit.md "Guest
/// swapping"), booted on sim with little memory: <c>swaptouch</c> writes a pattern over more pages than the guest has
/// free and reads every page back. Without swap the kernel kills it for want of a frame (and does not panic); with
/// <c>swap=DEV</c> on a virtio-blk or an ATA disk, under hardware assist with nested and with shadow paging, every page
/// comes back as written (the checksum is recomputed here), the kernel's swap counters show the traffic, every slot
/// and frame is given back, and the programs init runs next still pass.</summary>
public class GuestSwapTests(ITestOutputHelper output)
{
    /// <summary>8 MiB of guest RAM leaves NestorOS about 4.5 MiB of free frames (the kernel, its bss and the block
    /// layer's 1 MiB bounce buffer take the rest), so 1,600 pages (6.25 MiB) cannot all be resident.</summary>
    private const ulong SmallMemory = 8UL << 20;
    private const int Pages = 1600;
    private const int SwapDiskBytes = 16 << 20;

    private const ulong FnvOffset = 0xcbf29ce484222325, FnvPrime = 0x100000001b3;

    private static ulong Fmix64(ulong x)
    {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccd;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53;
        x ^= x >> 33;
        return x;
    }

    /// <summary>swaptouch's checksum (guest/user/swaptouch.c), computed here from its stated pattern: FNV-1a over word
    /// k of page i = fmix64(i &lt;&lt; 16 ^ k ^ 0x5357415054434855), pages in ascending order.</summary>
    internal static string SwaptouchChecksum(int pages)
    {
        ulong checksum = FnvOffset;
        for (ulong i = 0; i < (ulong)pages; i++)
        {
            for (ulong k = 0; k < 512; k++)
            {
                checksum = (checksum ^ Fmix64(i << 16 ^ k ^ 0x5357415054434855)) * FnvPrime;
            }
        }
        return checksum.ToString("x");
    }

    private static (VmOutcome Outcome, string Serial) Boot(string commandLine, string technique, ulong memory, params DiskConfig[] disks)
    {
        var serial = new MemoryStream();
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
            MemoryBytes = memory,
            CommandLine = commandLine,
            SerialOutput = serial,
            Timeout = TimeSpan.FromMinutes(8),
            Disks = disks,
        });
        var run = vm.Run(technique == "trap" ? new SimEngine(new SimOptions { Technique = Technique.TrapAndEmulate }) : NestorOSDiskOnSimTests.Engine(technique));
        vm.Serial.Flush();
        return (run.Outcome, Encoding.UTF8.GetString(serial.ToArray()));
    }

    private static string SwapDisk()
    {
        string path = NestorProcess.TempPath(".img");
        using (var file = File.Create(path))
        {
            file.SetLength(SwapDiskBytes);
        }
        return path;
    }

    private static void AssertFramesAllReturned(string serial)
    {
        var m = Regex.Match(serial, @"(\d+) frames free \((\d+) when init started\)");
        Assert.True(m.Success, serial);
        Assert.Equal(m.Groups[2].Value, m.Groups[1].Value);
    }

    [Fact]
    public void Without_swap_swaptouch_is_killed_for_want_of_memory_and_the_kernel_carries_on()
    {
        var (outcome, serial) = Boot($"swaptouch {Pages} ; hello", "hw-nested", SmallMemory);
        output.WriteLine(serial);

        Assert.Equal(VmOutcomeKind.DebugExit, outcome.Kind);
        Assert.Equal(1u, outcome.GuestStatus);                 // init: one program failed
        Assert.DoesNotContain("panic", serial);
        Assert.Matches(@"process \d+ \(swaptouch\) killed: page fault at address 0x[0-9a-f]+.*\(out of memory: no free frame to map there; give the VM more memory, or a swap disk", serial);
        Assert.DoesNotContain("RESULT swaptouch", serial);
        Assert.DoesNotContain("RESULT swap ", serial);          // no swap, no swap counters
        Assert.Contains("RESULT hello", serial);
        Assert.Contains("RESULT init programs=2 failures=1", serial);
        AssertFramesAllReturned(serial);
    }

    public static TheoryData<string, DiskInterface, int, string> Techniques() => new()
    {
        // Two virtio disks: the swap area is the second, by name.
        { "hw-nested", DiskInterface.Virtio, 2, "vdb" },
        { "hw-shadow", DiskInterface.Ata, 1, "ata0" },
        { "pv", DiskInterface.Virtio, 1, "vda" },
        // The ring-1 kernel's REP INSW straight into a fresh frame, often a page table lately: trap-and-emulate runs the
        // shadow's write emulation at CPL 0 too (PrivilegedWriteToPageTableTests).
        { "trap", DiskInterface.Ata, 1, "ata0" },
    };

    [Theory]
    [MemberData(nameof(Techniques))]
    public void With_swap_every_page_comes_back_as_written_and_init_programs_still_pass(string technique, DiskInterface kind, int disks, string device)
    {
        var attached = Enumerable.Range(0, disks).Select(_ => new DiskConfig(SwapDisk(), kind)).ToArray();
        var (outcome, serial) = Boot($"swap={device} swaptouch {Pages} ; hello ; forkwait 100 ; pagefault 100 ; memtouch 2 rand", technique, SmallMemory, attached);
        output.WriteLine(serial);

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Contains($"NestorOS: swap on {device}: {SwapDiskBytes / 4096} slots of 4 KiB", serial);
        var touch = DiskTestModel.Result(serial, "swaptouch");
        Assert.Equal(Pages.ToString(), touch["pages"]);
        Assert.True(ulong.Parse(touch["free_at_start"]) < Pages, $"the guest had {touch["free_at_start"]} free frames: {Pages} pages fit without swapping");
        Assert.Equal("0", touch["bad_pages"]);
        Assert.Equal(SwaptouchChecksum(Pages), touch["checksum"]);

        var swap = DiskTestModel.Result(serial, "swap");
        output.WriteLine(string.Join(' ', swap.Select(kv => $"{kv.Key}={kv.Value}")));
        Assert.Equal(device, swap["device"]);
        ulong outs = ulong.Parse(swap["pages_out"]), ins = ulong.Parse(swap["pages_in"]);
        // At least the pages beyond what was free went out, and the verify pass read them back.
        ulong beyond = Pages - ulong.Parse(touch["free_at_start"]);
        Assert.True(outs >= beyond, $"{outs} pages out, but {beyond} did not fit");
        Assert.True(ins >= beyond, $"{ins} pages in, but {beyond} had to come back");
        Assert.Equal(swap["pages_in"], swap["major_faults"]);
        Assert.Equal(("0", "0", "0"), (swap["slots_in_use"], swap["io_errors"], swap["swap_full"]));
        Assert.True(ulong.Parse(swap["peak_slots"]) >= beyond);

        foreach (string program in new[] { "hello", "forkwait", "pagefault", "memtouch" })
        {
            Assert.Contains($"RESULT {program} ", serial);
        }
        Assert.Contains("RESULT init programs=5 failures=0", serial);
        AssertFramesAllReturned(serial);
    }

    /// <summary>nestor bench checks the line as NestorOS reads it: swap= needs a device name that fits, and swaptouch a
    /// page count.</summary>
    [Theory]
    [InlineData("the kernel option swap= names a block device (at most 7 characters), not ''", "swap=", "swaptouch", "10")]
    [InlineData("the kernel option swap= names a block device (at most 7 characters), not 'verylongname'", "swap=verylongname", "swaptouch", "10")]
    [InlineData("swaptouch's PAGES must be a whole number of at least 1, not 'many'", "swaptouch", "many")]
    [InlineData("swaptouch's PAGES must be at least 1, not 0", "swaptouch", "0")]
    [InlineData("swaptouch's MODE is one of fork, not 'spoon'", "swaptouch", "10", "spoon")]
    public void Bench_refuses_swap_options_and_arguments_nestoros_would_misread(string message, params string[] arguments)
    {
        var r = NestorProcess.Run(TimeSpan.FromSeconds(60), ["bench", .. arguments]);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains(message, r.Stderr);
    }

    /// <summary>With <c>fork</c>, a child forked after the writes checks every page while they are shared: frames
    /// shared copy-on-write must be paged out from both sides at once (one slot, two entries), swap entries copied by
    /// fork read back on either side.</summary>
    [Theory]
    [InlineData("hw-nested", DiskInterface.Virtio, "vda")]
    [InlineData("hw-shadow", DiskInterface.Ata, "ata0")]
    public void Pages_shared_by_fork_are_paged_out_from_both_sides_and_come_back_to_each(string technique, DiskInterface kind, string device)
    {
        var (outcome, serial) = Boot($"swap={device} swaptouch {Pages} fork ; hello", technique, SmallMemory, new DiskConfig(SwapDisk(), kind));
        output.WriteLine(serial);

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        string checksum = SwaptouchChecksum(Pages);
        var child = DiskTestModel.Result(serial, "swaptouch_child");
        Assert.Equal(("0", checksum), (child["bad_pages"], child["checksum"]));
        var parent = DiskTestModel.Result(serial, "swaptouch");
        Assert.Equal(("0", checksum, "0"), (parent["bad_pages"], parent["checksum"], parent["child_status"]));
        var swap = DiskTestModel.Result(serial, "swap");
        Assert.True(ulong.Parse(swap["shared_out"]) > 0, "no shared frame was paged out: the child ran with fewer frames than it needed only if some were");
        Assert.Equal(("0", "0", "0"), (swap["slots_in_use"], swap["io_errors"], swap["swap_full"]));
        Assert.Contains("RESULT init programs=2 failures=0", serial);
        AssertFramesAllReturned(serial);
    }

    [Fact]
    public void A_swap_option_naming_no_disk_is_reported_and_the_guest_runs_without_swap()
    {
        var (outcome, serial) = Boot("swap=vdz hello", "hw-nested", SmallMemory);
        Assert.Equal(0u, outcome.GuestStatus);
        Assert.Contains("NestorOS: swap=vdz: there is no block device vdz; running without swap", serial);
        Assert.Contains("RESULT hello", serial);
        Assert.DoesNotContain("RESULT swap ", serial);
    }

    /// <summary>Double paging (Waldspurger, OSDI 2002, §3.1): the guest pages out, to its own swap disk, pages the host
    /// had already swapped out, so the host reads each back only for the guest's disk write to read it again. NestorOS
    /// writes a victim straight from its frame (guest/kernel/swap.c), so with virtio-blk the device's DMA read of a
    /// host-swapped page is that double paging, which is the rule the P2M counts
    /// (<see cref="Nestor.Hypervisor.Paging.GuestPhysicalMap.DeviceSwapIns"/>). With the ATA disk the guest's CPU
    /// copies the page out with REP OUTSW: the host's swap-in is then an ordinary EPT violation or shadow fault, which
    /// the VMM cannot tell from any other access, so the count stays 0 there (the rule sees DMA only).</summary>
    [Theory]
    [InlineData(MemoryVirtualization.Nested, DiskInterface.Virtio, "vda")]
    [InlineData(MemoryVirtualization.Shadow, DiskInterface.Virtio, "vda")]
    [InlineData(MemoryVirtualization.Nested, DiskInterface.Ata, "ata0")]
    public void A_guest_swapping_under_host_swapping_gets_every_page_back_and_its_disk_writes_of_host_swapped_pages_are_double_paging(
        MemoryVirtualization memory, DiskInterface kind, string device)
    {
        string directory = Directory.CreateTempSubdirectory("nestor-double-").FullName;
        try
        {
            using var file = new Nestor.Hypervisor.Memory.Swapping.HostSwapFile(Path.Combine(directory, "host.swap"), SmallMemory);
            // The host keeps half the guest's configured memory resident: both the guest and the host page.
            var swap = new Nestor.Hypervisor.Memory.Swapping.HostSwap(file, Nestor.Hypervisor.Memory.Swapping.SwapVictimPolicy.Random)
            {
                TargetResidentPages = (long)(SmallMemory / 4096 / 2),
            };
            var serialBytes = new MemoryStream();
            using var vm = Vm.Create(new VmConfig
            {
                Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
                MemoryBytes = SmallMemory,
                CommandLine = $"swap={device} swaptouch {Pages} ; hello",
                SerialOutput = serialBytes,
                Timeout = TimeSpan.FromMinutes(8),
                Disks = [new DiskConfig(SwapDisk(), kind)],
            });
            var quantum = new Nestor.Hypervisor.Memory.Swapping.SwapQuantum(vm, swap, 50_000);
            using var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = memory }) { Quantum = quantum };
            var run = vm.Run(engine);
            vm.Serial.Flush();
            string serial = Encoding.UTF8.GetString(serialBytes.ToArray());
            output.WriteLine(serial);
            output.WriteLine($"host: out {swap.PagesSwappedOut} in {swap.PagesSwappedIn} double paging {swap.DoublePaging}");

            Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message + "\n" + serial);
            Assert.Null(quantum.Error);
            var touch = DiskTestModel.Result(serial, "swaptouch");
            Assert.Equal(("0", SwaptouchChecksum(Pages)), (touch["bad_pages"], touch["checksum"]));
            var guestSwap = DiskTestModel.Result(serial, "swap");
            long guestOut = long.Parse(guestSwap["pages_out"]);
            Assert.True(guestOut > 0);
            Assert.True(swap.PagesSwappedOut > 0 && swap.PagesSwappedIn > 0, $"host out {swap.PagesSwappedOut}, in {swap.PagesSwappedIn}");
            if (kind == DiskInterface.Virtio)
            {
                // Some of the guest's victims were host-swapped; each such disk write is one double paging, no more.
                Assert.True(swap.DoublePaging > 0, "no page the guest wrote to its swap disk had been swapped out by the host");
                Assert.True(swap.DoublePaging <= guestOut, $"{swap.DoublePaging} double pagings, but the guest wrote only {guestOut} pages out");
            }
            else
            {
                Assert.Equal(0, swap.DoublePaging);
            }
            Assert.Contains("RESULT init programs=2 failures=0", serial);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}

/// <summary>The same paging on the reference machine (QEMU TCG), whose MMU sets the accessed bits the clock reads
/// as hardware does: an IDE disk on QEMU's PC, virtio-blk on microvm.</summary>
public class GuestSwapOnQemuTests(ITestOutputHelper output)
{
    private const int Pages = 1600;

    [Theory]
    [InlineData(QemuDiskInterface.Ide, "ata0")]
    [InlineData(QemuDiskInterface.VirtioMmio, "vda")]
    public void Swaptouch_with_swap_on_qemu_gets_every_page_back(QemuDiskInterface kind, string device)
    {
        string kernel = NestorProcess.WriteTemp(BuiltInGuests.NestorOS(), ".elf");
        string disk = NestorProcess.TempPath(".img");
        using (var file = File.Create(disk))
        {
            file.SetLength(16 << 20);
        }
        var serial = new MemoryStream();
        var outcome = QemuReferenceMachine.Run(kernel, 8UL << 20, $"swap={device} swaptouch {Pages} ; hello", serial, TimeSpan.FromMinutes(4),
            disks: [new QemuDisk(disk, kind)]);
        File.Delete(kernel);
        string text = Encoding.UTF8.GetString(serial.ToArray());
        output.WriteLine(text);

        Assert.False(outcome.TimedOut, text);
        Assert.True(outcome.GuestStatus == 0, text + outcome.Diagnostics);
        var touch = DiskTestModel.Result(text, "swaptouch");
        Assert.True(ulong.Parse(touch["free_at_start"]) < Pages, text);
        Assert.Equal(("0", GuestSwapTests.SwaptouchChecksum(Pages)), (touch["bad_pages"], touch["checksum"]));
        var swap = DiskTestModel.Result(text, "swap");
        Assert.True(ulong.Parse(swap["pages_in"]) >= Pages - ulong.Parse(touch["free_at_start"]), text);
        Assert.Equal(("0", "0"), (swap["slots_in_use"], swap["io_errors"]));
        Assert.Contains("RESULT init programs=2 failures=0", text);
    }
}
