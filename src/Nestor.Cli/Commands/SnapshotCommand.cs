using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using Nestor.Cli.Output;
using Nestor.Hypervisor;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor snapshot info FILE</c>, and the snapshot options of <c>nestor run</c>
/// (<c>--snapshot-at N FILE</c>, <c>--snapshot-on-signal FILE</c>, <c>--restore FILE</c>): docs/migration.md.</summary>
internal static class SnapshotCommand
{
    /// <summary>SIGUSR1 on Linux (signal(7)); .NET's PosixSignal takes raw numbers for the signals it does not name.</summary>
    private const int SigUsr1 = 10;

    public static Command Create()
    {
        var file = new Argument<string>("FILE") { Description = "A snapshot file written by nestor run --snapshot-at or --snapshot-on-signal" };
        var info = new Command("info", "Show a snapshot's header, configuration, disks and sections, and verify its CRC-64") { file };
        info.SetAction(parse =>
        {
            try
            {
                WriteInfo(Console.Out, SnapshotFile.Read(parse.GetValue(file)!));
                return 0;
            }
            catch (NestorException e)
            {
                Console.Error.WriteLine($"nestor: {e.Message}");
                if (e.Advice is not null)
                {
                    Console.Error.WriteLine($"  what to do: {e.Advice}");
                }
                return ExitStatus.For(e);
            }
        });
        var socket = new Option<string?>("--api") { Description = "The control API socket of the nestor host run whose VM to save (--api-socket)" };
        var vmName = new Argument<string>("VM") { Description = "The hosted VM's name" };
        var target = new Argument<string>("FILE") { Description = "The snapshot file to write" };
        var memFile = MemoryFileOption();
        var stayPaused = StayPausedOption();
        var json = new Option<bool>("--json") { Description = "Print the API's answer as JSON" };
        var save = new Command("save", "Save a running or paused VM of nestor host run through its control API: pause, save, resume (docs/migration.md)")
        {
            socket, vmName, target, memFile, stayPaused, json,
        };
        save.SetAction(parse => Host.HostApiCli.Guard(() =>
        {
            string api = parse.GetValue(socket) ?? throw new BadInputException("nestor snapshot save needs --api SOCKET: it saves a VM of a running nestor host run",
                "Start the host with nestor host run --api-socket SOCKET, then nestor snapshot save --api SOCKET VM FILE; a nestor run saves itself with --snapshot-at or --snapshot-on-signal");
            return SaveThroughApi(api, parse.GetValue(vmName)!, parse.GetValue(target), parse.GetValue(memFile), parse.GetValue(stayPaused), parse.GetValue(json));
        }));
        return new Command("snapshot", "Save VMs of a host (save --api), inspect snapshots (info); nestor run takes them with --snapshot-at or --snapshot-on-signal and restores them with --restore") { info, save };
    }

    /// <summary><c>--mem-file MEM</c>: where a save puts the RAM (Firecracker's separate memory file).</summary>
    internal static Option<string?> MemoryFileOption() => new("--mem-file")
    {
        Description = "Write the snapshot's RAM to this file (a sparse image of guest memory, only touched pages written) and the rest to FILE, as Firecracker does; restore finds it where it was written",
    };

    private static Option<bool> StayPausedOption() => new("--stay-paused") { Description = "Leave the VM paused after the snapshot (it is resumed by default)" };

    /// <summary><c>nestor host run --restore NAME=FILE</c>.</summary>
    internal static Option<string[]> HostRestoreOption() => new("--restore")
    {
        Description = "Restore the VM NAME from a snapshot FILE at power-on (repeatable): NAME=FILE; the VM's configuration must be the snapshot's",
        AllowMultipleArgumentsPerToken = false,
    };

