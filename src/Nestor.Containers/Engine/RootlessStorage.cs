using System.Diagnostics;
using Nestor.Containers.Images;
using Nestor.Containers.Storage;

namespace Nestor.Containers.Engine;

/// <summary>A rootless container's storage as its user reaches it without mounting anything on the host, which an
/// unprivileged user cannot do: the overlay root exists only inside a user and mount namespace of the user's
/// (overlayfs mounted with <c>userxattr</c>, overlayfs.rst "Permission model"), and the files the container's other
/// users made in the upper directory belong to the user's subordinate ids (/etc/subuid), which the user may not
/// touch outside such a namespace. Both are done as <c>podman unshare</c> does: in a new user namespace where the user
/// is root and its subordinate ids are mapped (util-linux <c>unshare --map-root-user --map-auto</c>, which maps them
/// with newuidmap(1)/newgidmap(1)), so that root there holds CAP_DAC_OVERRIDE over every file of the container
/// (user_namespaces(7), "Capabilities").</summary>
public static class RootlessStorage
{
    private static readonly string[] Unshare = ["unshare", "--user", "--map-root-user", "--map-auto"];

    /// <summary>Removes <paramref name="path"/> and everything below it, also the files owned by subordinate ids and
    /// the directories overlayfs leaves with mode 0 (its work directory).</summary>
    public static void RemoveTree(string path)
    {
        if (!Directory.Exists(path) && !File.Exists(path))
        {
            return;
        }
        var (status, error) = Run([.. Unshare, "--", "rm", "-rf", "--one-file-system", "--", path]);
        if (status != 0 || Path.Exists(path))
        {
            throw new ContainerEngineException($"could not remove {path} in a user namespace with the subordinate ids (unshare --map-root-user --map-auto rm -rf, status {status}): {error.Trim()}; check that /etc/subuid and /etc/subgid give this user a range (usermod --add-subuids) and that uidmap is installed");
        }
    }

