using System.Diagnostics;
using System.Globalization;

namespace Nestor.Containers.Tests.Engine;

/// <summary>What every test of Nestor run by the unprivileged user nestor-rootless (65536 subordinate ids in
/// /etc/subuid and /etc/subgid, made by scripts/install-prerequisites) sets up and takes down: a directory the user
/// owns, short enough for unix(7)'s 108-byte socket paths, with a store (<c>d</c>) holding busybox and a state
/// directory (<c>s</c>); commands run as the user through runuser; after each test the user's containers are removed,
/// its processes that involve the directory killed, and the directory removed as root (files of subordinate ids in
/// it are not the user's to remove), also when the test failed.</summary>
public abstract class RootlessUserTest : IDisposable
{
    protected const string User = "nestor-rootless";
    protected readonly string root;
    protected readonly string data;
    protected readonly string state;
    protected readonly uint userId;
    private readonly TimeSpan commandTimeout;

    /// <param name="prefix">Two letters naming the test class in the directory's name.</param>
    /// <param name="commandTimeout">How long one command may take (a build's RUN steps take longer than a container verb).</param>
    protected RootlessUserTest(string prefix, TimeSpan commandTimeout)
    {
        this.commandTimeout = commandTimeout;
        root = Path.Combine("/tmp", $"{prefix}-{Guid.NewGuid():N}"[..11]);
        data = Path.Combine(root, "d");
        state = Path.Combine(root, "s");
        Directory.CreateDirectory(root);
        userId = uint.Parse(Run("id", "-u", User).Output.Trim(), CultureInfo.InvariantCulture);
        Assert.Equal(0, Run("chown", User, root).Status);
        var bootstrap = AsUser(EngineFixture.Nestor, "image", "bootstrap", "busybox", "--store", Path.Combine(data, "images"));
        Assert.True(bootstrap.Status == 0, bootstrap.ToString());
    }

    /// <summary><c>nestor container</c> as the user, on this test's store and state.</summary>
    protected CommandResult Container(params string[] arguments) =>
        AsUser([EngineFixture.Nestor, "container", "--root", data, "--state", state, .. arguments]);

    protected CommandResult AsUser(params string[] command) => Run(["runuser", "-u", User, "--", .. command]);

    protected CommandResult Run(params string[] command)
    {
        var start = new ProcessStartInfo(command[0])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = "/",
        };
        foreach (string word in command.Skip(1))
        {
            start.ArgumentList.Add(word);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        process.StandardInput.Close();
        if (!process.WaitForExit(commandTimeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{string.Join(' ', command)} did not end");
        }
        return new CommandResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>No mount of this test's directory on the host and no process of the user left that involves it
    /// (a --rm run's monitor may still be ending for a moment after the command returned).</summary>
    protected void AssertNothingLeft()
    {
        Assert.DoesNotContain(root, File.ReadAllText("/proc/self/mountinfo"));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (UserProcesses().Count > 0 && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(100);
        }
        var left = UserProcesses();
        Assert.True(left.Count == 0, "left running: " + string.Join("; ", left.Select(pid => File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' '))));
    }

    /// <summary>Whether a process of the user that does not name this test's directory is still one of the test's
    /// (a container's process whose command line is its own).</summary>
    protected virtual bool IsTestProcess(string commandLine) => false;

    /// <summary>Processes of the user whose command line or root involves this test's directory (monitors,
    /// containers' processes), other than those of a parallel test class.</summary>
    private List<int> UserProcesses()
    {
        var found = new List<int>();
        foreach (string directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            {
                continue;
            }
            try
            {
                string status = File.ReadAllText(Path.Combine(directory, "status"));
                string uidLine = status.Split('\n').First(line => line.StartsWith("Uid:", StringComparison.Ordinal));
                if (uidLine.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1] != userId.ToString(CultureInfo.InvariantCulture))
                {
                    continue;
                }
                string commandLine = File.ReadAllText(Path.Combine(directory, "cmdline")).Replace('\0', ' ');
                string? rootLink = new FileInfo(Path.Combine(directory, "root")).LinkTarget;
                if (commandLine.Contains(root, StringComparison.Ordinal) || (rootLink?.Contains(root, StringComparison.Ordinal) ?? false)
                    || IsTestProcess(commandLine))
                {
                    found.Add(pid);
                }
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or InvalidOperationException)
            {
            }
        }
        return found;
    }

    /// <summary>What a test class made beyond the directory (a user), removed after the processes are gone.</summary>
    protected virtual void RemoveMore()
    {
    }

    public void Dispose()
    {
        try
        {
            foreach (string id in Container("ps", "-a", "-q", "--no-trunc").Output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                Container("rm", "-f", id);
            }
        }
        finally
        {
            foreach (int pid in UserProcesses())
            {
                Run("kill", "-9", pid.ToString(CultureInfo.InvariantCulture));
            }
            RemoveMore();
            Run("rm", "-rf", root);
            GC.SuppressFinalize(this);
        }
    }
}
