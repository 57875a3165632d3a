using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Techniques;
using Xunit;

namespace Nestor.Hypervisor.Tests.Snapshots;

/// <summary>Firecracker's layout (issue 16): the snapshot's RAM in a memory file of its own, a sparse image of guest
/// memory holding only the touched pages, and the state file recording its length and SHA-256. A restore from that
/// layout and from the one-file layout both continue to the uninterrupted run's end; a missing, truncated, changed or
/// foreign memory file is refused naming it, before anything is restored; a save with no room leaves no file.</summary>
public class MemoryFileTests
{
    private const long StopAt = 3_000_000;
    private const ulong Memory = 64UL << 20;
    private static readonly SimOptions Options = new() { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested };

    private static Vm NewVm(Stream? serial = null) => Vm.Create(new VmConfig
    {
        Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
        MemoryBytes = Memory,
        SerialOutput = serial ?? Stream.Null,
        Timeout = TimeSpan.FromSeconds(120),
        Sim = Options,
    });

    private static string TempPath(string suffix) => Path.Combine(Path.GetTempPath(), $"nestor-memfile-{Guid.NewGuid():N}{suffix}");

    private static readonly Lazy<(string Serial, long Instructions)> Whole = new(() =>
    {
        var serial = new MemoryStream();
        using var vm = NewVm(serial);
        using var engine = new SimEngine(Options);
        Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
        vm.Serial.Flush();
        return (Encoding.UTF8.GetString(serial.ToArray()), vm.Vcpus[0].State.InstructionsRetired);
    });

    /// <summary>The VM stopped at <paramref name="stopAt"/>, its snapshot taken in memory (not yet written).</summary>
    private static (Vm Vm, SimEngine Engine, TakenSnapshot Taken) Stopped(long stopAt = StopAt)
    {
        var vm = NewVm();
        var engine = new SimEngine(Options with { StopAtInstruction = stopAt });
        Assert.Equal(VmOutcomeKind.Breakpoint, vm.Run(engine).Outcome.Kind);
        return (vm, engine, SnapshotFile.Take(vm, engine));
    }

    // Restores the state file (and its memory file) into a fresh VM and runs it to its end: its console output and
    // instructions retired.
    private static (string Serial, long Instructions) Finish(string state, string? memoryFile = null)
    {
        var serial = new MemoryStream();
        using var vm = NewVm(serial);
        using var engine = new SimEngine(Options);
        SnapshotFile.Restore(state, vm, engine, memoryFile);
        Assert.Equal(StopAt, vm.Vcpus[0].State.InstructionsRetired);
        Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
        vm.Serial.Flush();
        return (Encoding.UTF8.GetString(serial.ToArray()), vm.Vcpus[0].State.InstructionsRetired);
    }

