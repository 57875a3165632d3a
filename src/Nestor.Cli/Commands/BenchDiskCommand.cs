using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Nestor.Cli.Output;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.CostModel;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Errors;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench disk</c>: NestorOS's <c>diskbench</c> through the emulated ATA disk, virtio-blk, the
/// assigned controller and a service VM (whose own disk is ATA), on one scratch image, under each technique; exits,
/// interrupts, modelled cycles and wall time in one table, and the service VM's steps (issue 13).</summary>
internal static class BenchDiskCommand
{
    /// <summary>The techniques <c>--techniques</c> takes, by the names the disk tests use (and the table's).</summary>
    private static readonly (string Name, BenchConfiguration Configuration)[] Techniques =
    [
        ("native", BenchConfiguration.Native),
        ("hw-nested", BenchConfiguration.HardwareNested),
        ("hw-shadow", BenchConfiguration.HardwareShadow),
        ("pv", BenchConfiguration.Paravirtual),
    ];

    private static readonly (string Name, DiskInterface Interface)[] Interfaces =
        [("ata", DiskInterface.Ata), ("virtio", DiskInterface.Virtio), ("assigned", DiskInterface.Assigned)];

    /// <summary>The scratch image is at most this large: diskbench wraps at the disk's end.</summary>
    private const long MaximumImageBytes = 64L << 20;

