using System.CommandLine;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting.ControlApi;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor migrate --api SOCKET VM tcp:HOST:PORT</c>: live-migrates VM of the host serving the control API
/// on SOCKET (<c>nestor host run --api-socket</c>) to the host listening there (<c>nestor host run --incoming</c>),
/// by pre-copy (docs/migration.md), and prints each round, the downtime and the outcome. Exit status 0 when the
/// destination runs the VM; 1 when the migration failed (the VM runs on at the source, as the message says).</summary>
internal static class MigrateCommand
{
    public static Command Create()
    {
        var vm = new Argument<string>("VM") { Description = "The VM's name on the source host" };
        var destination = new Argument<string>("DESTINATION") { Description = "tcp:HOST:PORT where nestor host run --incoming listens" };
        var api = new Option<string?>("--api") { Description = "The source host's control API socket (nestor host run --api-socket)" };
        var bandwidth = new Option<string?>("--max-bandwidth") { Description = "Bytes a second at most, e.g. 128M (QEMU's max-bandwidth; default 128M)" };
        var downtime = new Option<double?>("--downtime-limit") { Description = "Milliseconds the VM may be stopped (QEMU's downtime-limit; default 300)" };
        var noConverge = new Option<bool>("--no-auto-converge") { Description = "Do not throttle the vCPU when rounds do not shrink" };
        var rounds = new Option<int?>("--max-rounds") { Description = "Pre-copy rounds at most before the stop-and-copy (default 30)" };
        var mode = new Option<string>("--mode") { Description = "precopy (the default), postcopy (CPU first, pages on demand: either side failing then loses the VM), or hybrid (one pre-copy round, then post-copy)", DefaultValueFactory = _ => "precopy" };
        mode.AcceptOnlyFromAmong("precopy", "postcopy", "hybrid");
        var balloonFirst = new Option<bool>("--balloon-first") { Description = "Inflate the VM's balloon to the guest's free memory first, so that those pages are neither sent nor demanded" };
        var window = new Option<int?>("--prepage-window") { Description = "Post-copy: pages on each side of a demanded page sent right after it (default 8)" };
        var streamVersion = new Option<int?>("--stream-version") { Description = "Declare this stream version (to test a destination's refusal)", Hidden = true };
        var json = new Option<bool>("--json") { Description = "Print the final status as the API's JSON" };
        var command = new Command("migrate", "Live-migrate a VM of a running host to another host over TCP (pre-copy, post-copy or hybrid)")
        {
            vm, destination, api, bandwidth, downtime, noConverge, rounds, mode, window, balloonFirst, streamVersion, json,
        };
        command.SetAction(parse =>
        {
            try
            {
                string socket = parse.GetValue(api) ?? throw new BadInputException("nestor migrate needs the source host's control API socket",
                    "Give --api SOCKET, the path the source's nestor host run --api-socket serves");
                string name = parse.GetValue(vm)!;
                var request = new MigrationRequestDocument(parse.GetValue(destination),
                    parse.GetValue(bandwidth) is { } b ? (long)Hypervisor.Configuration.Size.Parse(b, "--max-bandwidth") : null,
                    parse.GetValue(downtime), parse.GetValue(noConverge) ? false : null, parse.GetValue(rounds), parse.GetValue(mode),
                    parse.GetValue(streamVersion), parse.GetValue(window), parse.GetValue(balloonFirst) ? true : null);
                if (parse.GetValue(mode) is "postcopy" or "hybrid" && !parse.GetValue(json))
                {
                    Console.Error.WriteLine("nestor: post-copy: once the VM resumes on the destination, its memory is split between the two hosts until the last page arrives; " +
                                            "if either side fails (killed, connection cut) in that time, the VM is lost");
                }
                using var client = new ControlApiClient(socket);
                client.StartMigration(name, request);
                return Follow(client, name, parse.GetValue(json));
            }
            catch (Exception e)
            {
                return CommandErrors.Report(e);
            }
        });
        return command;
    }

    // Polls the status, printing each round as it ends, until the migration completed or failed.
    private static int Follow(ControlApiClient client, string name, bool json)
    {
        var c = CultureInfo.InvariantCulture;
        int printed = 0;
        while (true)
        {
            var status = client.Migration(name);
            for (; printed < status.Rounds.Count && !json; printed++)
            {
                var r = status.Rounds[printed];
                Console.WriteLine(string.Create(c, $"round {r.Round,3}: {r.Pages,8:N0} pages ({r.FilledPages:N0} filled), {r.Bytes / 1048576.0,8:0.00} MiB in {r.Milliseconds,8:0.0} ms, throttle {r.ThrottlePercent}%"));
            }
            if (status.Phase is "Completed" or "Failed")
            {
                if (json)
                {
                    Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(status, MigrationJson.Default.MigrationDocument));
                }
                else
                {
                    if (status.BalloonPages > 0)
                    {
                        Console.WriteLine(string.Create(c, $"balloon first: {status.BalloonPages:N0} pages ({status.BalloonPages * 4096 / 1048576.0:0.0} MiB) in the balloon, inflated in {status.BalloonMs:0} ms"));
                    }
                    if (status.PostCopy is { } p)
                    {
                        Console.WriteLine(string.Create(c, $"post-copy: {p.PagesAtSwitch:N0} pages after the switch-over in {p.PostCopyMs:0.0} ms: {p.Pushed:N0} pushed, {p.Demanded:N0} demanded, " +
                            $"{p.Prepaged:N0} pre-paged (window {p.PrepageWindow}); {p.DemandFaults:N0} demand faults waited {p.FaultWaitMs:0.0} ms (longest {p.LongestFaultWaitMs:0.0} ms)"));
                    }
                    Console.WriteLine(string.Create(c, $"total {status.TotalMs:0} ms, {status.PagesSent:N0} pages, {status.BytesSent / 1048576.0:0.00} MiB; " +
                        $"downtime {(status.DowntimeMs is { } d ? d.ToString("0.0", c) + " ms" : "-")} (expected {(status.ExpectedDowntimeMs is { } e ? e.ToString("0.0", c) + " ms" : "-")}); " +
                        $"stopped at {status.InstructionsAtStop:N0} instructions; dirty pages by {status.DirtyTracking} ({status.PagesLogged:N0} logged, {status.FinalPagesFound:N0} found in the stop-and-copy)"));
                }
                Console.Error.WriteLine($"nestor: {status.Message}");
                return status.Phase == "Completed" ? 0 : 1;
            }
            Thread.Sleep(100);
        }
    }
}
