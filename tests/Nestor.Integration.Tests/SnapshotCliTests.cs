using System.Buffers.Binary;
using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Persistence;
using Xunit;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary>Issue 16's snapshots through the real <c>nestor</c> command, each run a process of its own:
/// <c>nestor run --snapshot-at N FILE</c>, <c>--restore FILE</c> (chained, so the VM is saved at two points),
/// <c>--snapshot-on-signal FILE</c> with SIGUSR1, and <c>nestor snapshot info</c>. NestorOS's init programs and
/// its disktest on virtio-blk and on ATA, under every technique: the pieces' console output put together equals an
/// uninterrupted run's, byte for byte, its RESULT lines included; the instructions retired are the same; the disk
/// image ends the same. And every bad snapshot is refused with its message, touching nothing.</summary>
public class SnapshotCliTests
{
    public static TheoryData<string> Techniques => ["native", "trap", "bt", "pv", "hw-shadow", "hw-nested"];

    public static TheoryData<string, string> DiskCases()
    {
        var data = new TheoryData<string, string>();
        foreach (string technique in new[] { "native", "trap", "bt", "pv", "hw-shadow", "hw-nested" })
        {
            data.Add("virtio", technique);
            data.Add("ata", technique);
        }
        return data;
    }

    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(4);

    private static string[] TechniqueArguments(string technique) => technique switch
    {
        "hw-shadow" => ["--technique", "hw", "--mmu", "shadow"],
        "hw-nested" => ["--technique", "hw", "--mmu", "nested"],
        _ => ["--technique", technique],
    };

    /// <summary>One run with <paramref name="extra"/>, its console in a log of its own, its report as JSON.</summary>
    private static (NestorResult Result, string Serial, long Instructions) RunVm(string[] vm, params string[] extra)
    {
        string log = TempPath(".log");
        var r = Run(Limit, ["run", .. vm, "--serial-log", log, "--json", .. extra]);
        long instructions = -1;
        if (r.Stdout.Length > 0 && r.Stdout.TrimStart().StartsWith('{'))
        {
            using var json = JsonDocument.Parse(r.Stdout);
            instructions = json.RootElement.GetProperty("engine_counters").GetProperty("instructions_retired").GetInt64();
        }
        return (r, File.Exists(log) ? File.ReadAllText(log) : "", instructions);
    }

    /// <summary>The uninterrupted run, then the same VM saved at a third and at two thirds of its instructions (the
    /// second save taken by a run restored from the first), then finished from the second; <paramref name="vm"/>
    /// are the pieces' options, <paramref name="wholeVm"/> the uninterrupted run's (its own copy of any disk).</summary>
    private static void SavedTwiceAndFinished(string[] vm, string technique, Func<string[]> wholeVm)
    {
        var whole = RunVm(wholeVm());
        Assert.True(whole.Result.ExitCode == 0, whole.Result.ToString());
        Assert.Contains("RESULT", whole.Serial);
        long third = whole.Instructions / 3;
        string first = TempPath(".snap"), second = TempPath(".snap");

        var a = RunVm(vm, "--snapshot-at", third.ToString(), first);
        Assert.True(a.Result.ExitCode == 0, a.Result.ToString());
        Assert.Contains($"saved the snapshot at {third:N0} instructions", a.Result.Stderr);
        var b = RunVm(vm, "--restore", first, "--snapshot-at", (2 * third).ToString(), second);
        Assert.True(b.Result.ExitCode == 0, b.Result.ToString());
        Assert.Contains($"saved the snapshot at {2 * third:N0} instructions", b.Result.Stderr);
        var c = RunVm(vm, "--restore", second);
        Assert.True(c.Result.ExitCode == 0, c.Result.ToString());

        Assert.NotEmpty(a.Serial);
        Assert.NotEmpty(c.Serial);
        Assert.Equal(whole.Serial, a.Serial + b.Serial + c.Serial);
        Assert.Equal(Results(whole.Serial), Results(a.Serial + b.Serial + c.Serial));
        if (technique == "bt")
        {
            // Shadow page tables are rebuilt on restore, not saved: under binary translation a callout's page-table
            // write may trap where the uninterrupted run's did not (or the reverse), and an emulated write retires
            // no instruction on the CPU (SnapshotTests: measured one per restore). Two restores: at most two.
            Assert.InRange(c.Instructions, whole.Instructions - 2, whole.Instructions + 2);
        }
        else
        {
            Assert.Equal(whole.Instructions, c.Instructions);
        }
    }