    public static Command Create()
    {
        var size = new Option<string>("--size") { Description = "Bytes per request: a multiple of 512 up to 1M (suffixes K, M)", DefaultValueFactory = _ => "4096" };
        var count = new Option<long>("--count") { Description = "Requests per run", DefaultValueFactory = _ => 64 };
        var operation = new Option<string>("--op") { Description = "read or write (a write run ends with a flush)", DefaultValueFactory = _ => "read" };
        var interfaces = new Option<string>("--interfaces")
        {
            Description = "Comma-separated: ata, virtio, assigned, service (a service VM serving the image through its ATA driver; under the techniques with a VMM only)",
            DefaultValueFactory = _ => "ata,virtio,assigned,service",
        };
        var techniques = new Option<string>("--techniques") { Description = "Comma-separated: native, hw-nested, hw-shadow, pv", DefaultValueFactory = _ => "native,hw-nested" };
        var wait = new Option<string>("--wait") { Description = "How NestorOS's drivers wait for their device: poll (NestorOS's default) or irq", DefaultValueFactory = _ => "poll" };
        var profile = new Option<string>("--profile") { Description = $"Cost profile: {string.Join(", ", CostProfile.All.Select(p => p.Name))}", DefaultValueFactory = _ => CostProfile.Pentium4.Name };
        var json = new Option<bool>("--json") { Description = "Print {\"rows\":[...]} as JSON instead of a table" };
        var verbose = new Option<bool>("--verbose") { Description = "Show stack traces of internal errors" };
        var timeout = TypedOptions.Seconds("--timeout", "Stop any one run that takes longer than this many seconds; the bench then fails");
        var command = new Command("disk", "Run NestorOS's diskbench through the ATA disk (emulated), virtio-blk (paravirtual), the assigned controller (dedicated) and a service VM (its ATA disk served over the split driver's ring) on one scratch image, under each technique, and compare exits, interrupts, modelled cycles and wall time")
        {
            size, count, operation, interfaces, techniques, wait, profile, json, verbose, timeout,
        };
        command.SetAction(parse =>
        {
            string? image = null;
            // The scratch image goes on every way out: the finally below, and SIGINT/SIGTERM, which end the process
            // without running it (the handlers run first; not cancelling lets the default termination follow).
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, _ => Remove(image));
            using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ => Remove(image));
            try
            {
                var costs = CostProfile.Find(parse.GetValue(profile)!) ?? throw new BadInputException(
                    $"there is no cost profile '{parse.GetValue(profile)}'", $"Use --profile {string.Join(" or ", CostProfile.All.Select(p => p.Name))}");
                long requestBytes = ParseRequestSize(parse.GetValue(size)!);
                long requests = parse.GetValue(count);
                if (requests < 1)
                {
                    throw new BadInputException($"--count must be at least 1, not {requests}", "Give e.g. --count 64");
                }
                string op = parse.GetValue(operation)!;
                if (op is not ("read" or "write"))
                {
                    throw new BadInputException($"--op is read or write, not '{op}'", "Give --op read or --op write");
                }
                string waitMode = parse.GetValue(wait)!;
                if (waitMode is not ("poll" or "irq"))
                {
                    throw new BadInputException($"--wait is poll or irq, not '{waitMode}'", "Give --wait poll or --wait irq");
                }
                var named = ParseList<DiskInterface?>(parse.GetValue(interfaces)!, "--interfaces",
                    [.. Interfaces.Select(i => (i.Name, (DiskInterface?)i.Interface)), (DiskBenchRow.ServiceInterfaceName, (DiskInterface?)null)]);
                var kinds = named.OfType<DiskInterface>().ToList();
                bool serviceVm = named.Contains(null);
                var configurations = ParseList(parse.GetValue(techniques)!, "--techniques", Techniques);
                var workload = new DiskWorkload(op, requestBytes, requests, waitMode == "irq");
                // The command line is checked as NestorOS would read it, as 'nestor bench' does.
                NestorOSCommandLine.Check((kinds.Count > 0 ? workload.CommandLine(kinds[0], requests) : workload.CommandLine(DiskBench.ServiceDevice, requests)).Split(' '));
                if (serviceVm && kinds.Count == 0 && configurations.All(c => c.Options.Technique == Hypervisor.Techniques.Technique.Native))
                {
                    throw new BadInputException("a service VM needs a VMM, and --techniques native has none",
                        "Add hw-nested, hw-shadow or pv to --techniques");
                }
                TimeSpan? limit = parse.GetValue(timeout) is { } seconds ? TypedOptions.ToTimeSpan(seconds) : null;
                bool asJson = parse.GetValue(json);
                var progress = asJson ? null : Console.Out;

                long imageBytes = Math.Max(requestBytes, Math.Min(requestBytes * requests, MaximumImageBytes / requestBytes * requestBytes));
                image = Path.Combine(Path.GetTempPath(), $"nestor-bench-disk-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
                using (var file = new FileStream(image, FileMode.CreateNew, FileAccess.Write))
                {
                    file.SetLength(imageBytes);
                }
                progress?.WriteLine($"nestor bench disk: diskbench {op} {requestBytes} × {requests} on a {imageBytes:N0}-byte scratch image {image}, " +
                                    $"costed with the {costs.Name} profile");
                var kernel = new KernelImageSource("built-in NestorOS", BuiltInGuests.NestorOS(), KernelFormat.Elf);
                var rows = DiskBench.Run(kernel, image, workload, kinds, configurations, costs, 64UL << 20, progress, limit, serviceVm);
                if (asJson)
                {
                    WriteJson(rows, workload, costs);
                }
                else
                {
                    WriteTable(rows, workload, costs);
                }
                return 0;
            }
            catch (Exception e)
            {
                return CommandErrors.Report(e, parse.GetValue(verbose));
            }
            finally
            {
                Remove(image);
            }
        });
        return command;
    }

    private static void Remove(string? image)
    {
        if (image is not null)
        {
            try
            {
                File.Delete(image);
            }
            catch (IOException)
            {
                // Best effort: the image is in the temporary directory and named as nestor's.
            }
        }
    }

    private static long ParseRequestSize(string text)
    {
        ulong bytes = Size.Parse(text, "--size");
        if (bytes == 0 || bytes % 512 != 0 || bytes > 1 << 20)
        {
            throw new BadInputException($"--size must be a multiple of 512 bytes from 512 to 1M (NestorOS's largest transfer), not {text}",
                "Give e.g. --size 4096");
        }
        return (long)bytes;
    }

    private static List<T> ParseList<T>(string text, string option, (string Name, T Value)[] known)
    {
        var names = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (names.Length == 0)
        {
            throw new BadInputException($"{option} names nothing", $"Give one or more of {string.Join(", ", known.Select(k => k.Name))}, comma-separated");
        }
        var values = new List<T>();
        foreach (string name in names)
        {
            // hw+nested is how 'nestor bench' spells it; both are taken.
            string canonical = name.Replace('+', '-');
            var match = known.FirstOrDefault(k => k.Name == canonical);
            if (match.Name is null)
            {
                throw new BadInputException($"{option}: there is no '{name}'", $"Give one or more of {string.Join(", ", known.Select(k => k.Name))}, comma-separated");
            }
            if (values.Contains(match.Value))
            {
                throw new BadInputException($"{option} names '{name}' twice", "Name each once");
            }
            values.Add(match.Value);
        }
        return values;
    }

    private static string TechniqueName(BenchConfiguration c) => Techniques.First(t => t.Configuration == c).Name;

    private static string TopExits(DiskBenchRow row) =>
        string.Join(", ", row.ExitsByReason.Where(x => x.Value > 0).OrderByDescending(x => x.Value).Take(3).Select(x => $"{Name(x.Key.ToString())} {x.Value:N0}"));

    private static void WriteTable(IReadOnlyList<DiskBenchRow> rows, DiskWorkload workload, CostProfile p)
    {
        Console.WriteLine();
        Console.WriteLine($"diskbench {workload.Operation} {workload.RequestBytes} × {workload.Count}, drivers {(workload.WaitForInterrupts ? "waiting for interrupts" : "polling")}, " +
                          "net of the same boot with a count of 0.");
        Console.WriteLine("Exits are the VM's exit statistics (every trapped port or MMIO access, every other entry into the VMM or device models;");
        Console.WriteLine("the serial console's left out); interrupts are those delivered to the guest, direct the register accesses that reached an");
        Console.WriteLine("assigned device without an exit;");
        Console.WriteLine($"modelled cycles are the {p.Name} profile's ({p.Description}): guest cycles plus the exits' and interrupts' modelled cost");
        Console.WriteLine("(sources: docs/cost-model.md). Wall time is this host's for the whole run, and net of the count-0 run; MiB/s is bytes over the net (\"-\" when the net is not above 0: raise --count).");
        Console.WriteLine();
        Console.WriteLine($"{"interface",-10} {"technique",-10} {"requests",9} {"bytes",12} {"exits",10} {"exits/KiB",10} {"interrupts",10} {"direct",8} " +
                          $"{"cycles/op",12} {"cycles/KiB",11} {"wall s",7} {"net s",7} {"MiB/s",8}  most frequent exits");
        foreach (var row in rows)
        {
            double perOperation = row.Cost.Total / workload.Count;
            double perKiB = row.Bytes == 0 ? 0 : row.Cost.Total / (row.Bytes / 1024.0);
            Console.WriteLine($"{row.InterfaceName,-10} {TechniqueName(row.Configuration),-10} {row.Requests,9:N0} {row.Bytes,12:N0} {row.Exits,10:N0} {row.ExitsPerKiB,10:N2} " +
                              $"{row.Interrupts,10:N0} {row.DirectDeviceAccesses,8:N0} {perOperation,12:N0} {perKiB,11:N0} {row.Wall.TotalSeconds,7:N2} {row.NetWall.TotalSeconds,7:N2} {(row.MiBPerSecond > 0 ? row.MiBPerSecond.ToString("N3", CultureInfo.InvariantCulture) : "-"),8}  {TopExits(row)}");
        }
        foreach (var (configuration, ratio) in ExitRatios(rows))
        {
            Console.WriteLine();
            Console.WriteLine($"ATA PIO / virtio-blk exits per request under {TechniqueName(configuration)}: {ratio:N1} " +
                              $"({workload.RequestBytes}-byte {workload.Operation}s, from the counted exits)");
        }
        foreach (var row in rows.Where(r => r.Steps is not null))
        {
            var s = row.Steps!;
            Console.WriteLine();
            Console.WriteLine($"Service VM under {TechniqueName(row.Configuration)}, per step (counted; modelled cycles with the {p.Name} profile, " +
                              "docs/devices.md \"The service VM\"):");
            Console.WriteLine($"  {"step",-28} {"count",10} {"cycles",14} {"cycles/op",12}");
            foreach (var (step, n, cycles) in Steps(s))
            {
                Console.WriteLine($"  {step,-28} {n,10:N0} {cycles,14:N0} {cycles / workload.Count,12:N0}");
            }
            Console.WriteLine($"  grant-copy bytes {s.GrantCopyBytes:N0}, refused grants {s.RefusedGrants:N0}; the service VM's device exits are " +
                              $"{(row.Exits == 0 ? 0 : 100.0 * s.DeviceExits / row.Exits):N1}% of the row's exits");
        }
    }

    private static IEnumerable<(string Step, long Count, double Cycles)> Steps(ServiceVmSteps s) =>
    [
        ("notify exit (user VM)", s.NotifyExits, s.NotifyCycles),
        ("switch between the VMs", s.Switches, s.SwitchCycles),
        ("service VM's device exits", s.DeviceExits, s.DeviceCycles),
        ("event interrupt (service)", s.EventInterrupts, s.EventInterrupts * (s.InterruptCycles / Math.Max(1, s.EventInterrupts + s.CompletionInterrupts))),
        ("completion interrupt (user)", s.CompletionInterrupts, s.CompletionInterrupts * (s.InterruptCycles / Math.Max(1, s.EventInterrupts + s.CompletionInterrupts))),
        ("grant copy", s.GrantCopies, s.GrantCopyCycles),
    ];

    /// <summary>The ATA/virtio exit ratio per configuration that has both rows and virtio exits to divide by.</summary>
    private static IEnumerable<(BenchConfiguration Configuration, double Ratio)> ExitRatios(IReadOnlyList<DiskBenchRow> rows)
    {
        foreach (var ata in rows.Where(r => r.Interface == DiskInterface.Ata && r.Steps is null))
        {
            var virtio = rows.FirstOrDefault(r => r.Interface == DiskInterface.Virtio && r.Configuration == ata.Configuration);
            if (virtio is { Exits: > 0 })
            {
                yield return (ata.Configuration, (double)ata.Exits / virtio.Exits);
            }
        }
    }

    private static void WriteJson(IReadOnlyList<DiskBenchRow> rows, DiskWorkload workload, CostProfile p)
    {
        using var stream = Console.OpenStandardOutput();
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("operation", workload.Operation);
        json.WriteNumber("request_bytes", workload.RequestBytes);
        json.WriteNumber("count", workload.Count);
        json.WriteString("wait", workload.WaitForInterrupts ? "irq" : "poll");
        json.WriteString("profile", p.Name);
        json.WriteNumber("clock_hz", p.ClockHz);
        json.WriteStartArray("rows");
        foreach (var row in rows)
        {
            json.WriteStartObject();
            json.WriteString("interface", row.InterfaceName);
            json.WriteString("technique", TechniqueName(row.Configuration));
            json.WriteNumber("requests", row.Requests);
            json.WriteNumber("bytes", row.Bytes);
            json.WriteNumber("exits", row.Exits);
            json.WriteNumber("exits_per_kib", row.ExitsPerKiB);
            json.WriteStartObject("exits_by_reason");
            foreach (var (reason, n) in row.ExitsByReason.OrderByDescending(x => x.Value))
            {
                json.WriteNumber(Name(reason.ToString()), n);
            }
            json.WriteEndObject();
            json.WriteNumber("direct_device_accesses", row.DirectDeviceAccesses);
            json.WriteNumber("interrupts", row.Interrupts);
            json.WriteNumber("device_interrupts", row.DeviceInterrupts);
            json.WriteNumber("modelled_cycles", Math.Round(row.Cost.Total));
            json.WriteNumber("modelled_cycles_per_operation", row.Cost.Total / workload.Count);
            json.WriteNumber("modelled_cycles_per_kib", row.Bytes == 0 ? 0 : row.Cost.Total / (row.Bytes / 1024.0));
            json.WriteNumber("instructions", row.Events.Instructions);
            json.WriteNumber("wall_seconds", row.Wall.TotalSeconds);
            json.WriteNumber("net_wall_seconds", row.NetWall.TotalSeconds);
            json.WriteNumber("mib_per_second", row.MiBPerSecond);
            json.WriteString("result", row.Result);
            if (row.Steps is { } steps)
            {
                json.WriteStartObject("service_vm_steps");
                json.WriteNumber("notify_exits", steps.NotifyExits);
                json.WriteNumber("switches", steps.Switches);
                json.WriteNumber("device_exits", steps.DeviceExits);
                json.WriteNumber("event_interrupts", steps.EventInterrupts);
                json.WriteNumber("completion_interrupts", steps.CompletionInterrupts);
                json.WriteNumber("grant_copies", steps.GrantCopies);
                json.WriteNumber("grant_copy_bytes", steps.GrantCopyBytes);
                json.WriteNumber("refused_grants", steps.RefusedGrants);
                json.WriteNumber("notify_cycles", steps.NotifyCycles);
                json.WriteNumber("switch_cycles", steps.SwitchCycles);
                json.WriteNumber("device_cycles", steps.DeviceCycles);
                json.WriteNumber("interrupt_cycles", steps.InterruptCycles);
                json.WriteNumber("grant_copy_cycles", steps.GrantCopyCycles);
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteStartArray("ata_virtio_exit_ratios");
        foreach (var (configuration, ratio) in ExitRatios(rows))
        {
            json.WriteStartObject();
            json.WriteString("technique", TechniqueName(configuration));
            json.WriteNumber("ratio", ratio);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static string Name(string pascal) =>
        string.Concat(pascal.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLower(c, CultureInfo.InvariantCulture) : char.ToLower(c, CultureInfo.InvariantCulture).ToString()));
}
