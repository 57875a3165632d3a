using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text.Json;
using Nestor.Containers.Images;
using Nestor.Containers.Tests.Images;

namespace Nestor.Containers.Tests.Build;

/// <summary><c>nestor build</c> against Debian's <c>podman build</c> on the same Dockerfile and the same base image
/// (Nestor's busybox image saved and loaded into a private podman root, vfs driver): the same Cmd, Entrypoint, Env,
/// WorkingDir, User, ExposedPorts and Labels (less buildah's own io.buildah.version), the same files in the exported
/// roots (less the mount points each runtime leaves: /dev, /proc, /sys, /run, /etc/hostname, /etc/hosts,
/// /etc/resolv.conf), and Nestor's image loads and runs in podman.</summary>
public sealed class PodmanBuildInteropTests(BuildFixture fixture) : IClassFixture<BuildFixture>
{
    private const string BaseName = "localhost/nestor-build-base:v1";

    private const string Dockerfile = $"""
        FROM {BaseName}
        ARG VERSION=1.2
        ENV APP_HOME=/srv/app VERSION_SEEN=$VERSION
        WORKDIR $APP_HOME
        RUN mkdir -p lib && echo "built $VERSION" > lib/built.txt && rm /bin/vi && chmod 600 lib/built.txt
        COPY site/ public/
        COPY run.sh ./
        USER nobody
        EXPOSE 8080 9090/udp
        LABEL org.example.course="virtualization" stage=final
        ENTRYPOINT ["/bin/sh"]
        CMD ["-c", "cat lib/built.txt"]
        """;

    private sealed class Podman(TemporaryDirectory directory)
    {
        public string Run(params string[] arguments) => TemporaryDirectory.Run("podman",
            ["--root", directory.Combine("proot"), "--runroot", directory.Combine("prun"), "--storage-driver", "vfs", .. arguments]);
    }

