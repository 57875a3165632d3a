using Nestor.Containers.Network;

namespace Nestor.Containers.Engine;

/// <summary>What <c>container create|run</c> was asked for (Docker's flags, parsed).</summary>
public sealed class CreateOptions
{
    public string Image { get; set; } = "";
    /// <summary>The words after the image: they replace the image's Cmd.</summary>
    public List<string> Command { get; set; } = [];
    public string? Name { get; set; }
    /// <summary><c>-e K=V</c> or <c>-e K</c> (the value from the caller's environment).</summary>
    public List<string> Env { get; set; } = [];
    public List<string> EnvFiles { get; set; } = [];
    public string? WorkingDir { get; set; }
    public string? User { get; set; }
    /// <summary><c>-p [IP:]HOST:CONTAINER[/PROTOCOL]</c>.</summary>
    public List<string> Ports { get; set; } = [];
    public List<string> Volumes { get; set; } = [];
    /// <summary><c>--tmpfs PATH[:size=BYTES]</c>: an empty tmpfs at PATH (Docker's flag; <c>RUN --mount=type=tmpfs</c>).</summary>
    public List<string> Tmpfs { get; set; } = [];
    /// <summary><c>--memory</c>: bytes with an optional b, k, m or g suffix.</summary>
    public string? Memory { get; set; }
    public double? Cpus { get; set; }
    public long? PidsLimit { get; set; }
    public string? Network { get; set; }
    public string? Hostname { get; set; }
    public List<string> CapAdd { get; set; } = [];
    public List<string> CapDrop { get; set; } = [];
    public bool Privileged { get; set; }
    public bool ReadOnly { get; set; }
    public string? Runtime { get; set; }
    /// <summary><c>--entrypoint</c>; the empty string clears the image's.</summary>
    public string? Entrypoint { get; set; }
    public bool Tty { get; set; }
    public bool Interactive { get; set; }
    public bool AutoRemove { get; set; }
    /// <summary>Set by a foreground <c>run -i</c>: the end of the caller's input closes the container's.</summary>
    public bool StdinOnce { get; set; }

    /// <summary>Docker's <c>--memory</c> syntax: a number with an optional unit b, k, m, g (powers of 1024).</summary>
    public static long ParseMemory(string text)
    {
        string value = text.Trim().ToLowerInvariant();
        long multiplier = 1;
        if (value.Length > 0 && char.IsLetter(value[^1]))
        {
            multiplier = value[^1] switch
            {
                'b' => 1,
                'k' => 1024,
                'm' => 1024 * 1024,
                'g' => 1024L * 1024 * 1024,
                _ => throw new ContainerEngineException($"bad --memory '{text}': give bytes with an optional unit b, k, m or g (e.g. 64m)"),
            };
            value = value[..^1];
        }
        if (!long.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long number) || number <= 0)
        {
            throw new ContainerEngineException($"bad --memory '{text}': give bytes with an optional unit b, k, m or g (e.g. 64m)");
        }
        long bytes = number * multiplier;
        // The kernel refuses a memory cgroup limit below a few pages, and Docker refuses below 6 MiB.
        return bytes >= 6 * 1024 * 1024 ? bytes
            : throw new ContainerEngineException($"bad --memory '{text}': the minimum memory limit is 6m");
    }

    /// <summary><c>-p [IP:]HOST:CONTAINER[/tcp|udp]</c>.</summary>
    public static PortMapping ParsePort(string text)
    {
        string protocol = "tcp";
        string spec = text;
        int slash = spec.IndexOf('/');
        if (slash >= 0)
        {
            protocol = spec[(slash + 1)..].ToLowerInvariant();
            spec = spec[..slash];
        }
        string[] parts = spec.Split(':');
        string address = parts.Length == 3 ? parts[0] : "0.0.0.0";
        if (parts.Length is < 2 or > 3 || protocol is not ("tcp" or "udp")
            || !int.TryParse(parts[^2], System.Globalization.CultureInfo.InvariantCulture, out int hostPort)
            || !int.TryParse(parts[^1], System.Globalization.CultureInfo.InvariantCulture, out int containerPort)
            || hostPort is < 1 or > 65535 || containerPort is < 1 or > 65535)
        {
            throw new ContainerEngineException($"bad port mapping '{text}': give -p HOSTPORT:CONTAINERPORT[/tcp|udp] (or IP:HOSTPORT:CONTAINERPORT)");
        }
        return new PortMapping(address, hostPort, containerPort, protocol);
    }
}

/// <summary>What <c>container exec</c> was asked for.</summary>
public sealed class ExecOptions
{
    public List<string> Command { get; set; } = [];
    public List<string> Env { get; set; } = [];
    public string? WorkingDir { get; set; }
    public string? User { get; set; }
    public bool Interactive { get; set; }
    public bool Tty { get; set; }
}