    /// <summary>Mounts <paramref name="root"/>'s overlay at its merged directory inside a new user and mount namespace
    /// held by a helper process, and returns that process: the merged root is then reachable from the host as
    /// <see cref="MountedRoot.Path"/> (<c>/proc/PID/root/…</c> resolves in the helper's mount namespace, proc(5)),
    /// and nothing is mounted on the host. Disposing it ends the helper, and the mount with its namespace.</summary>
    public static MountedRoot Mount(ContainerRootFileSystem root)
    {
        // The helper reads its standard input until the engine closes it (or dies): it cannot outlive its user.
        var start = new ProcessStartInfo(Unshare[0])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string word in Unshare.Skip(1).Concat(["--mount", "--", "sh", "-c",
            "mount -t overlay -o \"$1\" overlay \"$2\" && echo ready && exec cat >/dev/null", "sh", root.MountOptions + ",userxattr", root.MergedDirectory]))
        {
            start.ArgumentList.Add(word);
        }
        Directory.CreateDirectory(root.MergedDirectory);
        var process = Process.Start(start) ?? throw new ContainerEngineException("unshare could not be started: install util-linux");
        string? line = process.StandardOutput.ReadLine();
        if (line != "ready")
        {
            process.StandardInput.Close();
            string error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            process.Dispose();
            throw new ContainerEngineException($"could not mount the container's overlay in a user namespace (unshare --map-root-user --map-auto --mount; mount -t overlay): {error.Trim()}; check /etc/subuid and /etc/subgid for this user and that the kernel allows overlayfs in user namespaces (5.11 or later)");
        }
        return new MountedRoot(process, $"/proc/{process.Id}/root{root.MergedDirectory}");
    }

    /// <summary>The verb of the helper that writes a directory's layer tar (<see cref="LayerDiff"/>) to its
    /// standard output: <c>nestor __layer-diff DIRECTORY</c>.</summary>
    public const string LayerDiffVerb = "__layer-diff";

    /// <summary>The helper's entry (<see cref="LayerDiffVerb"/>): the layer tar of <c>args[1]</c> on standard output,
    /// with the owners as this process sees them (in the user namespace: the container's ids).</summary>
    public static int RunLayerDiff(string[] args)
    {
        if (args.Length != 2)
        {
            Console.Error.WriteLine($"nestor: usage: nestor {LayerDiffVerb} DIRECTORY");
            return 125;
        }
        using var output = Console.OpenStandardOutput();
        LayerDiff.Write(args[1], output);
        return 0;
    }

    /// <summary>Writes the layer tar of a rootless container's upper directory <paramref name="upper"/> to
    /// <paramref name="output"/>, read by <paramref name="nestorCommand"/> with <see cref="LayerDiffVerb"/> in a user
    /// namespace that maps the subordinate ids: it reads every file, whichever of the container's users owns it and
    /// whatever its mode, and records the owners as the container sees them (the container's map, 0 the user and 1…
    /// its subordinate range).</summary>
    public static void WriteLayerDiff(IReadOnlyList<string> nestorCommand, string upper, Stream output) =>
        WriteTar(nestorCommand, upper, output, mount: null);

    /// <summary>A rootless container's merged root as a tar on <paramref name="output"/> (<c>export</c>): its overlay
    /// mounted in a new user and mount namespace that maps the subordinate ids, and read there as
    /// <see cref="WriteLayerDiff"/> reads (a merged root shows no whiteouts), so that every file is read and owned as
    /// the container sees it.</summary>
    public static void WriteMergedRoot(IReadOnlyList<string> nestorCommand, ContainerRootFileSystem root, Stream output)
    {
        Directory.CreateDirectory(root.MergedDirectory);
        WriteTar(nestorCommand, root.MergedDirectory, output, root);
    }

    private static void WriteTar(IReadOnlyList<string> nestorCommand, string directory, Stream output, ContainerRootFileSystem? mount)
    {
        var start = new ProcessStartInfo(Unshare[0]) { RedirectStandardOutput = true, RedirectStandardError = true };
        IEnumerable<string> command = mount is null
            ? Unshare.Skip(1).Append("--").Concat(nestorCommand).Concat([LayerDiffVerb, directory])
            : Unshare.Skip(1).Concat(["--mount", "--", "sh", "-c", "mount -t overlay -o \"$1\" overlay \"$2\" && shift 2 && exec \"$@\"", "sh",
                mount.MountOptions + ",userxattr", mount.MergedDirectory]).Concat(nestorCommand).Concat([LayerDiffVerb, directory]);
        foreach (string word in command)
        {
            start.ArgumentList.Add(word);
        }
        start.Environment["DOTNET_EnableDiagnostics"] = "0";
        using var process = Process.Start(start) ?? throw new ContainerEngineException("unshare could not be started: install util-linux");
        var error = process.StandardError.ReadToEndAsync();
        process.StandardOutput.BaseStream.CopyTo(output);
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new ContainerEngineException($"could not read the container's changes in a user namespace with the subordinate ids (unshare --map-root-user --map-auto nestor {LayerDiffVerb}, status {process.ExitCode}): {error.Result.Trim()}; check /etc/subuid and /etc/subgid for this user");
        }
    }

    private static (int Status, string Error) Run(IReadOnlyList<string> command)
    {
        var start = new ProcessStartInfo(command[0]) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string word in command.Skip(1))
        {
            start.ArgumentList.Add(word);
        }
        using var process = Process.Start(start) ?? throw new ContainerEngineException($"{command[0]} could not be started");
        var output = process.StandardOutput.ReadToEndAsync();
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        _ = output.Result;
        return (process.ExitCode, error);
    }
}

/// <summary>A rootless container's merged root, mounted in a helper's namespaces (<see cref="RootlessStorage.Mount"/>).</summary>
public sealed class MountedRoot(Process helper, string path) : IDisposable
{
    /// <summary>The merged root as the host reaches it: <c>/proc/HELPER/root/MERGED</c>.</summary>
    public string Path { get; } = path;

    public void Dispose()
    {
        try
        {
            helper.StandardInput.Close();
            if (!helper.WaitForExit(TimeSpan.FromSeconds(10)))
            {
                helper.Kill(entireProcessTree: true);
                helper.WaitForExit();
            }
        }
        finally
        {
            helper.Dispose();
        }
    }
}