    private static List<string> Results(string serial) => [.. Regex.Matches(serial, "^RESULT .*$", RegexOptions.Multiline).Select(m => m.Value)];

    [Theory]
    [MemberData(nameof(Techniques))]
    public void NestorOS_saved_at_two_points_and_restored_each_time_in_a_new_process_prints_what_an_uninterrupted_run_prints(string technique)
    {
        string[] vm = [.. TechniqueArguments(technique)];
        SavedTwiceAndFinished(vm, technique, () => vm);
    }

    [Theory]
    [MemberData(nameof(DiskCases))]
    public void Disktest_saved_at_two_points_and_restored_leaves_the_same_results_and_the_same_image(string disk, string technique)
    {
        var noise = DiskTestModel.Noise(4 << 20, seed: 16);
        string wholeImage = WriteTemp(noise, ".img"), image = WriteTemp(noise, ".img");
        string device = disk == "ata" ? "ata0" : "vda";
        string[] Vm(string path) => [.. TechniqueArguments(technique), "--cmdline", $"disktest {device} rand", "--disk", $"{path},if={disk}"];
        SavedTwiceAndFinished(Vm(image), technique, () => Vm(wholeImage));
        Assert.True(File.ReadAllBytes(wholeImage).AsSpan().SequenceEqual(File.ReadAllBytes(image)), "the restored runs left other bytes on the disk");
    }

    [Fact]
    public void Snapshot_info_shows_the_header_the_disks_and_the_sections_and_verifies_the_checksum()
    {
        string image = WriteTemp(DiskTestModel.Noise(1 << 20, seed: 3), ".img");
        string file = TempPath(".snap");
        var r = RunVm(["--technique", "pv", "--disk", image + ",if=ata", "--memory", "48M"], "--snapshot-at", "2000000", file);
        Assert.True(r.Result.ExitCode == 0, r.Result.ToString());
        var info = Run("snapshot", "info", file);
        Assert.True(info.ExitCode == 0, info.ToString());
        Assert.Contains($"format version {SnapshotFile.FormatVersion}", info.Stdout);
        Assert.Contains("memory file:  none", info.Stdout);
        Assert.Contains(", verified", info.Stdout);
        Assert.Contains("technique:    pv", info.Stdout);
        Assert.Contains("memory:       48 MiB", info.Stdout);
        Assert.Contains("instructions: 2,000,000 retired", info.Stdout);
        Assert.Contains($"ata0  {Path.GetFullPath(image)}  1,048,576 bytes  sha256 ", info.Stdout);
        // Each section with its version: the vCPU's is CpuStateFormat's (3 since several vCPUs), the others 1 or 2.
        Assert.Matches($"(?m)^  CPU0 +{Nestor.Hypervisor.Persistence.CpuStateFormat.Version} ", info.Stdout);
        foreach (string tag in new[] { "RAM ", "ATA0", "VMM " })
        {
            Assert.Matches($"(?m)^  {Regex.Escape(tag)} +[12] ", info.Stdout);
        }
        var bad = File.ReadAllBytes(file);
        bad[bad.Length / 3] ^= 1;
        string corrupted = WriteTemp(bad, ".snap");
        var refused = Run("snapshot", "info", corrupted);
        Assert.Equal(120, refused.ExitCode);
        Assert.Contains("the snapshot is corrupted: its CRC-64 is", refused.Stderr);
    }

