using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Migration;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary><c>PUT /vms/{name}/migration</c>: start a live migration of the VM (QEMU's <c>migrate</c> with its
/// parameters, in Firecracker's snake_case): <c>destination</c> (<c>tcp:HOST:PORT</c>) is required; the others have
/// QEMU's defaults.</summary>
/// <param name="Destination">Where a <c>nestor host run --incoming</c> listens.</param>
/// <param name="MaxBandwidth">Bytes a second (QEMU's <c>max-bandwidth</c>, 128 MiB/s).</param>
/// <param name="DowntimeLimitMs">QEMU's <c>downtime-limit</c> (300 ms).</param>
/// <param name="AutoConverge">QEMU's <c>auto-converge</c> (on).</param>
/// <param name="MaxRounds">Pre-copy rounds at most (30).</param>
/// <param name="Mode"><c>precopy</c> (the default), <c>postcopy</c> or <c>hybrid</c> (one pre-copy round, then post-copy).</param>
/// <param name="StreamVersion">The stream version to declare: for refusal tests only.</param>
/// <param name="PrepageWindow">Post-copy's pre-paging window, pages on each side of a demanded one (8).</param>
/// <param name="BalloonFirst">Inflate the VM's balloon to the guest's free memory before sending (off).</param>
public sealed record MigrationRequestDocument(string? Destination, long? MaxBandwidth = null, double? DowntimeLimitMs = null, bool? AutoConverge = null,
    int? MaxRounds = null, string? Mode = null, int? StreamVersion = null, int? PrepageWindow = null, bool? BalloonFirst = null);

/// <summary>Post-copy's part of <c>GET /vms/{name}/migration</c> (<see cref="PostCopyStatus"/>).</summary>
public sealed record PostCopyDocument(long PagesAtSwitch, long Pushed, long Demanded, long Prepaged, long Requests, long DemandFaults,
    double FaultWaitMs, double LongestFaultWaitMs, double PostCopyMs, int PrepageWindow);

/// <summary>One round as <c>GET /vms/{name}/migration</c> shows it.</summary>
public sealed record MigrationRoundDocument(int Round, long Pages, long FilledPages, long Bytes, double Milliseconds, int ThrottlePercent);

/// <summary><c>GET /vms/{name}/migration</c>: the VM's migration under way or last.</summary>
public sealed record MigrationDocument(string Vm, string Destination, string Phase, string? Message, IReadOnlyList<MigrationRoundDocument> Rounds,
    double TotalMs, double? DowntimeMs, double? ExpectedDowntimeMs, long PagesSent, long BytesSent, int ThrottlePercent, long InstructionsAtStop,
    string DirtyTracking, long PagesLogged, long FinalPagesFound, string Mode = "precopy", PostCopyDocument? PostCopy = null, long BalloonPages = 0,
    double BalloonMs = 0);

/// <summary>The migration documents' serializers (source-generated, strict as the control API's).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow, NumberHandling = JsonNumberHandling.Strict,
    DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(MigrationRequestDocument))]
[JsonSerializable(typeof(MigrationDocument))]
public sealed partial class MigrationJson : JsonSerializerContext;

/// <summary>The handlers of the migration route (a row of <see cref="ControlApiRoutes"/>).</summary>
internal static class MigrationRoutes
{
    public static ControlApiResponse Start(IHostControl control, string name, byte[] body)
    {
        if (control is not VirtualMachineHost host)
        {
            return ControlApiRoutes.Fault(400, "this host cannot migrate its VMs");
        }
        if (body.Length == 0)
        {
            throw new BadInputException("the request needs a JSON body with the destination");
        }
        var request = JsonSerializer.Deserialize(body, MigrationJson.Default.MigrationRequestDocument)
            ?? throw new BadInputException("the body is null: it must be a JSON object");
        var settings = new MigrationSettings(request.Destination ?? throw new BadInputException("destination is missing: give \"destination\": \"tcp:HOST:PORT\""))
        {
            MaxBandwidth = request.MaxBandwidth ?? MigrationSettings.DefaultBandwidth,
            DowntimeLimit = request.DowntimeLimitMs is { } ms ? TimeSpan.FromMilliseconds(ms) : MigrationSettings.DefaultDowntime,
            AutoConverge = request.AutoConverge ?? true,
            MaxRounds = request.MaxRounds ?? 30,
            Mode = MigrationSettings.ParseMode(request.Mode),
            PrepageWindow = request.PrepageWindow ?? MigrationSettings.DefaultPrepageWindow,
            BalloonFirst = request.BalloonFirst ?? false,
            StreamVersion = request.StreamVersion is { } v ? checked((ushort)v) : null,
        };
        MigrationSource.Start(host, name, settings);
        return new ControlApiResponse(204, null);
    }

    public static ControlApiResponse Get(IHostControl control, string name)
    {
        var vm = (control as VirtualMachineHost)?.Vms.FirstOrDefault(v => v.Name == name);
        if (vm?.Migration is not { } migration)
        {
            return ControlApiRoutes.Fault(404, $"VM '{name}' has not been migrated: PUT /vms/{name}/migration starts a migration");
        }
        return new ControlApiResponse(200, JsonSerializer.SerializeToUtf8Bytes(Document(migration.Status), MigrationJson.Default.MigrationDocument));
    }

    public static MigrationDocument Document(MigrationStatus s) =>
        new(s.Vm, s.Destination, s.Phase.ToString(), s.Message,
            [.. s.Rounds.Select(r => new MigrationRoundDocument(r.Number, r.Pages, r.FilledPages, r.Bytes, r.Milliseconds, r.ThrottlePercent))],
            s.TotalMilliseconds, s.DowntimeMilliseconds, s.ExpectedDowntimeMilliseconds, s.PagesSent, s.BytesSent, s.ThrottlePercent, s.InstructionsAtStop,
            s.DirtyTracking, s.PagesLogged, s.FinalPagesFound, MigrationSettings.NameOf(s.Mode),
            s.PostCopy is { } p ? new PostCopyDocument(p.PagesAtSwitch, p.Pushed, p.Demanded, p.Prepaged, p.Requests, p.DemandFaults, p.FaultWaitMilliseconds,
                p.LongestFaultWaitMilliseconds, p.Milliseconds, p.Window) : null, s.BalloonPages, s.BalloonMilliseconds);
}
