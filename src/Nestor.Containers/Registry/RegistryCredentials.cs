using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Nestor.Containers.Images;

namespace Nestor.Containers.Registry;

/// <summary>A user name and password (or token) for one registry.</summary>
public sealed record RegistryCredential(string UserName, string Password)
{
    /// <summary>The value of a Basic <c>Authorization</c> header (RFC 7617): base64 of <c>user:password</c>.</summary>
    public string BasicParameter => Convert.ToBase64String(Encoding.UTF8.GetBytes($"{UserName}:{Password}"));
}

/// <summary>Finds credentials the way Podman and Docker store them: containers-auth.json(5)
/// (<c>$REGISTRY_AUTH_FILE</c>, <c>$XDG_RUNTIME_DIR/containers/auth.json</c>, <c>~/.config/containers/auth.json</c>)
/// and then Docker's <c>~/.docker/config.json</c>; each maps a registry host to base64 of <c>user:password</c>.</summary>
public sealed class RegistryCredentialStore
{
    private readonly IReadOnlyList<string> files;

    /// <summary>A store that reads <paramref name="files"/> in order (the first that names the registry wins).</summary>
    public RegistryCredentialStore(IEnumerable<string> files) => this.files = [.. files];

    /// <summary>The files Podman and Docker read, for this process's environment.</summary>
    public static RegistryCredentialStore FromEnvironment()
    {
        var files = new List<string>();
        if (Environment.GetEnvironmentVariable("REGISTRY_AUTH_FILE") is { Length: > 0 } explicitFile)
        {
            files.Add(explicitFile);
        }
        if (Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime)
        {
            files.Add(Path.Combine(runtime, "containers", "auth.json"));
        }
        string home = Environment.GetEnvironmentVariable("HOME") is { Length: > 0 } h
            ? h : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (home.Length > 0)
        {
            files.Add(Path.Combine(home, ".config", "containers", "auth.json"));
            files.Add(Path.Combine(home, ".docker", "config.json"));
        }
        return new RegistryCredentialStore(files);
    }

    /// <summary>The credential stored for <paramref name="registry"/> (as written in references:
    /// <c>docker.io</c>, <c>127.0.0.1:5000</c>), or null.</summary>
    public RegistryCredential? Find(string registry)
    {
        string[] keys = registry == ImageReference.DockerHub
            ? ["docker.io", "https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
            : [registry, "https://" + registry, "http://" + registry];
        foreach (string file in files)
        {
            if (Read(file) is not { Auths: { } auths })
            {
                continue;
            }
            foreach (string key in keys)
            {
                var entry = auths.FirstOrDefault(a => a.Key.TrimEnd('/') == key.TrimEnd('/')).Value;
                if (entry?.Auth is { Length: > 0 } encoded && Decode(encoded) is { } credential)
                {
                    return credential;
                }
            }
        }
        return null;
    }

    /// <summary>The file <c>login</c> writes, as Podman does: <c>$REGISTRY_AUTH_FILE</c>, else
    /// <c>$XDG_RUNTIME_DIR/containers/auth.json</c>, else <c>~/.config/containers/auth.json</c> (also read by Podman).</summary>
    public static string DefaultLoginFile()
    {
        if (Environment.GetEnvironmentVariable("REGISTRY_AUTH_FILE") is { Length: > 0 } explicitFile)
        {
            return explicitFile;
        }
        if (Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime)
        {
            return Path.Combine(runtime, "containers", "auth.json");
        }
        string home = Environment.GetEnvironmentVariable("HOME") is { Length: > 0 } h
            ? h : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(home, ".config", "containers", "auth.json");
    }

    /// <summary>Stores <paramref name="credential"/> for <paramref name="registry"/> in <paramref name="file"/>,
    /// keeping every other entry and field the file has (credential helpers, identity tokens other tools wrote). The
    /// file is private to its owner (mode 0600): it holds a password in base64, which is no protection.</summary>
    public static void Save(string file, string registry, RegistryCredential credential)
    {
        var root = ReadObject(file);
        if (root["auths"] is not JsonObject auths)
        {
            auths = [];
            root["auths"] = auths;
        }
        auths[registry] = new JsonObject { ["auth"] = credential.BasicParameter };
        WriteObject(file, root);
    }

    /// <summary>Removes the credential of <paramref name="registry"/> from <paramref name="file"/>; false if it had none.</summary>
    public static bool Remove(string file, string registry)
    {
        if (!File.Exists(file) || ReadObject(file) is not { } root || root["auths"] is not JsonObject auths || !auths.Remove(registry))
        {
            return false;
        }
        WriteObject(file, root);
        return true;
    }

    private static JsonObject ReadObject(string file)
    {
        if (!File.Exists(file))
        {
            return [];
        }
        try
        {
            return JsonNode.Parse(File.ReadAllBytes(file)) as JsonObject
                ?? throw new RegistryException(RegistryFailure.Protocol, $"{file} is not a JSON object (containers-auth.json(5)): fix or remove it");
        }
        catch (JsonException e)
        {
            throw new RegistryException(RegistryFailure.Protocol, $"{file} is not valid JSON ({e.Message}): fix or remove it", e);
        }
    }

    private static void WriteObject(string file, JsonObject root)
    {
        string directory = Path.GetDirectoryName(Path.GetFullPath(file))!;
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(directory);
        }
        else
        {
            if (!Directory.Exists(directory))
            {
                Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        // Written beside with mode 0600 from the start and renamed over, so the password is never readable by others
        // and a crash leaves the old file or the new one.
        string temporary = file + "." + Guid.NewGuid().ToString("N");
        try
        {
            using (var stream = new FileStream(temporary, options))
            using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
            {
                root.WriteTo(writer);
            }
            File.Move(temporary, file, overwrite: true);
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    private static AuthFile? Read(string file)
    {
        try
        {
            return File.Exists(file)
                ? JsonSerializer.Deserialize(File.ReadAllBytes(file), RegistryJson.Default.AuthFile)
                : null;
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            // A file another tool wrote badly must not stop a pull from a registry that needs no credentials.
            return null;
        }
    }

    private static RegistryCredential? Decode(string encoded)
    {
        try
        {
            string text = Encoding.UTF8.GetString(Convert.FromBase64String(encoded));
            int colon = text.IndexOf(':');
            return colon > 0 ? new RegistryCredential(text[..colon], text[(colon + 1)..]) : null;
        }
        catch (FormatException)
        {
            return null;
        }
    }
}
