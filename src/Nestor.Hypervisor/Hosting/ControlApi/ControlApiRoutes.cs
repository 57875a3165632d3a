using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary>An answer to one request: its status, its JSON body (null for 204) and, for a 405, the methods the path
/// allows.</summary>
internal sealed record ControlApiResponse(int Status, byte[]? Body, string? Allow = null);

/// <summary>The control API's routes over one <see cref="IHostControl"/>: Firecracker's REST shape for a host of many
/// VMs. A route is a path pattern (literal segments and <c>{name}</c>) with a handler per method, so that later routes
/// (the balloon target, snapshots, migration) are rows added to its table. A path no route matches is 404,
/// a method the matching route lacks is 405 with <c>Allow</c>, an unknown VM 404, a value out of range 400, an
/// action the VM's state forbids 409; every error body is <c>{"fault_message": ...}</c>.</summary>
internal sealed class ControlApiRoutes
{
    private delegate ControlApiResponse Handler(IReadOnlyList<string> arguments, byte[] body);

    private sealed record Route(string[] Pattern, IReadOnlyDictionary<string, Handler> Methods);

    private readonly IHostControl host;
    private readonly IReadOnlyList<Route> routes;

    public ControlApiRoutes(IHostControl host)
    {
        this.host = host;
        routes =
        [
            new([], new Dictionary<string, Handler> { ["GET"] = (_, _) => Ok(InstanceInfo(), ControlApiJson.Default.InstanceInfoDocument) }),
            new(["host"], new Dictionary<string, Handler> { ["GET"] = (_, _) => Ok(Counters(host.HostCounters()), ControlApiJson.Default.CountersDocument) }),
            new(["vms"], new Dictionary<string, Handler> { ["GET"] = (_, _) => Ok(new VmListDocument([.. host.List().Select(Document)]), ControlApiJson.Default.VmListDocument) }),
            new(["vms", "{name}"], new Dictionary<string, Handler>
            {
                ["GET"] = (a, _) => Ok(Document(Find(a[0])), ControlApiJson.Default.VmDocument),
                ["PATCH"] = (a, body) => ChangeState(Find(a[0]).Name, Parse(body, ControlApiJson.Default.VmStateDocument)),
            }),
            new(["vms", "{name}", "cpu"], new Dictionary<string, Handler>
            {
                ["GET"] = (a, _) => Ok(Document(Find(a[0]).Cpu), ControlApiJson.Default.CpuDocument),
                ["PUT"] = (a, body) => SetCpu(Find(a[0]), body, replace: true),
                ["PATCH"] = (a, body) => SetCpu(Find(a[0]), body, replace: false),
            }),
            new(["vms", "{name}", "actions"], new Dictionary<string, Handler> { ["PUT"] = (a, body) => Act(Find(a[0]).Name, Parse(body, ControlApiJson.Default.ActionDocument)) }),
            new(["vms", "{name}", "snapshot"], new Dictionary<string, Handler> { ["PUT"] = (a, body) => Ok(SnapshotRoute.Put(host, Find(a[0]).Name, Parse(body, ControlApiSnapshotJson.Default.SnapshotCreateDocument)), ControlApiSnapshotJson.Default.SnapshotDocument) }),
            new(["vms", "{name}", "counters"], new Dictionary<string, Handler> { ["GET"] = (a, _) => Ok(Counters(Find(a[0]).Counters), ControlApiJson.Default.CountersDocument) }),
            new(["vms", "{name}", "migration"], new Dictionary<string, Handler>
            {
                ["GET"] = (a, _) => MigrationRoutes.Get(host, Find(a[0]).Name),
                ["PUT"] = (a, body) => MigrationRoutes.Start(host, Find(a[0]).Name, body),
            }),
            new(["vms", "{name}", "balloon"], new Dictionary<string, Handler>
            {
                ["GET"] = (a, _) => Ok(Document(host.Balloon(Find(a[0]).Name)), ControlApiJson.Default.BalloonDocument),
                ["PUT"] = (a, body) => SetBalloon(Find(a[0]).Name, Parse(body, ControlApiJson.Default.BalloonTargetDocument)),
            }),
        ];
    }

    /// <summary>Answers one request; never throws for anything a client sent or the host refused.</summary>
    public ControlApiResponse Handle(string method, string target, byte[] body)
    {
        if (target.Contains('?') || target.Contains('#'))
        {
            return Fault(400, "the control API takes no query string: give the values in a JSON body");
        }
        // Strict: "/vms/" and "/vms//cpu" are no route's paths (an empty segment is not a VM's name).
        var segments = target == "/" ? [] : target[1..].Split('/');
        string[] decoded;
        try
        {
            decoded = [.. segments.Select(Uri.UnescapeDataString)];
        }
        catch (UriFormatException)
        {
            return Fault(400, $"the path {target} is not well formed");
        }
        foreach (var route in routes)
        {
            if (Match(route.Pattern, decoded) is not { } arguments)
            {
                continue;
            }
            if (!route.Methods.TryGetValue(method, out var handler))
            {
                return Fault(405, $"{method} is not allowed on {target}: it allows {string.Join(", ", route.Methods.Keys)}",
                    string.Join(", ", route.Methods.Keys));
            }
            try
            {
                return handler(arguments, body);
            }
            catch (NotFoundException e)
            {
                return Fault(404, e.Message);
            }
            catch (JsonException e)
            {
                return Fault(400, $"the body is not the JSON this route takes: {e.Message}");
            }
            catch (BadInputException e)
            {
                return Fault(400, e.Advice is null ? e.Message : $"{e.Message} {e.Advice}");
            }
            catch (InvalidOperationException e)
            {
                return Fault(409, e.Message);
            }
        }
        return Fault(404, $"there is no route {target}: the routes are /, /host, /vms, /vms/{{name}}, /vms/{{name}}/cpu, /vms/{{name}}/actions, /vms/{{name}}/snapshot, /vms/{{name}}/counters, /vms/{{name}}/balloon, /vms/{{name}}/migration");
    }

