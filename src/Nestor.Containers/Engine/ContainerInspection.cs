using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Nestor.Containers.Engine;

/// <summary><c>container inspect</c>'s output: a JSON array with one object per container in Docker's shape (Id,
/// Created, Path, Args, State, Image, Name, HostConfig, GraphDriver, Mounts, Config, NetworkSettings), and
/// <c>--format</c>'s <c>{{.Path.To.Value}}</c> lookups.</summary>
public static class ContainerInspection
{
    public static string ToDockerJson(ContainerEngine engine, IReadOnlyList<ContainerRecord> records)
    {
        var output = new MemoryStream();
        using (var json = new Utf8JsonWriter(output, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartArray();
            foreach (var record in records)
            {
                Write(json, engine, record);
            }
            json.WriteEndArray();
        }
        return Encoding.UTF8.GetString(output.ToArray());
    }

    /// <summary>RFC 3339 with nanoseconds (Go's time.RFC3339Nano, what Docker prints); Go's zero time for never.</summary>
    public static string Time(DateTimeOffset time) =>
        time == default ? "0001-01-01T00:00:00Z" : time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture);

    private static void Write(Utf8JsonWriter json, ContainerEngine engine, ContainerRecord record)
    {
        var config = record.Config;
        var host = record.HostConfig;
        var state = record.State;
        var command = config.Entrypoint.Concat(config.Cmd).ToList();
        json.WriteStartObject();
        json.WriteString("Id", record.Id);
        json.WriteString("Created", Time(record.Created));
        json.WriteString("Path", command.FirstOrDefault() ?? "");
        Strings(json, "Args", command.Skip(1));
        json.WriteStartObject("State");
        json.WriteString("Status", state.Status);
        json.WriteBoolean("Running", state.Running);
        json.WriteBoolean("Paused", state.Paused);
        json.WriteBoolean("Restarting", false);
        json.WriteBoolean("OOMKilled", false);
        json.WriteBoolean("Dead", false);
        json.WriteNumber("Pid", state.Running ? state.Pid : 0);
        json.WriteNumber("ExitCode", state.ExitCode);
        json.WriteString("Error", state.Error);
        json.WriteString("StartedAt", Time(state.StartedAt));
        json.WriteString("FinishedAt", Time(state.FinishedAt));
        json.WriteNumber("MonitorPid", state.Running ? state.MonitorPid : 0);
        json.WriteEndObject();
        json.WriteString("Image", record.ImageId);
        json.WriteString("ResolvConfPath", Path.Combine(engine.Paths.ContainerData(record.Id), "etc", "resolv.conf"));
        json.WriteString("HostnamePath", Path.Combine(engine.Paths.ContainerData(record.Id), "etc", "hostname"));
        json.WriteString("HostsPath", Path.Combine(engine.Paths.ContainerData(record.Id), "etc", "hosts"));
        json.WriteString("LogPath", engine.Paths.LogFile(record.Id));
        json.WriteString("Name", "/" + record.Name);
        json.WriteNumber("RestartCount", Math.Max(0, record.StartCount - 1));
        json.WriteString("Driver", "overlay");
        json.WriteString("Platform", "linux");
        json.WriteStartObject("HostConfig");
        Strings(json, "Binds", host.Binds);
        json.WriteString("NetworkMode", host.NetworkMode.ToString().ToLowerInvariant());
        PortMap(json, "PortBindings", record, bindings: true);
        json.WriteBoolean("AutoRemove", host.AutoRemove);
        Strings(json, "CapAdd", host.CapAdd);
        Strings(json, "CapDrop", host.CapDrop);
        json.WriteBoolean("Privileged", host.Privileged);
        json.WriteBoolean("ReadonlyRootfs", host.ReadonlyRootfs);
        json.WriteString("Runtime", host.Runtime);
        json.WriteNumber("Memory", host.Memory);
        json.WriteNumber("NanoCpus", host.NanoCpus);
        json.WriteNumber("PidsLimit", host.PidsLimit);
        json.WriteEndObject();
        json.WriteStartObject("GraphDriver");
        json.WriteStartObject("Data");
        json.WriteString("LowerDir", string.Join(':', Enumerable.Reverse(record.RootFileSystem.LowerDirectories)));
        json.WriteString("UpperDir", record.RootFileSystem.UpperDirectory);
        json.WriteString("WorkDir", record.RootFileSystem.WorkDirectory);
        json.WriteString("MergedDir", record.RootFileSystem.MergedDirectory);
        json.WriteEndObject();
        json.WriteString("Name", "overlay");
        json.WriteEndObject();
        json.WriteStartArray("Mounts");
        foreach (string bind in host.Binds)
        {
            string[] parts = bind.Split(':');
            bool readOnly = parts.Length == 3 && parts[2] == "ro";
            json.WriteStartObject();
            json.WriteString("Type", "bind");
            json.WriteString("Source", parts[0]);
            json.WriteString("Destination", parts[1]);
            json.WriteString("Mode", readOnly ? "ro" : "");
            json.WriteBoolean("RW", !readOnly);
            json.WriteString("Propagation", "rprivate");
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteStartObject("Config");
        json.WriteString("Hostname", config.Hostname);
        json.WriteString("User", config.User);
        json.WriteBoolean("Tty", config.Tty);
        json.WriteBoolean("OpenStdin", config.OpenStdin);
        json.WriteBoolean("StdinOnce", config.StdinOnce);
        Strings(json, "Env", config.Env);
        Strings(json, "Cmd", config.Cmd);
        json.WriteString("Image", config.Image);
        json.WriteString("WorkingDir", config.WorkingDir);
        Strings(json, "Entrypoint", config.Entrypoint);
        json.WriteStartObject("Labels");
        foreach (var (key, value) in config.Labels)
        {
            json.WriteString(key, value);
        }
        json.WriteEndObject();
        json.WriteString("StopSignal", config.StopSignal);
        json.WriteEndObject();
        json.WriteStartObject("NetworkSettings");
        json.WriteString("IPAddress", record.Network?.Address ?? "");
        json.WriteString("Gateway", record.Network?.Gateway ?? "");
        json.WriteString("HostInterface", record.Network?.HostInterface ?? "");
        PortMap(json, "Ports", record, bindings: false);
        json.WriteEndObject();
        json.WriteEndObject();
    }

    private static void PortMap(Utf8JsonWriter json, string name, ContainerRecord record, bool bindings)
    {
        json.WriteStartObject(name);
        foreach (var group in record.HostConfig.PortBindings.GroupBy(p => $"{p.ContainerPort}/{p.Protocol}"))
        {
            json.WriteStartArray(group.Key);
            foreach (var port in group)
            {
                json.WriteStartObject();
                json.WriteString("HostIp", bindings && port.HostAddress == "0.0.0.0" ? "" : port.HostAddress);
                json.WriteString("HostPort", port.HostPort.ToString(CultureInfo.InvariantCulture));
                json.WriteEndObject();
            }
            json.WriteEndArray();
        }
        json.WriteEndObject();
    }

    private static void Strings(Utf8JsonWriter json, string name, IEnumerable<string> values)
    {
        json.WriteStartArray(name);
        foreach (string value in values)
        {
            json.WriteStringValue(value);
        }
        json.WriteEndArray();
    }

    /// <summary>The value as one line of JSON, as Go's template <c>json</c> prints it.</summary>
    private static string Compact(JsonElement value)
    {
        var output = new MemoryStream();
        using (var json = new Utf8JsonWriter(output))
        {
            value.WriteTo(json);
        }
        return Encoding.UTF8.GetString(output.ToArray());
    }

    /// <summary>Replaces each <c>{{.A.B}}</c> (and <c>{{json .A}}</c>) of <paramref name="template"/> by that value of
    /// <paramref name="element"/>: the part of Go's templates that <c>docker inspect -f</c> is mostly used with.</summary>
    public static string Format(JsonElement element, string template)
    {
        var output = new StringBuilder();
        int position = 0;
        while (true)
        {
            int open = template.IndexOf("{{", position, StringComparison.Ordinal);
            if (open < 0)
            {
                output.Append(template, position, template.Length - position);
                return output.ToString();
            }
            int close = template.IndexOf("}}", open, StringComparison.Ordinal);
            if (close < 0)
            {
                throw new ContainerEngineException($"bad --format '{template}': a '{{{{' without its '}}}}'");
            }
            output.Append(template, position, open - position);
            string expression = template[(open + 2)..close].Trim();
            bool asJson = expression.StartsWith("json ", StringComparison.Ordinal);
            if (asJson)
            {
                expression = expression[5..].Trim();
            }
            var value = element;
            foreach (string part in expression.TrimStart('.').Split('.', StringSplitOptions.RemoveEmptyEntries))
            {
                if (value.ValueKind != JsonValueKind.Object || !value.TryGetProperty(part, out value))
                {
                    throw new ContainerEngineException($"bad --format '{template}': there is no {expression}");
                }
            }
            output.Append(asJson || value.ValueKind is JsonValueKind.Object or JsonValueKind.Array ? Compact(value)
                : value.ValueKind == JsonValueKind.String ? value.GetString() : value.GetRawText());
            position = close + 2;
        }
    }
}