    [Fact]
    public void A_memory_file_holds_only_the_touched_pages_and_both_layouts_restore_to_the_uninterrupted_end()
    {
        string state = TempPath(".snap"), memory = TempPath(".mem"), single = TempPath(".snap");
        try
        {
            var (vm, engine, taken) = Stopped();
            using (vm)
            using (engine)
            {
                var saved = SnapshotFile.Save(taken, state, memory);
                SnapshotFile.Save(taken, single, null);
                Assert.NotNull(saved.MemoryFile);
                Assert.Equal(Path.GetFullPath(memory), saved.MemoryFile!.Path);
            }
            // The memory file is an image of guest RAM: as long as it, its hash the one recorded, and sparse.
            Assert.Equal((long)Memory, new FileInfo(memory).Length);
            var header = SnapshotFile.Read(state).Header;
            Assert.Equal(2, header.FormatVersion);
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(memory))), header.MemoryFile!.Sha256);
            long allocated = AllocatedBytes(memory);
            var inline = SnapshotFile.Read(single);
            long ramSection = inline.Sections.Single(s => s.Tag == "RAM ").Length;
            // NestorOS touches most of its RAM early (15,855 of 16,384 pages at 3 M instructions): the file holds
            // those pages and no more, the untouched ones being holes.
            long touched = (ramSection - 4 - 20) / (8 + 4096);
            Assert.True(allocated <= touched * 4096 + 64 * 1024, $"the memory file has {allocated:N0} bytes on disk for {touched:N0} touched pages: its holes were written");
            Assert.True(allocated >= touched * 4096 - 64 * 1024, $"{allocated:N0} bytes on disk cannot hold {touched:N0} touched pages");
            Assert.True(allocated < (long)Memory, "the memory file is not sparse");
            // The state file keeps the RAM section's layout and no page: the RAM is the memory file's.
            var split = SnapshotFile.Read(state);
            Assert.Equal(4 + 20, (int)split.Sections.Single(s => s.Tag == "RAM ").Length);
            Assert.True(new FileInfo(state).Length < new FileInfo(single).Length - ramSection + 4096);
            // Both layouts continue to the end of the uninterrupted run.
            var (wholeSerial, wholeInstructions) = Whole.Value;
            foreach (var (serial, instructions) in new[] { Finish(state), Finish(single) })
            {
                Assert.Contains("RESULT", serial);
                Assert.EndsWith(serial, wholeSerial);
                Assert.Equal(wholeInstructions, instructions);
            }
            // A memory file moved with its state file is found where it is said to be.
            string moved = TempPath(".mem");
            File.Move(memory, moved);
            memory = moved;
            Assert.EndsWith(Finish(state, moved).Serial, wholeSerial);
        }
        finally
        {
            foreach (string f in new[] { state, memory, single })
            {
                File.Delete(f);
            }
        }
    }

    [Fact]
    public void A_missing_truncated_changed_or_foreign_memory_file_is_refused_naming_it_before_anything_is_restored()
    {
        string state = TempPath(".snap"), memory = TempPath(".mem"), otherState = TempPath(".snap"), otherMemory = TempPath(".mem");
        var bad = new List<string>();
        try
        {
            foreach (var (at, s, m) in new[] { (StopAt, state, memory), (StopAt + 100_000, otherState, otherMemory) })
            {
                var (vm, engine, taken) = Stopped(at);
                using (vm)
                using (engine)
                {
                    SnapshotFile.Save(taken, s, m);
                }
            }
            byte[] image = File.ReadAllBytes(memory);
            string Copy(byte[] bytes)
            {
                string path = TempPath(".mem");
                File.WriteAllBytes(path, bytes);
                bad.Add(path);
                return path;
            }
            byte[] flipped = (byte[])image.Clone();
            int page = Array.FindIndex(flipped, b => b != 0);
            flipped[page] ^= 0x40;
            var cases = new (string What, string Path, string Message)[]
            {
                ("missing", TempPath(".mem"), "is missing: the snapshot keeps its RAM there"),
                ("truncated", Copy(image[..^4096]), $"has {image.Length - 4096:N0} bytes, and the snapshot recorded {image.Length:N0} (truncated)"),
                ("longer", Copy([.. image, 0]), $"has {image.Length + 1:N0} bytes, and the snapshot recorded {image.Length:N0}"),
                ("a flipped bit", Copy(flipped), "does not match the snapshot: its SHA-256 is"),
                ("another snapshot's", otherMemory, "does not match the snapshot: its SHA-256 is"),
            };
            foreach (var (what, path, message) in cases)
            {
                using var vm = NewVm();
                using var engine = new SimEngine(Options);
                var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Restore(state, vm, engine, path));
                Assert.True(e.Refusal == SnapshotRefusal.MemoryFileMismatch, $"{what}: {e.Refusal}");
                Assert.Contains($"the memory file '{path}' ", e.Message);
                Assert.Contains(message, e.Message);
                Assert.Equal(0, vm.Vcpus[0].State.InstructionsRetired); // nothing restored: the VM is at its boot state
            }
            Assert.Equal(image, File.ReadAllBytes(memory));
        }
        finally
        {
            foreach (string f in bad.Concat([state, memory, otherState, otherMemory]))
            {
                File.Delete(f);
            }
        }
    }

    [Fact]
    public void A_save_with_no_room_leaves_no_file_under_either_name_and_the_vm_runs_on_from_the_state_taken()
    {
        // A 1 MiB tmpfs: the snapshot (several MiB) does not fit, as on a full disk. Needs root, as the containers'
        // tests do; it fails with the reason otherwise.
        string dir = Directory.CreateTempSubdirectory("nestor-full").FullName;
        var mount = Process.Start("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir])!;
        mount.WaitForExit();
        Assert.True(mount.ExitCode == 0, "this test mounts a 1 MiB tmpfs (a full disk) and needs root for it");
        try
        {
            File.WriteAllText(Path.Combine(dir, "vm.snap"), "what was here before");
            var (vm, engine, taken) = Stopped();
            using (vm)
            using (engine)
            {
                foreach (string? memory in new[] { Path.Combine(dir, "vm.mem"), null })
                {
                    var e = Assert.Throws<BadInputException>(() => SnapshotFile.Save(taken, Path.Combine(dir, "vm.snap"), memory));
                    Assert.Contains("cannot write the snapshot", e.Message);
                    Assert.Contains("nothing was written there", e.Advice);
                    Assert.Equal(["vm.snap"], Directory.GetFiles(dir).Select(Path.GetFileName));
                    Assert.Equal("what was here before", File.ReadAllText(Path.Combine(dir, "vm.snap")));
                }
                // The VM runs on from the state taken, on a fresh engine, to the uninterrupted run's end.
                var serial = new MemoryStream();
                using var again = NewVm(serial);
                using var fresh = new SimEngine(Options);
                SnapshotFile.Restore(taken.Contents, again, fresh);
                Assert.Equal(VmOutcomeKind.DebugExit, again.Run(fresh).Outcome.Kind);
                again.Serial.Flush();
                Assert.EndsWith(Encoding.UTF8.GetString(serial.ToArray()), Whole.Value.Serial);
                Assert.Equal(Whole.Value.Instructions, again.Vcpus[0].State.InstructionsRetired);
            }
        }
        finally
        {
            Process.Start("umount", [dir])!.WaitForExit();
            Directory.Delete(dir, recursive: true);
        }
    }

    // The bytes a file occupies on disk (du), which for a sparse file is less than its length.
    private static long AllocatedBytes(string path)
    {
        var du = Process.Start(new ProcessStartInfo("du", ["--block-size=1", path]) { RedirectStandardOutput = true })!;
        string output = du.StandardOutput.ReadToEnd();
        du.WaitForExit();
        return long.Parse(output.Split('\t')[0], System.Globalization.CultureInfo.InvariantCulture);
    }
}
