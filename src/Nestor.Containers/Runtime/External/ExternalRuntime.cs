using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Runtime.External;

/// <summary>An OCI runtime driven through runc's command line (runc, crun, and Nestor's own <c>nestor oci</c>, which
/// speak the same verbs: create, start, state, kill, delete, exec, list), as Podman drives them through conmon. Its
/// state directory (<c>--root</c>) is under Nestor's own state directory, so that containers of the engine never mix
/// with containers other tools made with the same runtime. Each call waits for the runtime's command; its log
/// (<c>--log</c>) gives the error text when the command fails.</summary>
public sealed class ExternalRuntime : IContainerRuntime
{
    private readonly string executable;
    private readonly IReadOnlyList<string> prefix;
    private readonly string root;
    private readonly bool writesLog;

    /// <param name="name"><c>runc</c>, <c>crun</c> or <c>nestor</c>.</param>
    /// <param name="executable">The program (absolute path, or a name looked up in PATH).</param>
    /// <param name="prefixArguments">Arguments before the global options (<c>oci</c> for <c>nestor oci</c>).</param>
    /// <param name="stateRoot">The runtime's <c>--root</c>.</param>
    /// <param name="writesLog">Whether the runtime takes runc's <c>--log FILE --log-format json</c> (runc and crun do).</param>
    public ExternalRuntime(string name, string executable, IReadOnlyList<string> prefixArguments, string stateRoot, bool writesLog = true)
    {
        this.writesLog = writesLog;
        Name = name;
        this.executable = ResolveExecutable(executable)
            ?? throw new ContainerRuntimeException($"the OCI runtime '{executable}' is not installed (Debian: apt-get install {name}; or choose another with --runtime)");
        prefix = prefixArguments;
        root = stateRoot;
    }

    public string Name { get; }

    /// <summary>Where the runtime's log for container <paramref name="id"/> goes (its error messages).</summary>
    public string LogPath(string id) => Path.Combine(root, $"{id}.log");

    public void Create(string id, string bundle, RuntimeIo io, string? pidFile = null)
    {
        var arguments = new List<string> { "create", "--bundle", bundle };
        if (pidFile is not null)
        {
            arguments.AddRange(["--pid-file", pidFile]);
        }
        if (io.ConsoleSocket is not null)
        {
            arguments.AddRange(["--console-socket", io.ConsoleSocket]);
        }
        arguments.Add(id);
        int status = Wait(SpawnRuntime(id, arguments, io.Stdin, io.Stdout, io.Stderr));
        if (status != 0)
        {
            throw Failure(id, "create", status);
        }
    }

    public void Start(string id) => RunChecked(id, ["start", id]);

    public SpecState State(string id)
    {
        var (status, output, error) = RunCaptured(id, ["state", id]);
        if (status != 0)
        {
            throw new ContainerRuntimeException($"{Name} state {id} failed: {FirstLine(error, id)}");
        }
        return JsonSerializer.Deserialize(output, RuntimeSpecJson.Default.SpecState)
            ?? throw new ContainerRuntimeException($"{Name} state {id} printed nothing");
    }

    public IRuntimeProcess Exec(string id, SpecProcess process, RuntimeIo io)
    {
        string processFile = Path.Combine(root, $"{id}.exec-{Guid.NewGuid():N}.json");
        var spec = new RuntimeSpec { Process = process };
        // runc's --process takes the process object of config.json alone.
        using (var document = JsonDocument.Parse(spec.ToJson()))
        {
            File.WriteAllText(processFile, document.RootElement.GetProperty("process").GetRawText());
        }
        var arguments = new List<string> { "exec", "--process", processFile };
        if (io.ConsoleSocket is not null)
        {
            arguments.AddRange(["--console-socket", io.ConsoleSocket]);
        }
        arguments.Add(id);
        int pid = SpawnRuntime(id, arguments, io.Stdin, io.Stdout, io.Stderr);
        return new ExecProcess(this, id, pid, processFile);
    }

