using System.Globalization;
using System.Text.RegularExpressions;
using Xunit.Abstractions;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary><c>nestor run --service-vm</c>: the real pair through the CLI, NestorOS's blkfront in the user VM and its
/// blkback in the service VM (guest/kernel/blkfront.c, blkback.c). disktest's RESULT and the image's final bytes are
/// checked against <see cref="DiskTestModel"/>, and the <c>service_vm_*</c> counters against what the ring protocol
/// says each request costs: one notify per batch, grant-copied bytes the data plus the ring's own header and slots.</summary>
public class ServiceVmTests(ITestOutputHelper output)
{
    private const int DiskBytes = 4 << 20;
    private const int RingSlotsPerBatch = 32, BytesPerSlot = 32 << 10, SlotBytes = 64, HeaderBytes = 32, ConnectBytes = 16, ResponseIndexBytes = 4;
    private const int BadInput = 120;

    private static string Image(byte[] contents)
    {
        string path = TempPath(".img");
        File.WriteAllBytes(path, contents);
        return path;
    }

    /// <summary>The counters of the --stats report (the user VM's section, which has the pair's service_vm_*), zero
    /// ones absent as the report leaves them out.</summary>
    private static Dictionary<string, ulong> Counters(string stdout) =>
        Regex.Matches(stdout, @"^  (service_vm_\w+)\s+(\d+)", RegexOptions.Multiline)
            .ToDictionary(m => m.Groups[1].Value, m => ulong.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));

    private static ulong Counter(Dictionary<string, ulong> counters, string name) => counters.GetValueOrDefault(name);

    /// <summary>disktest's blkio calls as blkfront sends them: each a batch of ceil(size / 32 KiB) ring slots (a
    /// flush one slot), every batch one notify; the grant-copied bytes of the ring itself: the connect (header in, its
    /// second half out), and per batch the header in, its slots in and out, and the response index out.</summary>
    private static (ulong Batches, ulong RingBytes) RingTraffic(int? onlySize)
    {
        ulong batches = 0, ringBytes = HeaderBytes + ConnectBytes;
        IEnumerable<int> sizes = onlySize is { } one ? [one] : Enumerable.Range(0, 12).Select(i => 512 << i);
        foreach (int size in sizes)
        {
            // disktest's requests of this size (guest/user/disk.c): 64 KiB's worth, at least one, at most the slots.
            ulong n = (ulong)Math.Min(Math.Max(1, (64 << 10) / size), FloorPowerOfTwo(DiskBytes / size));
            ulong perRequest = (ulong)Math.Max(1, (size + BytesPerSlot - 1) / BytesPerSlot);
            Assert.True(perRequest <= RingSlotsPerBatch);
            // n writes, a flush, n reads.
            batches += 2 * n + 1;
            ringBytes += 2 * n * (HeaderBytes + 2 * SlotBytes * perRequest + ResponseIndexBytes);
            ringBytes += HeaderBytes + 2 * SlotBytes + ResponseIndexBytes;
        }
        return (batches, ringBytes);
    }

    private static int FloorPowerOfTwo(int n) => 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)n));

    public static TheoryData<string, string?, string, string> Pairs() => new()
    {
        { "hw", "nested", "ata", "seq" },
        { "hw", "shadow", "ata", "rand" },
        { "pv", null, "ata", "seq" },
        { "hw", "nested", "assigned", "rand" },
    };

    [Theory]
    [MemberData(nameof(Pairs))]
    public void Disktest_through_the_service_vm_passes_and_the_image_holds_what_the_guest_wrote(string technique, string? mmu, string disk, string mode)
    {
        var noise = DiskTestModel.Noise(DiskBytes, seed: 13);
        string image = Image(noise);
        var expectedImage = (byte[])noise.Clone();
        var expected = DiskTestModel.Run(expectedImage, random: mode == "rand");
        string[] args = ["run", "--technique", technique, .. mmu is null ? Array.Empty<string>() : ["--mmu", mmu], "--service-vm",
            "--service-disk", $"{image},if={disk}", "--cmdline", $"disktest xvda {mode}", "--stats", "--timeout", "900"];
        var r = Run(TimeSpan.FromMinutes(16), args);
        output.WriteLine(r.Stdout);
        Assert.True(r.ExitCode == 0, r.ToString());

        var result = DiskTestModel.Result(r.Stdout, "disktest");
        Assert.Equal(("xvda", "0", expected.Bytes.ToString(CultureInfo.InvariantCulture), expected.Requests.ToString(CultureInfo.InvariantCulture), expected.Checksum),
            (result["dev"], result["errors"], result["bytes"], result["requests"], result["checksum"]));
        Assert.Equal(expectedImage, File.ReadAllBytes(image));
        // The service VM's lines are prefixed; the user VM's are not.
        Assert.Matches(@"(?m)^\[service\] blkback: serving (ata0|nd0) ", r.Stdout);
        Assert.Matches(@"(?m)^NestorOS: block device 0: xvda, 8192 sectors .*blkfront \(service VM\)", r.Stdout);

        var c = Counters(r.Stdout);
        var (batches, ringBytes) = RingTraffic(null);
        // One notify per batch and one for the connect; each answered by one completion notify and interrupt; a switch
        // each way per notify.
        Assert.Equal(batches + 1, Counter(c, "service_vm_notify_exits"));
        Assert.Equal(batches + 1, Counter(c, "service_vm_completion_notifies"));
        Assert.Equal(batches + 1, Counter(c, "service_vm_completion_interrupts"));
        Assert.Equal(batches + 1, Counter(c, "service_vm_event_interrupts"));
        Assert.Equal(2 * (batches + 1), Counter(c, "service_vm_switches"));
        // The user VM halts once per wait: a notify's stop is taken at its halt (Cpu), not after idling from timer tick
        // to timer tick until the slice ends, which took hundreds of thousands of halts per run. The user VM's exit
        // table comes first in the report.
        ulong userHalts = ulong.Parse(Regex.Match(r.Stdout, @"(?m)^  halt\s+(\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.InRange(userHalts, 1UL, batches + 3);
        // The grant copies moved the data once each way (disktest reads back what it wrote) and the ring's bytes.
        Assert.Equal(2 * expected.Bytes + ringBytes, Counter(c, "service_vm_grant_copy_bytes"));
        Assert.Equal(0UL, Counter(c, "service_vm_refused_grants"));
        // The service VM's driver did the I/O: with ATA PIO every data word is an exit of the service VM's.
        ulong deviceExits = Counter(c, "service_vm_device_exits");
        if (disk == "ata")
        {
            Assert.True(deviceExits >= expected.Bytes, $"{deviceExits} device exits for {expected.Bytes} bytes each way");
        }
        else
        {
            // The assigned controller's registers are direct: what is left is the service VM's console and set-up.
            Assert.True(deviceExits < expected.Bytes / 1000, $"{deviceExits} device exits: the assigned controller's registers should be direct");
        }
    }

    [Fact]
    public void A_forged_grant_reference_is_refused_and_counted_and_the_service_vm_keeps_serving()
    {
        string image = Image(DiskTestModel.Noise(DiskBytes, seed: 14));
        var r = Run(TimeSpan.FromMinutes(10), "run", "--technique", "hw", "--service-vm", "--service-disk", image,
            "--cmdline", "blkfront=forge disktest xvda seq 4096", "--stats", "--timeout", "500");
        output.WriteLine(r.Stdout);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("blkfront: a request with the forged grant reference 400 got status 3 (refused)", r.Stdout);
        Assert.Matches(@"(?m)^\[service\] blkback: request \d+: the VMM refused grant reference 400$", r.Stdout);
        Assert.Equal("0", DiskTestModel.Result(r.Stdout, "disktest")["errors"]);
        var c = Counters(r.Stdout);
        Assert.Equal(1UL, Counter(c, "service_vm_refused_grants"));
        // The forged request is one batch more than disktest's.
        var (batches, _) = RingTraffic(4096);
        Assert.Equal(batches + 2, Counter(c, "service_vm_notify_exits"));
    }

    [Fact]
    public void A_forged_response_id_is_refused_by_the_front_end_which_fails_the_request_without_crashing()
    {
        string image = Image(DiskTestModel.Noise(DiskBytes, seed: 15));
        var r = Run(TimeSpan.FromMinutes(10), "run", "--technique", "hw", "--service-vm", "--service-disk", image, "--service-cmdline", "blkback=forge",
            "--cmdline", "disktest xvda seq 4096", "--stats", "--timeout", "500");
        output.WriteLine(r.Stdout);
        Assert.Matches(@"(?m)^\[service\] blkback: answering request \d+ with the forged id \d+ \(blkback=forge\)$", r.Stdout);
        Assert.Matches(@"(?m)^blkfront: the back-end broke the ring protocol \(response id \d+\); xvda fails from now on$", r.Stdout);
        // disktest sees its requests fail (-EIO), reports them and fails; the kernel and init go on to their end.
        Assert.NotEqual("0", DiskTestModel.Result(r.Stdout, "disktest")["errors"]);
        Assert.Contains("RESULT init programs=1 failures=1", r.Stdout);
        Assert.DoesNotContain("panic", r.Stdout, StringComparison.OrdinalIgnoreCase);
        Assert.True(r.ExitCode is > 0 and < 100, r.ToString());
    }

    [Theory]
    [InlineData("--service-cmdline without --service-vm", "run --technique hw --service-cmdline ata=irq", "there is no --service-vm")]
    [InlineData("a program for the service VM", "run --technique hw --service-vm --service-disk IMAGE --service-cmdline hello", "the service VM runs no programs")]
    [InlineData("--service-disk without --service-vm", "run --technique hw --service-disk IMAGE", "there is no --service-vm")]
    [InlineData("--service-vm without a disk", "run --technique hw --service-vm", "needs the disk the service VM serves")]
    [InlineData("no VMM", "run --service-vm --service-disk IMAGE", "--technique native has none")]
    [InlineData("virtio", "run --technique hw --service-vm --service-disk IMAGE,if=virtio", "not virtio")]
    [InlineData("kvm", "run --engine kvm --service-vm --service-disk IMAGE", "not on --engine kvm")]
    public void Combinations_that_cannot_work_are_refused_with_advice(string what, string command, string message)
    {
        _ = what;
        string image = Image(new byte[64 << 10]);
        var r = Run(command.Split(' ').Select(a => a.Replace("IMAGE", image, StringComparison.Ordinal)).ToArray());
        Assert.True(r.ExitCode == BadInput, r.ToString());
        Assert.Contains(message, r.Stderr);
        Assert.Contains("what to do:", r.Stderr);
    }
}
