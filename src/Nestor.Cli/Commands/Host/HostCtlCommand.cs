using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting.ControlApi;

namespace Nestor.Cli.Commands.Host;

/// <summary><c>nestor host ctl SOCKET ACTION [VM]</c>: the control API's actions from the command line, through the
/// socket a running <c>nestor host run --api-socket SOCKET</c> serves (docs/host.md, "The control API").</summary>
internal static class HostCtlCommand
{
    private static readonly string[] Actions = ["list", "get", "pause", "resume", "stop", "cpu", "host", "snapshot", "balloon"];

    public static Command Create()
    {
        var socket = new Argument<string>("SOCKET") { Description = "The control API socket (nestor host run --api-socket)" };
        var action = new Argument<string>("ACTION") { Description = "list | get VM | pause VM | resume VM | stop VM | cpu VM | host | snapshot VM FILE | balloon VM [MiB]" };
        action.AcceptOnlyFromAmong(Actions);
        var vm = new Argument<string?>("VM") { Description = "The VM's name", Arity = ArgumentArity.ZeroOrOne };
        // One optional third word for the two actions that take one: two optional positional arguments would both
        // claim it.
        var third = new Argument<string?>("FILE|MiB") { Description = "snapshot: the snapshot file to write; balloon: the balloon's target in MiB (what the guest gives up), without it show the balloon", Arity = ArgumentArity.ZeroOrOne };
        var shares = new Option<int?>("--shares") { Description = "cpu: the VM's CPU shares (its weight under the credit scheduler)" };
        var reservation = new Option<double?>("--reservation") { Description = "cpu: percent of one host CPU guaranteed to it" };
        var limit = new Option<string?>("--limit") { Description = "cpu: the most percent of one host CPU it may have, or 'none'" };
        var json = new Option<bool>("--json") { Description = "Print the API's JSON instead of a table" };
        var (_, memFile, stayPaused) = SnapshotCommand.HostCtlArguments();
        var command = new Command("ctl", "Act on a running host of VMs through its control API: list, get, pause, resume, stop, change CPU controls, set a balloon, snapshot a VM, show the host")
        {
            socket, action, vm, third, shares, reservation, limit, json, memFile, stayPaused,
        };
        command.SetAction(parse => HostApiCli.Guard(() =>
        {
            string verb = parse.GetValue(action)!;
            string? name = parse.GetValue(vm);
            bool needsVm = verb is not ("list" or "host");
            if (needsVm && name is null)
            {
                throw new BadInputException($"'ctl {verb}' needs the VM's name", $"Run nestor host ctl SOCKET {verb} VM; 'nestor host ctl SOCKET list' names them.");
            }
            if (!needsVm && name is not null)
            {
                throw new BadInputException($"'ctl {verb}' takes no VM name (got '{name}')", $"Run nestor host ctl SOCKET {verb}.");
            }
            var (sharesValue, reservationValue, limitText) = (parse.GetValue(shares), parse.GetValue(reservation), parse.GetValue(limit));
            if (verb != "cpu" && (sharesValue is not null || reservationValue is not null || limitText is not null))
            {
                throw new BadInputException("--shares, --reservation and --limit belong to 'ctl cpu'", "Run nestor host ctl SOCKET cpu VM --shares N.");
            }
            if (verb == "snapshot")
            {
                return SnapshotCommand.SaveThroughApi(parse.GetValue(socket)!, name!, parse.GetValue(third), parse.GetValue(memFile), parse.GetValue(stayPaused), parse.GetValue(json));
            }
            string? mibText = parse.GetValue(third);
            long? target = null;
            if (mibText is not null)
            {
                if (verb != "balloon")
                {
                    throw new BadInputException($"'ctl {verb}' takes nothing after the VM's name (got '{mibText}')", "Only 'ctl balloon VM MiB' and 'ctl snapshot VM FILE' do.");
                }
                string digits = mibText.EndsWith("MiB", StringComparison.OrdinalIgnoreCase) ? mibText[..^3] : mibText.TrimEnd('M', 'm');
                if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long parsed))
                {
                    throw new BadInputException($"balloon size '{mibText}' is not a whole number of MiB", "Give the target in MiB: nestor host ctl SOCKET balloon VM 16");
                }
                target = parsed;
            }
            using var client = new ControlApiClient(parse.GetValue(socket)!);
            if (verb == "balloon")
            {
                return Balloon(client, name!, target, parse.GetValue(json));
            }
            return Execute(client, verb, name, sharesValue, reservationValue, limitText, parse.GetValue(json));
        }));
        return command;
    }

    private static int Execute(ControlApiClient client, string verb, string? name, int? shares, double? reservation, string? limitText, bool json)
    {
        switch (verb)
        {
            case "list":
                var vms = client.List();
                Console.Write(json ? Json(new VmListDocument(vms), ControlApiJson.Default.VmListDocument) : ListTable(vms));
                return 0;
            case "host":
                var counters = client.HostCounters();
                Console.Write(json ? Json(new CountersDocument(counters), ControlApiJson.Default.CountersDocument) : CounterTable(counters));
                return 0;
            case "get":
                var document = client.Get(name!);
                Console.Write(json ? Json(document, ControlApiJson.Default.VmDocument) : Details(document));
                return 0;
            case "pause":
                client.Pause(name!);
                break;
            case "resume":
                client.Resume(name!);
                break;
            case "stop":
                client.Stop(name!);
                break;
            case "cpu":
                SetCpu(client, name!, shares, reservation, limitText);
                break;
        }
        // An action: say what the VM is now, as the host sees it after the action. Stopping the last VM ends the
        // host, and its socket with it: the action was done, there is only no one left to ask.
        VmDocument after;
        try
        {
            after = client.Get(name!);
        }
        catch (BadInputException) when (verb == "stop")
        {
            Console.Write(json ? "{}\n" : $"{name}: stopped; the host has ended\n");
            return 0;
        }
        Console.Write(json ? Json(after, ControlApiJson.Default.VmDocument)
            : $"{after.Name}: {after.State}, cpu shares {after.Cpu.Shares}, reservation {HostApiCli.Percent(after.Cpu.Reservation)}, limit {HostApiCli.Percent(after.Cpu.Limit)}\n");
        return 0;
    }

    private static int Balloon(ControlApiClient client, string name, long? targetMib, bool json)
    {
        if (targetMib is { } target)
        {
            client.SetBalloon(name, target);
        }
        var b = client.Balloon(name);
        if (json)
        {
            Console.Write(Json(b, ControlApiJson.Default.BalloonDocument));
            return 0;
        }
        string set = targetMib is null ? "" : $"target set to {targetMib} MiB (applied at the host's next round); ";
        Console.Write($"{name}: balloon {set}target {b.TargetMib} MiB ({b.TargetPages} pages){(b.SetByOperator ? ", an operator's" : "")}, actual {b.ActualPages} pages, " +
            $"{b.InflatedPages} in the balloon now; {b.PagesInflated} inflated and {b.PagesDeflated} deflated in all, {HostApiCli.Bytes(b.ReturnedBytes)} returned; " +
            $"the host lets it keep {HostApiCli.Bytes(b.AllocationTargetBytes)}, it holds {HostApiCli.Bytes(b.HeldBytes)}\n");
        if (b.Statistics.Count > 0)
        {
            Console.Write(HostApiCli.Table(["STATISTIC", "VALUE"], b.Statistics.Select(st => (IReadOnlyList<string>)[st.Name, st.Value.ToString(CultureInfo.InvariantCulture)])));
        }
        return 0;
    }

    private static void SetCpu(ControlApiClient client, string name, int? shares, double? reservation, string? limitText)
    {
        double? limit = null;
        bool removeLimit = false;
        if (limitText is not null)
        {
            if (limitText.Equals("none", StringComparison.OrdinalIgnoreCase))
            {
                removeLimit = true;
            }
            else if (double.TryParse(limitText.TrimEnd('%'), NumberStyles.Float, CultureInfo.InvariantCulture, out double parsed))
            {
                limit = parsed;
            }
            else
            {
                throw new BadInputException($"--limit '{limitText}' is not a percentage", "Give a percent of one host CPU (--limit 40) or --limit none.");
            }
        }
        if (shares is null && reservation is null && limitText is null)
        {
            throw new BadInputException("'ctl cpu' needs at least one of --shares, --reservation, --limit", "Run nestor host ctl SOCKET cpu VM --shares 2000 --limit 40.");
        }
        // Only what was given changes (PATCH): the other controls keep their values.
        client.ChangeCpu(name, shares, reservation, limit, removeLimit);
    }

    private static string Json<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type) =>
        JsonSerializer.Serialize(value, type) + "\n";

    private static string ListTable(IReadOnlyList<VmDocument> vms) => HostApiCli.Table(
        ["NAME", "STATE", "TECHNIQUE", "VCPUS", "SHARES", "RESERVATION", "LIMIT", "MEMORY", "OUTCOME"],
        vms.Select(v => (IReadOnlyList<string>)
        [
            v.Name, v.State, v.Technique, v.VcpuCount.ToString(CultureInfo.InvariantCulture),
            v.Cpu.Shares?.ToString(CultureInfo.InvariantCulture) ?? "-", HostApiCli.Percent(v.Cpu.Reservation), HostApiCli.Percent(v.Cpu.Limit),
            $"{HostApiCli.Bytes(v.Memory.MinBytes)}..{HostApiCli.Bytes(v.Memory.MaxBytes)}", v.Outcome ?? "-",
        ]));

    private static string CounterTable(IReadOnlyList<CounterDocument> counters) => HostApiCli.Table(
        ["COUNTER", "VALUE", "UNIT"],
        counters.Select(c => (IReadOnlyList<string>)[c.Name, c.Value.ToString(CultureInfo.InvariantCulture), c.Unit]));

    private static string Details(VmDocument vm) =>
        $"name:        {vm.Name}\n" +
        $"state:       {vm.State}\n" +
        $"technique:   {vm.Technique}\n" +
        $"vcpus:       {vm.VcpuCount}\n" +
        $"cpu:         shares {vm.Cpu.Shares}, reservation {HostApiCli.Percent(vm.Cpu.Reservation)}, limit {HostApiCli.Percent(vm.Cpu.Limit)}\n" +
        $"memory:      min {HostApiCli.Bytes(vm.Memory.MinBytes)}, max {HostApiCli.Bytes(vm.Memory.MaxBytes)}, shares {vm.Memory.Shares}\n" +
        $"outcome:     {vm.Outcome ?? "-"}\n\n" +
        CounterTable(vm.Counters);
}
