using System.Diagnostics;
using Nestor.Containers.Engine;
using Nestor.Containers.Images;
using Nestor.Host;

namespace Nestor.Containers.Tests.Engine;

/// <summary>A private engine for one test class: its own data and state directories (so classes running in parallel
/// never see each other's containers), a busybox image imported from a root made of /bin/busybox, and the real
/// <c>nestor</c> command to drive it. Disposing removes every container it made (killing any left running), the
/// runtime's state, cgroups, mounts and directories.</summary>
public sealed class EngineFixture : IDisposable
{
    public EngineFixture()
    {
        // Short: the attach socket's path must stay under unix(7)'s 108 bytes.
        Root = Path.Combine("/tmp", $"ne-{Guid.NewGuid():N}"[..11]);
        Data = Path.Combine(Root, "d");
        State = Path.Combine(Root, "s");
        Directory.CreateDirectory(Data);
        Directory.CreateDirectory(State);
        Paths = new ContainerPaths(State, Data);
        string rootfs = Path.Combine(Root, "busybox-root");
        MakeBusyboxRoot(rootfs);
        var store = ImageStore.Open(Paths.Images);
        Image = store.ImportRootFileSystem(rootfs, ImageName, new ImageConfig { Cmd = ["sh"], Env = ["PATH=/bin"] });
        Directory.Delete(rootfs, recursive: true);
    }

    public const string ImageName = "busybox:latest";

    public string Root { get; }
    public string Data { get; }
    public string State { get; }
    public ContainerPaths Paths { get; }
    public StoredImage Image { get; }

    /// <summary>The nestor apphost next to the tests.</summary>
    public static string Nestor => Path.Combine(AppContext.BaseDirectory, "nestor");

    /// <summary>Runs <c>nestor container --root DATA --state STATE ARGS…</c>; returns its status and output.</summary>
    public CommandResult Container(params string[] arguments) => Container(arguments, stdin: null);

    public CommandResult Container(string[] arguments, string? stdin, TimeSpan? timeout = null, string? user = null)
    {
        var start = new ProcessStartInfo(user is null ? Nestor : "runuser")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        if (user is not null)
        {
            foreach (string word in new[] { "-u", user, "--", Nestor })
            {
                start.ArgumentList.Add(word);
            }
        }
        foreach (string word in new[] { "container", "--root", Data, "--state", State }.Concat(arguments))
        {
            start.ArgumentList.Add(word);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (stdin is not null)
        {
            process.StandardInput.Write(stdin);
        }
        process.StandardInput.Close();
        if (!process.WaitForExit(timeout ?? TimeSpan.FromSeconds(60)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"nestor container {string.Join(' ', arguments)} did not end; stderr so far: {error}");
        }
        return new CommandResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>The container ids in the store.</summary>
    public IReadOnlyList<string> ContainerIds() =>
        Directory.Exists(Paths.Containers)
            ? [.. Directory.EnumerateDirectories(Paths.Containers).Select(Path.GetFileName).OfType<string>()]
            : [];

    /// <summary>A root with /bin/busybox and a link for each of its applets, /etc/passwd and /etc/group.</summary>
    public static void MakeBusyboxRoot(string root)
    {
        foreach (string directory in new[] { "bin", "etc", "tmp", "root" })
        {
            Directory.CreateDirectory(Path.Combine(root, directory));
        }
        File.Copy("/bin/busybox", Path.Combine(root, "bin", "busybox"));
        var list = new ProcessStartInfo("/bin/busybox", "--list") { RedirectStandardOutput = true };
        using (var process = Process.Start(list)!)
        {
            foreach (string applet in process.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                if (applet != "busybox")
                {
                    File.CreateSymbolicLink(Path.Combine(root, "bin", applet), "busybox");
                }
            }
            process.WaitForExit();
        }
        File.WriteAllText(Path.Combine(root, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n");
        File.WriteAllText(Path.Combine(root, "etc", "group"), "root:x:0:\nnogroup:x:65534:\n");
    }

    public void Dispose()
    {
        foreach (string id in ContainerIds())
        {
            try
            {
                Container("rm", "-f", id);
            }
            catch (TimeoutException)
            {
            }
            foreach (string controller in new[] { "memory", "pids", "cpu", "cpuacct", "blkio", "devices", "freezer", "cpuset", "hugetlb", "systemd" })
            {
                string group = Path.Combine("/sys/fs/cgroup", controller, "nestor", id);
                if (Directory.Exists(group))
                {
                    try
                    {
                        Directory.Delete(group);
                    }
                    catch (IOException)
                    {
                    }
                }
            }
        }
        foreach (string line in File.ReadAllLines("/proc/self/mountinfo").Reverse())
        {
            string target = global::Nestor.Host.MountInfo.Unescape(line.Split(' ')[4]);
            if (target.StartsWith(Root + "/", StringComparison.Ordinal))
            {
                MountCalls.TryUnmountDetached(target);
            }
        }
        if (Directory.Exists(Root))
        {
            Directory.Delete(Root, recursive: true);
        }
    }
}

public sealed record CommandResult(int Status, string Output, string Error)
{
    public override string ToString() => $"status {Status}\nstdout: {Output}\nstderr: {Error}";
}
