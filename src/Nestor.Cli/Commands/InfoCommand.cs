using System.CommandLine;
using System.Text.Json;
using Nestor.Hypervisor.Capabilities;
using Nestor.Kvm;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor info</c>: what this host's KVM is, what it can run (found by probe guests), and which engine
/// can run which guests.</summary>
internal static class InfoCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print the report as JSON" };
        var device = new Option<string>("--kvm-device") { Description = "KVM device to probe", DefaultValueFactory = _ => KvmSystem.DefaultDevicePath };
        var command = new Command("info", "Report the host's KVM, its capabilities, what probe guests show it can run, and which engines can run which guests")
        {
            json, device,
        };
        command.SetAction(parse =>
        {
            var host = HostCapabilities.Probe(parse.GetValue(device)!);
            if (parse.GetValue(json))
            {
                WriteJson(host);
            }
            else
            {
                WriteText(host);
            }
            // A report, not a run: a host without KVM still runs every guest on the sim engine (the default), so
            // the missing KVM is said, not an error.
            return 0;
        });
        return command;
    }

    /// <summary>Which guests the KVM engine can run on this host, from the probes.</summary>
    public static IEnumerable<(string Guest, bool Runs, string Why)> EngineVerdicts(HostCapabilities host)
    {
        bool baseline = host.Unavailable is null && host.Probes.FirstOrDefault(p => p.Feature is null)?.Works == true;
        bool exceptions = baseline && host.Supports(GuestFeature.ExceptionDelivery);
        bool user = exceptions && host.Supports(GuestFeature.UserMode) && host.Supports(GuestFeature.SystemCall);
        string no = host.Unavailable is not null ? "KVM is not available" : "see the failed probes above";
        yield return ("ring-0 code with port I/O (--flat code, the built-in guest)", baseline, baseline ? "" : no);
        yield return ("kernels that take exceptions or interrupts", exceptions, exceptions ? "" : no);
        yield return ("kernels with user processes (NestorOS)", user, user ? "" : no);
    }

    private static void WriteText(HostCapabilities host)
    {
        var o = Console.Out;
        o.WriteLine($"KVM device: {host.DevicePath}");
        if (host.Unavailable is { } e)
        {
            o.WriteLine($"  not available: {e.Message}");
            if (e.Advice is not null)
            {
                o.WriteLine($"  what to do: {e.Advice}");
            }
        }
        else
        {
            o.WriteLine($"  API version {host.ApiVersion}");
            o.WriteLine("  capabilities (KVM_CHECK_EXTENSION):");
            foreach (var (capability, value) in host.Capabilities)
            {
                o.WriteLine($"    {capability,-24} {(value == 0 ? "no" : value == 1 ? "yes" : $"yes ({value})")}");
            }
            o.WriteLine();
            o.WriteLine("What this host's KVM can run (each line is a probe guest run just now):");
            foreach (var p in host.Probes)
            {
                o.WriteLine($"  {(p.Works ? "yes" : "NO "),-4} {p.Name,-20} {p.Description}{(p.Works ? "" : $": {p.Detail}")}");
            }
        }
        o.WriteLine();
        o.WriteLine("Engines:");
        foreach (var (guest, runs, why) in EngineVerdicts(host))
        {
            o.WriteLine($"  kvm  {(runs ? "runs" : "cannot run"),-11} {guest}{(runs ? "" : $" ({why})")}");
        }
        o.WriteLine("  sim  runs        every guest: Nestor's own x86-64 machine, the default engine, needs no KVM");
        if (host.Unavailable is not null)
        {
            o.WriteLine();
            o.WriteLine("KVM is unavailable on this host: --engine kvm cannot run here; --engine sim (the default) runs everything.");
        }
        if (host.Unavailable is null && host.Probes.Any(p => !p.Works))
        {
            o.WriteLine();
            o.WriteLine("This host's KVM is likely nested (KVM inside a VM): its failures above are the host's, not the guests'.");
            o.WriteLine("'nestor run --engine kvm' refuses a guest whose code needs a failed feature; --force runs it anyway.");
        }
    }

    private static void WriteJson(HostCapabilities host)
    {
        using var stream = Console.OpenStandardOutput();
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("kvm_device", host.DevicePath);
        json.WriteBoolean("kvm_available", host.Unavailable is null);
        if (host.Unavailable is { } e)
        {
            json.WriteString("error", e.Message);
            json.WriteString("advice", e.Advice);
        }
        else
        {
            json.WriteNumber("api_version", host.ApiVersion);
            json.WriteStartObject("capabilities");
            foreach (var (capability, value) in host.Capabilities)
            {
                json.WriteNumber(capability.ToString(), value);
            }
            json.WriteEndObject();
            json.WriteStartArray("probes");
            foreach (var p in host.Probes)
            {
                json.WriteStartObject();
                json.WriteString("name", p.Name);
                json.WriteString("description", p.Description);
                json.WriteBoolean("works", p.Works);
                json.WriteString("detail", p.Detail);
                json.WriteEndObject();
            }
            json.WriteEndArray();
        }
        json.WriteBoolean("sim_engine_available", true);
        json.WriteStartArray("kvm_engine");
        foreach (var (guest, runs, why) in EngineVerdicts(host))
        {
            json.WriteStartObject();
            json.WriteString("guests", guest);
            json.WriteBoolean("runs", runs);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
        json.Flush();
        stream.WriteByte((byte)'\n');
    }
}