    [Fact]
    public void Every_bad_snapshot_is_refused_with_its_message_and_nothing_is_run_or_overwritten()
    {
        byte[] noise = DiskTestModel.Noise(1 << 20, seed: 9);
        string image = WriteTemp(noise, ".img");
        string[] vm = ["--technique", "hw", "--cmdline", "disktest ata0 seq", "--disk", image + ",if=ata"];
        string file = TempPath(".snap");
        var taken = RunVm(vm, "--snapshot-at", "3000000", file);
        Assert.True(taken.Result.ExitCode == 0, taken.Result.ToString());
        byte[] snapshot = File.ReadAllBytes(file);
        byte[] disk = File.ReadAllBytes(image);

        byte[] bumped = (byte[])snapshot.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(bumped.AsSpan(8), SnapshotFile.FormatVersion + 1);
        byte[] flipped = (byte[])snapshot.Clone();
        flipped[snapshot.Length / 2] ^= 0x80;
        var cases = new (string What, string Snapshot, string[] Options, string Message)[]
        {
            ("truncated", WriteTemp(snapshot[..(snapshot.Length - 4096)], ".snap"), vm, "the snapshot is truncated: its header declares"),
            ("flipped byte", WriteTemp(flipped, ".snap"), vm, "the snapshot is corrupted: its CRC-64 is"),
            ("version bumped", WriteTemp(bumped, ".snap"), vm, $"the snapshot's format version is {SnapshotFile.FormatVersion + 1}, newer than this Nestor reads ({SnapshotFile.FormatVersion})"),
            ("wrong engine", file, ["--engine", "kvm", .. vm[2..]], "the snapshot was taken on engine sim, and this VM runs on kvm"),
            ("wrong memory", file, [.. vm, "--memory", "32M"], "wrong configuration: the snapshot's VM has 64 MiB of memory"),
            ("wrong technique", file, ["--technique", "trap", .. vm[2..]], "wrong configuration: the snapshot was taken under technique hw+nested, and this VM runs trap"),
        };
        foreach (var (what, path, options, message) in cases)
        {
            byte[] before = File.ReadAllBytes(path);
            var r = RunVm(options, "--restore", path);
            Assert.True(r.Result.ExitCode == 120, $"{what}: {r.Result}");
            Assert.Contains(message, r.Result.Stderr);
            Assert.Equal("", r.Serial);
            Assert.Equal(before, File.ReadAllBytes(path));
            Assert.Equal(disk, File.ReadAllBytes(image));
        }

        // A stop before the point the snapshot was taken at would not stop at N: refused, nothing saved.
        string later = TempPath(".snap");
        var past = RunVm(vm, "--restore", file, "--snapshot-at", "1000", later);
        Assert.True(past.Result.ExitCode == 120, past.Result.ToString());
        Assert.Contains("--snapshot-at 1000: the snapshot restored was taken at 3,000,000 instructions, past it", past.Result.Stderr);
        Assert.False(File.Exists(later));
        Assert.Equal("", past.Serial);

        // The disk changed since: one byte flipped.
        disk[^1] ^= 1;
        File.WriteAllBytes(image, disk);
        var changed = RunVm(vm, "--restore", file);
        Assert.True(changed.Result.ExitCode == 120, changed.Result.ToString());
        Assert.Contains($"the disk '{Path.GetFullPath(image)}' (ata0 (master)) changed since the snapshot", changed.Result.Stderr);
        Assert.Equal(snapshot, File.ReadAllBytes(file));
        Assert.Equal(disk, File.ReadAllBytes(image));
    }