    /// <summary>Parses <c>--restore NAME=FILE</c> values against the host's VMs.</summary>
    internal static Dictionary<string, string> ParseHostRestores(string[]? values, Hypervisor.Hosting.HostSpec spec)
    {
        var restores = new Dictionary<string, string>();
        foreach (string value in values ?? [])
        {
            int at = value.IndexOf('=');
            if (at <= 0 || at == value.Length - 1)
            {
                throw new BadInputException($"--restore {value}: give NAME=FILE, the VM's name and its snapshot", "e.g. --restore web=web.snap");
            }
            string name = value[..at];
            if (spec.Vms.All(v => v.Name != name))
            {
                throw new BadInputException($"--restore {value}: the host has no VM named '{name}'", $"VMs: {string.Join(", ", spec.Vms.Select(v => v.Name))}");
            }
            if (!restores.TryAdd(name, value[(at + 1)..]))
            {
                throw new BadInputException($"--restore names VM '{name}' twice", "Give one snapshot per VM");
            }
        }
        return restores;
    }

    /// <summary>The arguments <c>nestor host ctl SOCKET snapshot VM FILE</c> adds.</summary>
    internal static (Argument<string?> File, Option<string?> MemoryFile, Option<bool> StayPaused) HostCtlArguments() =>
        (new Argument<string?>("FILE") { Description = "snapshot: the snapshot file to write", Arity = ArgumentArity.ZeroOrOne }, MemoryFileOption(), StayPausedOption());