    public void Kill(string id, int signal, bool all = false)
    {
        var arguments = new List<string> { "kill" };
        if (all)
        {
            arguments.Add("--all");
        }
        arguments.AddRange([id, signal.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        RunChecked(id, arguments);
    }

    public void Delete(string id, bool force = false)
    {
        RunChecked(id, force ? ["delete", "--force", id] : ["delete", id]);
        File.Delete(LogPath(id));
    }

    public IReadOnlyList<string> List()
    {
        var (status, output, error) = RunCaptured(null, ["list", "--quiet"]);
        return status == 0
            ? output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            : throw new ContainerRuntimeException($"{Name} list failed: {error.Trim()}");
    }

    /// <summary>What the log says about why the program of the container could not be started, as Docker's exit
    /// statuses: 127 when it was not found, 126 when it cannot be executed, else null.</summary>
    public static int? ClassifyStartFailure(string message)
    {
        string text = message.ToLowerInvariant();
        if (text.Contains("executable file not found") || text.Contains("no such file or directory"))
        {
            return 127;
        }
        if (text.Contains("permission denied") || text.Contains("exec format error") || text.Contains("is a directory"))
        {
            return 126;
        }
        return null;
    }

    private void RunChecked(string id, IReadOnlyList<string> arguments)
    {
        var (status, _, error) = RunCaptured(id, arguments);
        if (status != 0)
        {
            throw Failure(id, arguments[0], status, error);
        }
    }

    private ContainerRuntimeException Failure(string id, string verb, int status, string? stderr = null)
    {
        string message = FirstLine(stderr ?? "", id);
        return new ContainerRuntimeException($"{Name} {verb} {id} failed (status {status}): {message}");
    }

    /// <summary>The most telling line of what the runtime said: its stderr, else the last error of its log.</summary>
    private string FirstLine(string stderr, string? id)
    {
        string text = stderr.Trim();
        if (text.Length == 0 && id is not null)
        {
            text = LastLogError(id) ?? "";
        }
        return text.Length == 0 ? "no message" : text;
    }

    /// <summary>The last error line of the runtime's log for <paramref name="id"/> (runc and crun write
    /// <c>{"level":"error","msg":…}</c> lines with <c>--log-format json</c>).</summary>
    public string? LastLogError(string id)
    {
        string path = LogPath(id);
        if (!File.Exists(path))
        {
            return null;
        }
        string? last = null;
        foreach (string line in File.ReadLines(path))
        {
            try
            {
                using var document = JsonDocument.Parse(line);
                var element = document.RootElement;
                if (element.TryGetProperty("level", out var level) && level.GetString() is "error" or "fatal"
                    && element.TryGetProperty("msg", out var message))
                {
                    last = message.GetString();
                }
            }
            catch (JsonException)
            {
                if (line.Trim().Length > 0)
                {
                    last = line.Trim();
                }
            }
        }
        return last;
    }

    private int SpawnRuntime(string? id, IReadOnlyList<string> verbArguments, int stdin, int stdout, int stderr)
    {
        var arguments = new List<string> { executable };
        arguments.AddRange(prefix);
        arguments.AddRange(["--root", root]);
        Directory.CreateDirectory(root);
        if (id is not null && writesLog)
        {
            arguments.AddRange(["--log", LogPath(id), "--log-format", "json"]);
        }
        arguments.AddRange(verbArguments);
        return SpawnCalls.Spawn(executable, arguments, SpawnCalls.CurrentEnvironment(), [(0, stdin), (1, stdout), (2, stderr)]);
    }

    private static int Wait(int pid) => ProcessCalls.WaitForExit(pid);

    private (int Status, string Output, string Error) RunCaptured(string? id, IReadOnlyList<string> arguments)
    {
        var output = ProcessCalls.CreatePipe();
        var error = ProcessCalls.CreatePipe();
        int nullInput = MountCalls.Open("/dev/null", MountCalls.OpenFlags.ReadOnly);
        int pid;
        try
        {
            pid = SpawnRuntime(id, arguments, nullInput, output.Write, error.Write);
        }
        finally
        {
            ProcessCalls.Close(nullInput);
            ProcessCalls.Close(output.Write);
            ProcessCalls.Close(error.Write);
        }
        using var outputStream = new FileStream(new SafeFileHandle(output.Read, true), FileAccess.Read);
        using var errorStream = new FileStream(new SafeFileHandle(error.Read, true), FileAccess.Read);
        var errorText = Task.Run(() => new StreamReader(errorStream).ReadToEnd());
        string outputText = new StreamReader(outputStream).ReadToEnd();
        int status = Wait(pid);
        return (status, outputText, errorText.Result);
    }

    private static string? ResolveExecutable(string name)
    {
        if (name.Contains('/'))
        {
            return File.Exists(name) ? name : null;
        }
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").Split(':'))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return null;
    }

    /// <summary>A runtime's <c>exec</c> command: it stays the parent of the process it starts in the container and
    /// exits with that process's status.</summary>
    private sealed class ExecProcess(ExternalRuntime runtime, string id, int pid, string processFile) : IRuntimeProcess
    {
        private int? status;

        public int Pid => pid;

        public int WaitForExit()
        {
            if (status is { } known)
            {
                return known;
            }
            int result = Wait(pid);
            File.Delete(processFile);
            // The runtime's own failure to start the program (not found, not executable) comes back as its status 1
            // or 255 with the reason in its log; Docker reports those as 127 and 126.
            if (result is 1 or 255 && runtime.LastLogError(id) is { } message && message.Contains("exec", StringComparison.OrdinalIgnoreCase)
                && ClassifyStartFailure(message) is { } classified)
            {
                result = classified;
            }
            status = result;
            return result;
        }

        public void Dispose()
        {
            if (status is null && ProcessCalls.TryWaitForExit(pid) is null)
            {
                ProcessCalls.Signal(pid, ProcessCalls.KillSignal);
                ProcessCalls.WaitForExit(pid);
            }
            File.Delete(processFile);
        }
    }
}