    [Fact]
    public async Task Sigusr1_saves_a_snapshot_and_the_run_goes_on_and_the_snapshot_finishes_as_the_run_did()
    {
        string[] vm = ["--technique", "hw", "--mmu", "shadow"];
        var whole = RunVm(vm);
        Assert.True(whole.Result.ExitCode == 0, whole.Result.ToString());

        string file = TempPath(".snap"), log = TempPath(".log");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["exec", Path.Combine(AppContext.BaseDirectory, "nestor.dll"), "run", .. vm, "--serial-log", log, "--json", "--snapshot-on-signal", file])
        {
            info.ArgumentList.Add(a);
        }
        using var p = Process.Start(info)!;
        try
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            // The handler is registered before the VM starts, and the first RESULT line comes a million instructions in.
            var waited = Stopwatch.StartNew();
            while (!(File.Exists(log) && File.ReadAllText(log).Contains("RESULT")) && !p.HasExited && waited.Elapsed < Limit)
            {
                await Task.Delay(20);
            }
            Assert.False(p.HasExited, "the run ended before the signal could be sent");
            using (var kill = Process.Start("kill", ["-USR1", p.Id.ToString()]))
            {
                kill.WaitForExit();
            }
            Assert.True(p.WaitForExit(Limit), "the run did not finish after SIGUSR1");
            string errors = await stderr;
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {errors}");
            Assert.Contains("SIGUSR1: saved the snapshot at", errors);
            using var json = JsonDocument.Parse(await stdout);
            Assert.Equal(whole.Serial, File.ReadAllText(log));
        }
        finally
        {
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
            }
        }
        var restored = RunVm(vm, "--restore", file);
        Assert.True(restored.Result.ExitCode == 0, restored.Result.ToString());
        Assert.NotEmpty(restored.Serial);
        Assert.EndsWith(restored.Serial, whole.Serial);
        Assert.True(restored.Serial.Length < whole.Serial.Length, "the snapshot was taken before the run began");
        Assert.Equal(whole.Instructions, restored.Instructions);
    }
    /// <summary>Part 5, KVM: a ring-0 guest run on KVM until its HLT, its state read back with KVM_GET_REGS/SREGS/
    /// FPU/MSRS into the VM and saved; a new VM on a new KVM VM restored from the file (the state loaded with the
    /// SET forms) runs on from the instruction after the HLT, with the registers and the RAM the first left.</summary>
    [Fact]
    public void A_ring0_guest_saved_after_a_run_on_kvm_runs_on_in_a_new_kvm_vm_restored_from_the_file()
    {
        RequireKvm();
        var code = GuestAssembler.Assemble(a =>
        {
            a.mov(rbx, 0x1234);
            a.mov(rax, 0x30_0000);
            a.mov(__qword_ptr[rax], rbx); // RAM the restored VM must have
            a.hlt();                       // interrupts off: the run ends here
            a.mov(rcx, __qword_ptr[rax]);
            a.lea(rcx, rcx + 1);
            a.mov(dx, 0xF4);
            a.mov(eax, ecx);
            a.@out(dx, eax);
            a.hlt();
        });
        VmConfig Config() => new()
        {
            Engine = EngineKind.Kvm,
            Kernel = GuestAssembler.Flat("kvm-snapshot", code),
            MemoryBytes = 4UL << 20,
            Timeout = TimeSpan.FromSeconds(30),
        };
        byte[] file;
        using (var vm = Vm.Create(Config()))
        {
            var engine = new KvmEngine();
            Assert.Equal(VmOutcomeKind.Halted, vm.Run(engine).Outcome.Kind);
            file = SnapshotFile.Encode(vm, engine);
        }
        var contents = SnapshotFile.Decode(file);
        Assert.Equal(EngineKind.Kvm, contents.Header.Engine);
        Assert.DoesNotContain(contents.Sections, s => s.Tag == "VMM ");
        using (var vm = Vm.Create(Config()))
        using (var sim = new SimEngine())
        {
            var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Restore(contents, vm, sim));
            Assert.Equal(SnapshotRefusal.WrongEngine, e.Refusal);
            Assert.Contains("taken on engine kvm, and this VM runs on sim", e.Message);
        }
        using (var vm = Vm.Create(Config()))
        {
            var engine = new KvmEngine();
            SnapshotFile.Restore(contents, vm, engine);
            var outcome = vm.Run(engine).Outcome;
            Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
            Assert.Equal(0x1235u, outcome.GuestStatus);
        }
    }

    /// <summary>Firecracker's layout through the command: <c>--snapshot-at N FILE --mem-file MEM</c> writes the state
    /// and a sparse memory file, <c>snapshot info</c> names the memory file, <c>--restore FILE</c> finds it and runs on
    /// to the uninterrupted end; a truncated or a foreign memory file is refused naming it, with status 120.</summary>
    [Fact]
    public void A_snapshot_with_a_memory_file_restores_through_the_command_and_a_bad_memory_file_is_refused()
    {
        string[] vm = ["--technique", "hw"];
        var whole = RunVm(vm);
        Assert.True(whole.Result.ExitCode == 0, whole.Result.ToString());
        string state = TempPath(".snap"), memory = TempPath(".mem"), other = TempPath(".snap"), otherMemory = TempPath(".mem");
        long third = whole.Instructions / 3;
        var a = RunVm(vm, "--snapshot-at", third.ToString(), state, "--mem-file", memory);
        Assert.True(a.Result.ExitCode == 0, a.Result.ToString());
        Assert.Contains($"its RAM to '{memory}' (67,108,864 bytes, sparse)", a.Result.Stderr);
        var info = Run("snapshot", "info", state);
        Assert.True(info.ExitCode == 0, info.ToString());
        Assert.Contains($"memory file:  {Path.GetFullPath(memory)}  67,108,864 bytes  sha256 ", info.Stdout);
        var c = RunVm(vm, "--restore", state);
        Assert.True(c.Result.ExitCode == 0, c.Result.ToString());
        Assert.Equal(whole.Serial, a.Serial + c.Serial);
        Assert.Equal(whole.Instructions, c.Instructions);

        Assert.Equal(0, RunVm(vm, "--snapshot-at", (2 * third).ToString(), other, "--mem-file", otherMemory).Result.ExitCode);
        byte[] image = File.ReadAllBytes(memory);
        Assert.NotEqual(image, File.ReadAllBytes(otherMemory)); // the guest wrote RAM between the two points
        foreach (var (bytes, message) in new[]
        {
            (image[..^8192], $"the memory file '{Path.GetFullPath(memory)}' has {image.Length - 8192:N0} bytes, and the snapshot recorded {image.Length:N0} (truncated)"),
            (File.ReadAllBytes(otherMemory), $"the memory file '{Path.GetFullPath(memory)}' does not match the snapshot: its SHA-256 is"),
        })
        {
            File.WriteAllBytes(memory, bytes);
            var refused = RunVm(vm, "--restore", state);
            Assert.True(refused.Result.ExitCode == 120, refused.Result.ToString());
            Assert.Contains(message, refused.Result.Stderr);
            Assert.Equal("", refused.Serial);
        }
        File.Delete(memory);
        var missing = RunVm(vm, "--restore", state);
        Assert.True(missing.Result.ExitCode == 120, missing.Result.ToString());
        Assert.Contains($"the memory file '{Path.GetFullPath(memory)}' is missing", missing.Result.Stderr);
        var stray = Run(["run", .. vm, "--mem-file", memory]);
        Assert.Equal(120, stray.ExitCode);
        Assert.Contains("--mem-file is where this run's snapshots put their RAM", stray.Stderr);
    }

    /// <summary>Snapshots of a VM of <c>nestor host run</c> from the command line: <c>nestor snapshot save --api</c>
    /// (with a memory file) and <c>nestor host ctl SOCKET snapshot</c> (staying paused); then each restored into a new
    /// host with <c>--restore NAME=FILE</c>. The guest spins forever, so the host is there whenever the commands come.</summary>
    [Fact]
    public async Task A_hosted_vm_is_saved_through_the_control_api_and_restored_into_a_new_host()
    {
        string apiSocket = TempPath(".sock"), first = TempPath(".snap"), memory = TempPath(".mem"), second = TempPath(".snap");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in (string[])["exec", Path.Combine(AppContext.BaseDirectory, "nestor.dll"), "host", "run",
            "--vm", "spin=builtin:spin,technique=hw,memory=16M", "--api-socket", apiSocket, "--timeout", "120"])
        {
            info.ArgumentList.Add(arg);
        }
        using var host = Process.Start(info)!;
        var stdout = host.StandardOutput.ReadToEndAsync();
        var stderr = host.StandardError.ReadToEndAsync();
        try
        {
            var watch = Stopwatch.StartNew();
            while (!File.Exists(apiSocket))
            {
                if (host.HasExited)
                {
                    Assert.Fail($"nestor host run ended before it made its socket: {await stderr}");
                }
                Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), "no socket within 60 s");
                Thread.Sleep(50);
            }
            var save = Run("snapshot", "save", "--api", apiSocket, "spin", first, "--mem-file", memory);
            Assert.True(save.ExitCode == 0, save.ToString());
            Assert.Matches($"^spin: saved at [0-9,]+ instructions to '{Regex.Escape(Path.GetFullPath(first))}' \\([0-9,]+ bytes\\), its RAM to '{Regex.Escape(Path.GetFullPath(memory))}' \\(16,777,216 bytes\\); now Running", save.Stdout);
            var ctl = Run("host", "ctl", apiSocket, "snapshot", "spin", second, "--stay-paused", "--json");
            Assert.True(ctl.ExitCode == 0, ctl.ToString());
            using (var json = JsonDocument.Parse(ctl.Stdout))
            {
                Assert.Equal("Paused", json.RootElement.GetProperty("state").GetString());
                Assert.True(json.RootElement.GetProperty("instructions_retired").GetInt64() > 0);
            }
            var nothing = Run("host", "ctl", apiSocket, "snapshot", "nobody", second);
            Assert.NotEqual(0, nothing.ExitCode);
            Assert.Contains("there is no VM named 'nobody'", nothing.Stderr);
            Assert.Equal(0, Run("host", "ctl", apiSocket, "stop", "spin").ExitCode);
            Assert.True(host.WaitForExit(TimeSpan.FromSeconds(60)), "the host ended once its VM was stopped");
            await stdout;
        }
        finally
        {
            if (!host.HasExited)
            {
                host.Kill(entireProcessTree: true);
            }
        }
        long Taken(string file) => SnapshotFile.Read(file).Header.InstructionsRetired;
        Assert.True(Taken(second) > Taken(first));
        foreach (string file in new[] { first, second })
        {
            var restored = Run(Limit, ["host", "run", "--vm", "spin=builtin:spin,technique=hw,memory=16M", "--restore", $"spin={file}", "--duration-ms", "5"]);
            Assert.True(restored.ExitCode == 0, restored.ToString());
            Assert.Contains($"VM 'spin' restored from '{file}' (hw+nested, {Taken(file):N0} instructions retired)", restored.Stdout);
        }
        var wrong = Run(Limit, ["host", "run", "--vm", "spin=builtin:spin,technique=trap,memory=16M", "--restore", $"spin={first}", "--duration-ms", "5"]);
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.Contains("wrong configuration: the snapshot was taken under technique hw+nested, and this VM runs trap", wrong.Stdout + wrong.Stderr);
    }

    /// <summary>KVM's vCPU state beyond the registers: a ring-0 guest writes IA32_SYSENTER_ESP and _EIP, halts, is
    /// saved, and a new VM on a new KVM VM restored from the file reads both back (the MSRs the guest changed are in
    /// the KVMS section, with the XSAVE area and the kvmclock); without them the restored guest would read zeros.
    /// This host's nested KVM fails every x87 and SSE instruction (KVM "could not emulate" fldcw, ldmxcsr, movq), so
    /// no guest here can put a value in the XSAVE area: VcpuStateTests carries one across at the binding's level.</summary>
    [Fact]
    public void A_ring0_guest_restored_on_kvm_has_the_msrs_it_wrote_back()
    {
        RequireKvm();
        var code = GuestAssembler.Assemble(a =>
        {
            a.mov(ecx, 0x175); // IA32_SYSENTER_ESP
            a.mov(eax, 0xABCD);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, 0x176); // IA32_SYSENTER_EIP
            a.mov(eax, 0x1200);
            a.wrmsr();
            a.xor(eax, eax);
            a.hlt();           // the run ends here; the snapshot is taken
            a.mov(ecx, 0x175);
            a.rdmsr();
            a.mov(ebx, eax);
            a.mov(ecx, 0x176);
            a.rdmsr();
            a.add(eax, ebx);
            a.mov(dx, 0xF4);
            a.@out(dx, eax);
            a.hlt();
        });
        VmConfig Config() => new()
        {
            Engine = EngineKind.Kvm,
            Kernel = GuestAssembler.Flat("kvm-msrs", code),
            MemoryBytes = 4UL << 20,
            Timeout = TimeSpan.FromSeconds(30),
        };
        byte[] file;
        using (var vm = Vm.Create(Config()))
        {
            var engine = new KvmEngine();
            var first = vm.Run(engine).Outcome;
            Assert.True(first.Kind == VmOutcomeKind.Halted, first.Message);
            var state = engine.ExtendedStateOf(vm);
            Assert.Contains(state.Msrs, m => m.Index == 0x175 && m.Data == 0xABCD);
            Assert.Contains(state.Msrs, m => m.Index == 0x176 && m.Data == 0x1200);
            Assert.DoesNotContain(state.Msrs, m => m.Index == 0xC000_0080); // EFER travels in CPU0
            Assert.True(state.FloatingPointArea.Length >= 4096, $"an XSAVE area of {state.FloatingPointArea.Length} bytes");
            Assert.NotNull(state.Clock);
            file = SnapshotFile.Encode(vm, engine);
        }
        var contents = SnapshotFile.Decode(file);
        Assert.Contains(contents.Sections, s => s.Tag == "KVMS");
        using (var vm = Vm.Create(Config()))
        {
            var engine = new KvmEngine();
            SnapshotFile.Restore(contents, vm, engine);
            var outcome = vm.Run(engine).Outcome;
            Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
            Assert.Equal(0xABCDu + 0x1200u, outcome.GuestStatus);
        }
    }
}
