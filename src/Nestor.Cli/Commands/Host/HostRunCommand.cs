using System.CommandLine;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;

namespace Nestor.Cli.Commands.Host;

/// <summary><c>nestor host run [HOST.json] [--vm NAME=KERNEL,...]...</c>: powers on the VMs admission control admits,
/// schedules their vCPUs on the host's CPUs, prefixes each one's serial output with its name, and prints a combined
/// report when all have ended.</summary>
internal static class HostRunCommand
{
    public static Command Create()
    {
        var file = new Argument<string?>("HOST.json") { Description = "The host's configuration (docs/host.md)", Arity = ArgumentArity.ZeroOrOne };
        var vm = new Option<string[]>("--vm")
        {
            Description = "A VM: NAME=KERNEL[,cmdline=...][,memory=64M][,min=...][,technique=hw][,shares=N][,reservation=%][,limit=%][,run-limit-ms=N]; " +
                          "KERNEL is a file or builtin:nestoros, builtin:spin, builtin:ticker. May be repeated; added after the file's VMs",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var hostMemory = new Option<string?>("--host-memory") { Description = "Host memory for guests (default 1G, or the file's)" };
        var hostSwap = new Option<string?>("--host-swap") { Description = "Host swap: backs what VMs have above their min (default 0)" };
        var hostCpus = new Option<int?>("--host-cpus") { Description = "Host CPUs: vCPUs run on this many host threads at once (default 1)" };
        var scheduler = new Option<string?>("--scheduler") { Description = "share (ESX's proportional share, reservation, limit; the default) or credit (Xen's credit scheduler)" };
        var timeout = TypedOptions.Seconds("--timeout", "Stop every VM after this many seconds of wall time");
        var duration = new Option<double?>("--duration-ms") { Description = "Run the host for this many milliseconds of virtual time, then stop every VM still running" };
        var verbose = new Option<bool>("--verbose") { Description = "Show stack traces of internal errors" };
        var incoming = new Option<string?>("--incoming") { Description = "Wait for a VM migrated here (tcp:HOST:PORT, nestor migrate), receive it, then run it with the others" };
        var apiSocket = new Option<string?>("--api-socket") { Description = "Serve the control API on this Unix socket while the host runs (nestor host ctl, nestor host top; docs/host.md)" };
        var watch = new Option<bool>("--watch") { Description = "Redraw the report's table while the VMs run (plain key=value lines when stdout is not a terminal)" };
        var watchInterval = new Option<double>("--watch-interval") { Description = "Seconds between --watch views (default 1)", DefaultValueFactory = _ => 1.0 };
        var noSharing = new Option<bool>("--no-sharing") { Description = "No content-based page sharing (docs/overcommit.md)" };
        var noBalloon = new Option<bool>("--no-balloon") { Description = "No VM gets its balloon device" };
        var noHostSwap = new Option<bool>("--no-host-swap") { Description = "No host swapping" };
        var noReclaim = new Option<bool>("--no-reclaim") { Description = "No reclamation by free-memory states: no balloon targets from the host, no swapping, no blocking" };
        var sharingRate = new Option<int?>("--sharing-rate") { Description = "Pages the sharing scanner hashes per round (100 µs of virtual time) over all VMs (default 200)" };
        var sharingVmRate = new Option<int?>("--sharing-vm-rate") { Description = "At most this many pages of one VM per round" };
        var hostSwapDir = new Option<string?>("--host-swap-dir") { Description = "Directory of the VMs' host swap files (default: the temporary directory)" };
        var hostSwapPolicy = new Option<string?>("--host-swap-policy") { Description = "random (ESX's, the default) or clock victims" };
        var idleTax = new Option<double?>("--idle-tax") { Description = "Divide memory by ESX's idle memory tax with this rate τ (0 ≤ τ < 1, the paper's default 0.75) instead of plain proportional share (docs/overcommit.md)" };
        var restore = SnapshotCommand.HostRestoreOption();
        var command = new Command("run", "Power on many VMs on one host and run them until each has ended")
        {
            file, vm, hostMemory, hostSwap, hostCpus, scheduler, timeout, duration, verbose, apiSocket, watch, watchInterval, restore, incoming, idleTax,
            noSharing, noBalloon, noHostSwap, noReclaim, sharingRate, sharingVmRate, hostSwapDir, hostSwapPolicy,
        };
        command.SetAction(parse =>
        {
            try
            {
                string? path = parse.GetValue(file);
                var config = path is null ? new HostConfigFile() : HostConfiguration.ParseFile(ReadFile(path), path);
                config.Vms ??= [];
                foreach (string text in parse.GetValue(vm) ?? [])
                {
                    config.Vms.Add(HostConfiguration.ParseVmOption(text));
                }
                using var arriving = parse.GetValue(incoming) is { } from ? Hypervisor.Hosting.ControlApi.IncomingHostRun.Receive(from, Console.Error) : null;
                var spec = HostConfiguration.ToSpec(config, path ?? "--vm",
                    parse.GetValue(hostMemory) is { } m ? Size.Parse(m, "--host-memory") : null,
                    parse.GetValue(hostSwap) is { } s ? Size.Parse(s, "--host-swap") : null,
                    parse.GetValue(hostCpus), parse.GetValue(scheduler), new OvercommitSwitches
                    {
                        NoSharing = parse.GetValue(noSharing),
                        NoBalloon = parse.GetValue(noBalloon),
                        NoHostSwap = parse.GetValue(noHostSwap),
                        NoReclaim = parse.GetValue(noReclaim),
                        SharingRate = parse.GetValue(sharingRate),
                        SharingPerVmRate = parse.GetValue(sharingVmRate),
                        HostSwapDir = parse.GetValue(hostSwapDir),
                        HostSwapPolicy = parse.GetValue(hostSwapPolicy),
                    }, allowNoVms: arriving is not null);
                spec = arriving?.AddTo(spec) ?? spec;
                if (parse.GetValue(idleTax) is { } tau)
                {
                    if (!(tau >= 0 && tau < 1))
                    {
                        throw new BadInputException($"--idle-tax {tau.ToString(System.Globalization.CultureInfo.InvariantCulture)} is not a tax rate: τ must be at least 0 and below 1 (at τ = 1 an idle page would cost infinitely more than an active one)", "Give e.g. --idle-tax 0.75 (ESX's default), or 0 for plain proportional share");
                    }
                    spec = spec with { AllocationPolicy = new Hypervisor.Memory.Reclamation.IdleMemoryTax(tau) };
                }
                if (parse.GetValue(duration) is { } ms)
                {
                    if (!(ms > 0) || !double.IsFinite(ms))
                    {
                        throw new BadInputException($"--duration-ms {ms} is not a length of time", "Give a positive number of milliseconds");
                    }
                    spec = spec with { DurationMilliseconds = ms };
                }
                if (parse.GetValue(timeout) is { } seconds)
                {
                    spec = spec with { WallTimeout = TypedOptions.ToTimeSpan(seconds) };
                }
                double every = parse.GetValue(watchInterval);
                if (!(every >= 0.05 && every <= 3600))
                {
                    throw new BadInputException($"--watch-interval {every.ToString(System.Globalization.CultureInfo.InvariantCulture)} is out of range", "Give between 0.05 and 3600 seconds");
                }
                using var host = new VirtualMachineHost(spec, Console.Out) { Restores = SnapshotCommand.ParseHostRestores(parse.GetValue(restore), spec) };
                arriving?.Attach(host);
                using (parse.GetValue(apiSocket) is { } socketPath ? Hypervisor.Hosting.ControlApi.ControlApiServer.Start(socketPath, host) : null)
                using (parse.GetValue(watch) ? HostReportWatch.Start(host, Console.Out, TimeSpan.FromSeconds(every), terminal: !Console.IsOutputRedirected) : null)
                {
                    host.Run();
                    arriving?.AwaitPostCopy(); // post-copy pages still coming go into the VM's RAM before it is disposed
                }
                Console.Out.Flush();
                HostReport.Write(host, Console.Out);
                return HostReport.AllSucceeded(host) ? 0 : 1;
            }
            catch (Exception e)
            {
                return CommandErrors.Report(e, parse.GetValue(verbose));
            }
        });
        return command;
    }

    private static string ReadFile(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BadInputException($"cannot read the host file '{path}': {e.Message}", "Give the path of a readable HOST.json");
        }
    }
}