    /// <summary>A fault document's bytes.</summary>
    public static ControlApiResponse Fault(int status, string message, string? allow = null) =>
        new(status, JsonSerializer.SerializeToUtf8Bytes(new FaultDocument(message), ControlApiJson.Default.FaultDocument), allow);

    private static string[]? Match(string[] pattern, string[] segments)
    {
        if (pattern.Length != segments.Length)
        {
            return null;
        }
        var arguments = new List<string>();
        for (int i = 0; i < pattern.Length; i++)
        {
            if (pattern[i].StartsWith('{'))
            {
                arguments.Add(segments[i]);
            }
            else if (pattern[i] != segments[i])
            {
                return null;
            }
        }
        return [.. arguments];
    }

    private sealed class NotFoundException(string message) : Exception(message);

    private HostedVmInfo Find(string name) =>
        host.List().FirstOrDefault(vm => vm.Name == name)
        ?? throw new NotFoundException($"there is no VM named '{name}' on this host: GET /vms lists them");

    private InstanceInfoDocument InstanceInfo() =>
        new("nestor", "host", "Running", typeof(ControlApiRoutes).Assembly.GetName().Version?.ToString(3) ?? "0.0.0", host.List().Count);

    private static ControlApiResponse Ok<T>(T value, JsonTypeInfo<T> type) => new(200, JsonSerializer.SerializeToUtf8Bytes(value, type));

    private static ControlApiResponse NoContent() => new(204, null);

    private static T Parse<T>(byte[] body, JsonTypeInfo<T> type) where T : class =>
        body.Length == 0
            ? throw new BadInputException("the request needs a JSON body")
            : JsonSerializer.Deserialize(body, type) ?? throw new BadInputException("the body is null: it must be a JSON object");

    private ControlApiResponse ChangeState(string name, VmStateDocument document)
    {
        switch (document.State)
        {
            case "Paused":
                host.Pause(name);
                return NoContent();
            case "Resumed":
                host.Resume(name);
                return NoContent();
            default:
                throw new BadInputException($"state '{document.State}' is not one the API sets: give \"Paused\" or \"Resumed\"");
        }
    }

    private ControlApiResponse Act(string name, ActionDocument document)
    {
        if (document.ActionType != "Stop")
        {
            throw new BadInputException($"action_type '{document.ActionType}' is not an action of this API: give \"Stop\"");
        }
        host.Stop(name);
        return NoContent();
    }

    /// <summary>PUT replaces the controls (shares required; no reservation and no limit unless given); PATCH changes
    /// the fields present, where an explicit <c>"limit": null</c> removes the limit.</summary>
    private ControlApiResponse SetCpu(HostedVmInfo vm, byte[] body, bool replace)
    {
        var document = Parse(body, ControlApiJson.Default.CpuDocument);
        CpuControls controls;
        if (replace)
        {
            controls = new(document.Shares ?? throw new BadInputException("shares is missing: a PUT gives the shares (PATCH changes single fields)"),
                document.Reservation ?? 0, document.Limit);
        }
        else
        {
            bool limitGiven = false;
            using (var parsed = JsonDocument.Parse(body))
            {
                limitGiven = parsed.RootElement.TryGetProperty("limit", out _);
            }
            controls = new(document.Shares ?? vm.Cpu.Shares, document.Reservation ?? vm.Cpu.ReservationPercent,
                limitGiven ? document.Limit : vm.Cpu.LimitPercent);
        }
        host.SetCpu(vm.Name, controls);
        return NoContent();
    }

    private ControlApiResponse SetBalloon(string name, BalloonTargetDocument document)
    {
        long mib = document.TargetMib ?? throw new BadInputException("target_mib is missing: give {\"target_mib\": N}, the MiB the guest gives up");
        if (mib < 0 || mib > 1L << 24)
        {
            throw new BadInputException($"target_mib {mib} is not a balloon size: give 0 up to the VM's memory in MiB");
        }
        host.SetBalloon(name, (ulong)mib << 20);
        return NoContent();
    }

    private static BalloonDocument Document(BalloonInfo b) =>
        new(b.TargetBytes >> 20, b.TargetPages, b.ActualPages, b.InflatedPages, b.PagesInflated, b.PagesDeflated, b.BytesReturned, b.RefusedPfns,
            b.SetByOperator, b.AllocationTargetBytes, b.HeldBytes, [.. b.Statistics.Select(s => new BalloonStatisticDocument(s.Key, s.Value))]);

    private static CountersDocument Counters(IReadOnlyList<Engines.EngineCounter> counters) =>
        new([.. counters.Select(c => new CounterDocument(c.Name, c.Value, c.Unit))]);

    private static CpuDocument Document(CpuControls cpu) => new(cpu.Shares, cpu.ReservationPercent, cpu.LimitPercent);

    /// <summary>The document of one VM, as GET /vms/{name} answers it.</summary>
    public static VmDocument Document(HostedVmInfo vm) =>
        new(vm.Name, vm.State.ToString(), vm.Technique, vm.VcpuCount, Document(vm.Cpu),
            new MemoryDocument(vm.Memory.MinBytes, vm.Memory.MaxBytes, vm.Memory.Shares), vm.Outcome,
            [.. vm.Counters.Select(c => new CounterDocument(c.Name, c.Value, c.Unit))],
            [.. vm.VcpuCounters.Select((counters, i) => new VcpuDocument(i, [.. counters.Select(c => new CounterDocument(c.Name, c.Value, c.Unit))]))]);
}
