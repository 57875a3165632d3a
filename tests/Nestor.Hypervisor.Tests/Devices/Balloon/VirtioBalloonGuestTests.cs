using System.Text;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Devices.Virtio.Balloon;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Tests.Devices.Virtio;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Balloon;

/// <summary>virtio-balloon (virtio 1.2 §5.5) with real NestorOS on sim: the host sets a target while the guest runs,
/// the kernel driver inflates to it and the host's resident memory goes down by that many pages (mincore of guest
/// RAM, and the frame pool's discards under a VMM), a lower target deflates, DEFLATE_ON_OOM lets a program allocate
/// past the balloon, the user-process balloon pins pages, and a ring-0 guest's bad PFNs are refused.</summary>
public class VirtioBalloonGuestTests
{
    private const ulong GuestBytes = 64UL << 20;

    /// <summary>Calls <see cref="OnLine"/> for each line the guest prints, on the VM's thread while the guest writes
    /// it: the test acts at exact points of the guest's run.</summary>
    private sealed class LineWatcher : Stream
    {
        private readonly StringBuilder line = new();
        public readonly StringBuilder All = new();
        public Action<string>? OnLine;
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => 0;
        public override long Position { get => 0; set { } }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count)
        {
            foreach (char c in Encoding.ASCII.GetString(buffer, offset, count))
            {
                All.Append(c);
                if (c != '\n')
                {
                    line.Append(c);
                    continue;
                }
                string text = line.ToString();
                line.Clear();
                OnLine?.Invoke(text);
            }
        }
    }

    private static long ResidentPages(Vm vm)
    {
        long resident = 0;
        foreach (var (region, backing) in vm.Memory.Regions)
        {
            for (ulong offset = 0; offset < region.Length; offset += 4096)
            {
                resident += backing.IsResident(offset) ? 1 : 0;
            }
        }
        return resident;
    }

    private static Vm NestorOS(string cmdline, LineWatcher output, uint target = 0) => Vm.Create(new VmConfig
    {
        Kernel = BuiltInGuests.Get("nestoros"),
        MemoryBytes = GuestBytes,
        CommandLine = cmdline,
        Timeout = TimeSpan.FromSeconds(300),
        SerialOutput = output,
        Balloon = true,
        BalloonTargetPages = target,
    });

    private static IEnumerable<string> ResultsWithoutTimes(string output, params string[] programs) =>
        output.Split('\n').Where(l => programs.Any(p => l.StartsWith($"RESULT {p} ", StringComparison.Ordinal)))
            .Select(l => string.Join(' ', l.Split(' ').Where(w => !w.Contains("_cycles=", StringComparison.Ordinal))));

    [Theory]
    [InlineData("native")]
    [InlineData("hw-nested")]
    [InlineData("hw-shadow")]
    public void The_guest_inflates_to_a_target_set_while_it_runs_and_the_host_gets_the_pages_back(string technique)
    {
        const uint pages = 4096; // 16 MiB of the 64
        const string others = " ; pagefault 300 ; compute 100000 ; memtouch 2 rand";
        var output = new LineWatcher();
        // memtouch 32 first: the frames it frees are resident in the host, and the balloon takes them.
        using var vm = NestorOS($"memtouch 32 seq ; balloon wait {pages}{others} ; balloon wait 0{others}", output);
        var balloon = VirtioBalloon.Of(vm)!;
        long residentBefore = 0, residentInflated = 0, discardedBefore = 0, discardedInflated = 0, returned = 0;
        long inflatedAtResult = -1, deflatedAtEnd = -1, reportsBefore = 0;
        int waits = 0;
        output.OnLine = text =>
        {
            if (text.StartsWith("balloon: waiting for ", StringComparison.Ordinal))
            {
                waits++;
                if (waits == 1)
                {
                    residentBefore = ResidentPages(vm);
                    discardedBefore = vm.Host.FramePool.FramesDiscarded;
                    reportsBefore = balloon.StatisticsReports;
                    Assert.True(balloon.RequestStatistics(), "the driver left a statistics buffer with the device");
                    balloon.SetTarget(pages);
                }
                else
                {
                    balloon.SetTarget(0);
                }
            }
            else if (text.StartsWith("RESULT balloon-wait", StringComparison.Ordinal) && waits == 1)
            {
                residentInflated = ResidentPages(vm);
                discardedInflated = vm.Host.FramePool.FramesDiscarded;
                inflatedAtResult = balloon.InflatedPages;
                returned = balloon.BytesReturnedToHost;
            }
            else if (text.StartsWith("RESULT balloon-wait", StringComparison.Ordinal))
            {
                deflatedAtEnd = balloon.PagesDeflated;
            }
        };
        using var engine = new SimEngine(VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        string all = output.All.ToString();
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message + all);
        Assert.Contains("RESULT init programs=9 failures=0", all);
        Assert.Equal(pages, (uint)inflatedAtResult);
        // Every inflated page was resident (the driver's allocator zeroes a frame it hands out) and is given back.
        Assert.Equal((long)pages * VirtioBalloon.PageBytes, returned);
        // The guest ran on meanwhile (its wait loop, the kernel's batches): allow it the few pages it may have touched.
        Assert.InRange(residentBefore - residentInflated, pages - 64, pages + 64);
        if (technique != "native")
        {
            Assert.True(discardedInflated - discardedBefore >= pages, $"the frame pool discarded {discardedInflated - discardedBefore} frames");
        }
        Assert.Equal(pages, (uint)deflatedAtEnd);
        Assert.Equal(0, balloon.InflatedPages);
        Assert.Equal(0u, balloon.Actual);
        Assert.Equal(0, balloon.RefusedPfns);
        // The statistics: the first buffer at the probe, the one the request above asked for.
        Assert.True(balloon.StatisticsReports >= reportsBefore + 1, $"{balloon.StatisticsReports} statistics reports");
        // Usable RAM: the memory map's holes and the kernel image aside.
        Assert.InRange(balloon.Statistics[BalloonStatistic.TotalMemory], GuestBytes - GuestBytes / 8, GuestBytes);
        Assert.True(balloon.Statistics[BalloonStatistic.FreeMemory] < balloon.Statistics[BalloonStatistic.TotalMemory]);
        // The other programs gave the same results with the balloon full as with it empty.
        var lines = ResultsWithoutTimes(all, "pagefault", "compute", "memtouch").ToList();
        Assert.Equal(7, lines.Count); // memtouch 32 first, then the three twice
        Assert.Equal(lines.Skip(1).Take(3), lines.Skip(4));
    }

    [Fact]
    public void The_other_programs_give_the_results_of_a_VM_without_a_balloon()
    {
        const string programs = "hello ; pagefault 300 ; compute 100000 ; memtouch 2 seq";
        var with = new LineWatcher();
        using (var vm = NestorOS(programs, with, target: 8192))
        {
            using var engine = new SimEngine(VirtioBlockGuestTests.Options("native"));
            var run = vm.Run(engine);
            Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
            Assert.Equal(8192, VirtioBalloon.Of(vm)!.InflatedPages);
        }
        var without = new MemoryStream();
        using (var vm = Vm.Create(new VmConfig
        {
            Kernel = BuiltInGuests.Get("nestoros"),
            MemoryBytes = GuestBytes,
            CommandLine = programs,
            Timeout = TimeSpan.FromSeconds(300),
            SerialOutput = without,
        }))
        {
            using var engine = new SimEngine(VirtioBlockGuestTests.Options("native"));
            Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
            Assert.Null(VirtioBalloon.Of(vm));
        }
        string[] names = ["hello", "pagefault", "compute", "memtouch"];
        Assert.Equal(ResultsWithoutTimes(Encoding.ASCII.GetString(without.ToArray()), names), ResultsWithoutTimes(with.All.ToString(), names));
    }

    [Fact]
    public void Deflate_on_oom_lets_a_program_allocate_past_the_balloon()
    {
        // A target of nearly all the guest's memory: the driver stops at its reserve, and a program that then needs
        // 8 MiB gets it from the balloon (the allocator deflates before it fails).
        var output = new LineWatcher();
        using var vm = NestorOS("pagefault 2048 ; hello", output, target: 15_800);
        using var engine = new SimEngine(VirtioBlockGuestTests.Options("native"));
        var run = vm.Run(engine);
        string all = output.All.ToString();
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message + all);
        Assert.Contains("RESULT pagefault count=2048 sum=2048", all);
        var balloon = VirtioBalloon.Of(vm)!;
        Assert.True(balloon.PagesDeflated >= 2048 - 64, $"{balloon.PagesDeflated} pages deflated on OOM");
        Assert.True(balloon.Actual < balloon.Target);
        Assert.Equal(balloon.InflatedPages, (long)balloon.Actual);
    }

    [Theory]
    [InlineData("native")]
    [InlineData("hw-nested")]
    [InlineData("pv")] // the pinned bit goes through the MMU_UPDATE hypercall
    public void A_user_process_pins_pages_into_the_balloon_and_gets_zero_pages_back(string technique)
    {
        var output = new LineWatcher();
        using var vm = NestorOS("balloon 300", output, target: 1000);
        using var engine = new SimEngine(technique == "pv"
            ? new SimOptions { Technique = Technique.Paravirtual }
            : VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        string all = output.All.ToString();
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message + all);
        Assert.Contains("RESULT balloon present=1 pages=300 pinned=300 unpinned=300 actual_before=1000 actual_pinned=1300 actual_after=1000 zeroed=300", all);
        var balloon = VirtioBalloon.Of(vm)!;
        Assert.Equal(1300, balloon.PagesInflated);
        Assert.Equal(300, balloon.PagesDeflated);
        Assert.Equal(1300L * VirtioBalloon.PageBytes, balloon.BytesReturnedToHost);
    }

    [Fact]
    public void A_target_beyond_the_guests_memory_is_refused_with_advice()
    {
        using var vm = NestorOS("hello", new LineWatcher());
        var e = Assert.Throws<BadInputException>(() => VirtioBalloon.Of(vm)!.SetTarget(1u << 20));
        Assert.Contains("more than the VM's", e.Message);
        Assert.Contains("at most", e.Advice);
    }

    [Theory]
    [MemberData(nameof(VirtioBlockGuestTests.Techniques), MemberType = typeof(VirtioBlockGuestTests))]
    public void Pfns_beyond_ram_or_inflated_twice_are_refused_and_counted_and_the_vm_goes_on(string technique)
    {
        const ulong page = 0x40_0000;
        const uint good = (uint)(page >> 12), beyond = 0xF_FFFF; // 4 GiB - 4 KiB: not RAM of a 16 MiB VM
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, 16);
            g.Prologue(withInterrupts: false);
            a.mov(rdi, page);
            a.mov(__byte_ptr[rdi], 0x5A); // the page is the guest's and resident before it goes
            g.Initialize(VirtioFeatures.Version1);
            a.mov(rdi, VirtioGuest.Data);
            a.mov(__dword_ptr[rdi], good);
            a.mov(__dword_ptr[rdi + 4], beyond);
            a.mov(__dword_ptr[rdi + 8], good);
            g.Descriptor(VirtioGuest.Descriptors, 0, VirtioGuest.Data, 12, 0, 0);
            g.MakeAvailableAsIs(0);
            g.NotifyAndWait(1);
            g.Finish();
        });
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("virtio-balloon", code),
            MemoryBytes = 16UL << 20,
            Timeout = TimeSpan.FromSeconds(60),
            Balloon = true,
        });
        using var engine = new SimEngine(VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        var transport = VirtioSlots.Of(vm).Single();
        var balloon = (VirtioBalloon)transport.Device;
        Assert.Equal((uint)VirtioDeviceType.Balloon, (uint)vm.Memory.ReadUInt64(new GuestPhysical(VirtioGuest.Results + VirtioGuest.DeviceId * 8)));
        Assert.Equal(0xFUL, vm.Memory.ReadUInt64(new GuestPhysical(VirtioGuest.Results + VirtioGuest.FinalStatus * 8)));
        Assert.Equal(1, balloon.InflatedPages);
        Assert.Equal(2, balloon.RefusedPfns);
        Assert.Equal(0, vm.Memory.Span(new GuestPhysical(page), 1)[0]); // the host took the page: it reads as zero
    }
}