    [Fact]
    public void PodmanAndNestorBuildTheSameConfigAndFilesAndPodmanRunsNestorsImage()
    {
        using var directory = new TemporaryDirectory("pbuild");
        var podman = new Podman(directory);
        var store = fixture.Store;
        store.Tag(Engine.EngineFixture.ImageName, BaseName);
        using (var archive = File.Create(directory.Combine("base.tar")))
        {
            ImageArchive.Save(store, [BaseName], archive, ImageArchiveFormat.OciArchive);
        }
        podman.Run("load", "-i", directory.Combine("base.tar"));
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = Dockerfile,
            ["site/index.html"] = "<h1>It works</h1>\n",
            ["site/css/main.css"] = "h1 { color: green }\n",
            ["run.sh"] = "#!/bin/sh\nexec cat lib/built.txt\n",
        });
        Nestor.Host.FileSystemCalls.Chmod(Path.Combine(context, "run.sh"), 0x1ed);

        var nestor = fixture.Build("-t", "localhost/compared:v1", "--network", "none", context);
        Assert.True(nestor.Status == 0, nestor.ToString());
        podman.Run("build", "--network", "none", "--pull=never", "-t", "localhost/compared:v1", context);

        // The config fields a container runs by.
        var nestorConfig = store.Resolve("localhost/compared:v1").Config;
        using var inspected = JsonDocument.Parse(podman.Run("image", "inspect", "localhost/compared:v1"));
        var podmanConfig = inspected.RootElement[0].GetProperty("Config");
        Assert.Equal(Strings(podmanConfig, "Cmd"), nestorConfig.Cmd);
        Assert.Equal(Strings(podmanConfig, "Entrypoint"), nestorConfig.Entrypoint);
        Assert.Equal(Strings(podmanConfig, "Env"), nestorConfig.Env);
        Assert.Equal(podmanConfig.GetProperty("WorkingDir").GetString(), nestorConfig.WorkingDir);
        Assert.Equal(podmanConfig.GetProperty("User").GetString(), nestorConfig.User);
        Assert.Equal(podmanConfig.GetProperty("ExposedPorts").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal),
            nestorConfig.ExposedPorts!.Keys.Order(StringComparer.Ordinal));
        var podmanLabels = podmanConfig.GetProperty("Labels").EnumerateObject()
            .Where(label => label.Name != "io.buildah.version").ToDictionary(label => label.Name, label => label.Value.GetString()!);
        Assert.Equal(podmanLabels.OrderBy(l => l.Key, StringComparer.Ordinal), nestorConfig.Labels!.OrderBy(l => l.Key, StringComparer.Ordinal)!);

        // The same files: both images' roots exported from a created container.
        string nestorRoot = directory.Combine("nestor-root.tar");
        var created = fixture.Engine.Container("create", "--name", "compared", "localhost/compared:v1");
        Assert.True(created.Status == 0, created.ToString());
        Assert.Equal(0, fixture.Engine.Container("export", "-o", nestorRoot, "compared").Status);
        Assert.Equal(0, fixture.Engine.Container("rm", "compared").Status);
        string podmanContainer = podman.Run("create", "localhost/compared:v1").Trim();
        string podmanRoot = directory.Combine("podman-root.tar");
        podman.Run("export", "-o", podmanRoot, podmanContainer);
        podman.Run("rm", podmanContainer);
        var nestorFiles = Files(nestorRoot);
        var podmanFiles = Files(podmanRoot);
        Assert.Equal(podmanFiles.Keys.Order(StringComparer.Ordinal), nestorFiles.Keys.Order(StringComparer.Ordinal));
        foreach (var (path, description) in podmanFiles)
        {
            Assert.True(description == nestorFiles[path], $"{path}: podman {description}, nestor {nestorFiles[path]}");
        }
        Assert.Contains("srv/app/lib/built.txt", nestorFiles.Keys);
        Assert.DoesNotContain("bin/vi", nestorFiles.Keys);

        // Nestor's image in podman: saved as an OCI archive, loaded, run.
        using (var archive = File.Create(directory.Combine("built.tar")))
        {
            ImageArchive.Save(store, ["localhost/compared:v1"], archive, ImageArchiveFormat.OciArchive);
        }
        podman.Run("rmi", "-f", "localhost/compared:v1");
        podman.Run("load", "-i", directory.Combine("built.tar"));
        string output = podman.Run("run", "--rm", "--network", "none", "--user", "0",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "localhost/compared:v1");
        Assert.Equal("built 1.2\n", output);
    }

    private static List<string>? Strings(JsonElement config, string name) =>
        config.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Array
            ? [.. value.EnumerateArray().Select(item => item.GetString()!)] : null;

    /// <summary>Each entry of a root tar as "type mode uid:gid content-hash-or-link", without the mount points a
    /// runtime makes.</summary>
    private static Dictionary<string, string> Files(string tar)
    {
        string[] mountPoints = ["dev", "proc", "sys", "run", "etc/hostname", "etc/hosts", "etc/resolv.conf"];
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        using var stream = File.OpenRead(tar);
        using var reader = new TarReader(stream);
        while (reader.GetNextEntry() is { } entry)
        {
            string name = Nestor.Containers.Build.BuildContext.Clean(entry.Name);
            if (name.Length == 0 || mountPoints.Any(point => name == point || name.StartsWith(point + "/", StringComparison.Ordinal)))
            {
                continue;
            }
            string content = entry.EntryType switch
            {
                TarEntryType.RegularFile or TarEntryType.V7RegularFile => Convert.ToHexStringLower(SHA256.HashData(entry.DataStream ?? Stream.Null)),
                TarEntryType.SymbolicLink or TarEntryType.HardLink => "-> " + entry.LinkName,
                _ => "",
            };
            files[name] = $"{(entry.EntryType == TarEntryType.V7RegularFile ? TarEntryType.RegularFile : entry.EntryType)} {Convert.ToString((int)entry.Mode, 8)} {entry.Uid}:{entry.Gid} {content}";
        }
        return files;
    }
}