    /// <summary>Saves a hosted VM through the control API (<c>PUT /vms/NAME/snapshot</c>) and says what was written.</summary>
    internal static int SaveThroughApi(string socket, string vm, string? file, string? memoryFile, bool stayPaused, bool json)
    {
        if (string.IsNullOrEmpty(file))
        {
            throw new BadInputException("a snapshot needs the FILE to write", "Run nestor host ctl SOCKET snapshot VM FILE [--mem-file MEM]");
        }
        // The host writes the files: give it full paths, since its working directory need not be this one's.
        using var client = new Hypervisor.Hosting.ControlApi.ControlApiClient(socket, TimeSpan.FromMinutes(3));
        var taken = client.Snapshot(vm, new Hypervisor.Hosting.ControlApi.SnapshotCreateDocument(
            Path.GetFullPath(file), memoryFile is null ? null : Path.GetFullPath(memoryFile), stayPaused));
        if (json)
        {
            Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(taken, Hypervisor.Hosting.ControlApi.ControlApiSnapshotJson.Default.SnapshotDocument));
            return 0;
        }
        Console.WriteLine($"{vm}: saved at {taken.InstructionsRetired:N0} instructions to '{taken.Path}' ({taken.Bytes:N0} bytes)" +
                          (taken.MemPath is null ? "" : $", its RAM to '{taken.MemPath}' ({taken.MemBytes:N0} bytes)") + $"; now {taken.State}");
        return 0;
    }

    /// <summary>What <c>nestor snapshot info</c> prints.</summary>
    internal static void WriteInfo(TextWriter output, SnapshotContents contents)
    {
        var h = contents.Header;
        output.WriteLine($"Nestor snapshot, format version {h.FormatVersion}, {h.FileBytes:N0} bytes");
        output.WriteLine($"  checksum:     CRC-64/REDIS (Firecracker's) 0x{h.Checksum:x16}, verified");
        output.WriteLine($"  engine:       {(h.Engine == EngineKind.Sim ? "sim" : "kvm")}");
        output.WriteLine($"  technique:    {h.TechniqueName}{(h.LargeNestedPages ? " (2 MiB nested pages)" : "")}");
        output.WriteLine($"  memory:       {h.MemoryBytes >> 20} MiB ({h.MemoryBytes:N0} bytes)");
        output.WriteLine($"  instructions: {h.InstructionsRetired:N0} retired when taken");
        output.WriteLine($"  fingerprint:  {h.Fingerprint} (SHA-256 of the configuration)");
        output.WriteLine(h.MemoryFile is { } m
            ? $"  memory file:  {m.Path}  {m.Bytes:N0} bytes  sha256 {m.Sha256} (checked at restore)"
            : "  memory file:  none (the RAM section holds the touched pages)");
        output.WriteLine("Configuration:");
        foreach (string line in h.Configuration.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            output.WriteLine($"  {line}");
        }
        output.WriteLine(h.Disks.Count == 0 ? "Disks: none" : "Disks (by reference; the image must be unchanged to restore):");
        foreach (var d in h.Disks)
        {
            output.WriteLine($"  {DiskConfigName(d.Interface)}{d.Index}  {d.Path}  {d.Bytes:N0} bytes  sha256 {d.Sha256}");
        }
        output.WriteLine("Sections:");
        output.WriteLine("  tag   version        bytes");
        long total = 0;
        foreach (var (tag, version, length) in contents.Sections)
        {
            output.WriteLine($"  {tag}  {version,7}  {length,11:N0}");
            total += length;
        }
        output.WriteLine($"  (sections: {contents.Sections.Count}, {total:N0} bytes of fields)");
    }

    private static string DiskConfigName(Hypervisor.Devices.Storage.DiskInterface kind) =>
        Hypervisor.Devices.Storage.DiskConfig.InterfaceName(kind);

    /// <summary>The snapshot options of one <c>nestor run</c>.</summary>
    internal sealed record Plan(long? AtInstruction, string? AtFile, string? OnSignalFile, string? RestoreFile, string? MemoryFile = null)
    {
        public bool Any => AtFile is not null || OnSignalFile is not null || RestoreFile is not null;

        /// <summary>Parses <c>--snapshot-at N FILE</c> and checks the options against the engine.</summary>
        public static Plan Parse(string[]? at, string? onSignal, string? restore, EngineKind engine, bool serviceVm, string? memoryFile = null)
        {
            long? n = null;
            string? atFile = null;
            if (at is { Length: > 0 })
            {
                if (at.Length != 2)
                {
                    throw new BadInputException("--snapshot-at takes two values: the instruction count and the file", "Give --snapshot-at N FILE, e.g. --snapshot-at 5000000 vm.snap");
                }
                if (!long.TryParse(at[0], NumberStyles.None, CultureInfo.InvariantCulture, out long count) || count <= 0)
                {
                    throw new BadInputException($"--snapshot-at {at[0]}: the first value is the number of guest instructions retired before the snapshot, a positive integer",
                        "Give --snapshot-at N FILE with N > 0");
                }
                (n, atFile) = (count, at[1]);
            }
            var plan = new Plan(n, atFile, onSignal, restore, memoryFile);
            if (memoryFile is not null && atFile is null && onSignal is null)
            {
                throw new BadInputException("--mem-file is where this run's snapshots put their RAM, and it takes none",
                    "Give it with --snapshot-at N FILE or --snapshot-on-signal FILE; --restore finds the memory file where the snapshot recorded it");
            }
            if (atFile is not null && engine != EngineKind.Sim)
            {
                throw new BadInputException("--snapshot-at stops after N instructions, which only the software machine counts exactly",
                    "Drop --engine kvm (sim is the default), or snapshot a KVM guest with --snapshot-on-signal FILE");
            }
            if (plan.Any && serviceVm)
            {
                throw new BadInputException("--service-vm runs two VMs, and a snapshot holds one", "Drop --service-vm, or the snapshot options");
            }
            return plan;
        }

        /// <summary>The software machine's options with the stop at <see cref="AtInstruction"/>.</summary>
        public SimOptions Apply(SimOptions options) => AtInstruction is { } n ? options with { StopAtInstruction = n } : options;
    }

    /// <summary>Runs <paramref name="vm"/> on <paramref name="engine"/> as the plan says: restored first from
    /// <see cref="Plan.RestoreFile"/>; stopped at <see cref="Plan.AtInstruction"/>, saved, and ended there; paused by
    /// each SIGUSR1 at the engine's next stop check, saved to <see cref="Plan.OnSignalFile"/> and continued on a
    /// fresh engine restored from those very bytes (the software engine rebuilds its VMM for each run, so what
    /// continues is exactly what the file holds). Engines made for the continuations are added to
    /// <paramref name="engines"/>, for the caller to dispose of.</summary>
    /// <returns>The last run, the engine that ran it, and the file a --snapshot-at saved (null if the guest ended first).</returns>
    public static (RunResult Run, IEngine Engine, string? Saved) Run(Vm vm, IEngine engine, RunControl control, Plan plan,
        Func<IEngine> newEngine, List<IEngine> engines)
    {
        if (plan.RestoreFile is { } restore)
        {
            var header = SnapshotFile.Restore(restore, vm, engine);
            Console.Error.WriteLine($"nestor: restored '{restore}' ({header.TechniqueName}, {header.InstructionsRetired:N0} instructions retired)");
            if (plan.AtInstruction is { } at && at <= header.InstructionsRetired)
            {
                // N counts from the guest's boot, and the restored VM is already past it: a save now would not be at N.
                throw new BadInputException($"--snapshot-at {at}: the snapshot restored was taken at {header.InstructionsRetired:N0} instructions, past it",
                    $"Give an N greater than {header.InstructionsRetired} (instructions count from the guest's boot)");
            }
        }
        int pauses = 0;
        using var signal = plan.OnSignalFile is null ? null : PosixSignalRegistration.Create((PosixSignal)SigUsr1, context =>
        {
            context.Cancel = true;
            Interlocked.Increment(ref pauses);
            control.Stop(VmOutcomeKind.Breakpoint);
        });
        while (true)
        {
            var run = vm.Run(engine, control);
            long retired = vm.Vcpus[0].State.InstructionsRetired;
            if (run.Outcome.Kind == VmOutcomeKind.Breakpoint && plan.AtInstruction is { } n && retired >= n && control.StopReason is null)
            {
                var saved = SnapshotFile.Save(plan.AtFile!, vm, engine, plan.MemoryFile);
                Console.Error.WriteLine($"nestor: saved the snapshot at {retired:N0} instructions to '{plan.AtFile}' ({saved.Bytes:N0} bytes)" +
                                        (saved.MemoryFile is { } m ? $", its RAM to '{plan.MemoryFile}' ({m.Bytes:N0} bytes, sparse)" : "") +
                                        "; continue it with nestor run --restore FILE and the same options");
                return (run, engine, plan.AtFile);
            }
            if (run.Outcome.Kind == VmOutcomeKind.Breakpoint && Volatile.Read(ref pauses) > 0 && control.StopReason == VmOutcomeKind.Breakpoint)
            {
                Interlocked.Exchange(ref pauses, 0);
                var fresh = newEngine();
                engines.Add(fresh);
                var taken = SnapshotFile.Take(vm, engine);
                string said;
                try
                {
                    long bytes = SnapshotFile.Save(taken, plan.OnSignalFile!, plan.MemoryFile).Bytes;
                    said = $"saved the snapshot at {retired:N0} instructions to '{plan.OnSignalFile}' ({bytes:N0} bytes)";
                }
                catch (NestorException e)
                {
                    said = $"the snapshot at {retired:N0} instructions was not saved: {e.Message}"; // the VM runs on regardless
                }
                SnapshotFile.Restore(taken.Contents, vm, fresh);
                engine = fresh;
                control.Resume(VmOutcomeKind.Breakpoint);
                Console.Error.WriteLine($"nestor: SIGUSR1: {said}; running on");
                continue;
            }
            if (plan.AtFile is not null)
            {
                Console.Error.WriteLine($"nestor: the run ended after {retired:N0} instructions, before --snapshot-at {plan.AtInstruction}: no snapshot was taken");
            }
            return (run, engine, null);
        }
    }
}
