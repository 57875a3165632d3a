using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>runc's exec: another process in a running container's namespaces, as the container's user and with its
/// capabilities, whose exit status comes back.</summary>
public sealed class RuntimeExecTests : IDisposable
{
    private readonly RuntimeUnderTest runtime = new();

    public void Dispose() => runtime.Dispose();

    [Fact]
    public void ExecRunsInTheContainersNamespacesAndReturnsTheStatus()
    {
        using var bundle = new BusyboxBundle(["sleep", "60"]);
        bundle.Spec.Hostname = "exec-target";
        bundle.Write();
        string id = RuntimeUnderTest.UniqueId("exec");
        var nestor = runtime.Runtime;
        nestor.Create(id, bundle.Directory, new RuntimeIo());
        nestor.Start(id);
        int init = nestor.State(id).Pid!.Value;

        var process = new SpecProcess
        {
            Args = ["sh", "-c", "echo $$; hostname; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; id -u; pwd; grep CapEff /proc/self/status"],
            Env = ["PATH=/bin"],
            Cwd = "/tmp",
            Capabilities = new SpecCapabilities { Bounding = ["CAP_KILL"], Effective = ["CAP_KILL"], Permitted = ["CAP_KILL"] },
        };
        var (read, write) = ProcessCalls.CreatePipe();
        using var output = new StreamReader(new FileStream(new SafeFileHandle(read, true), FileAccess.Read));
        IRuntimeProcess started;
        try
        {
            started = nestor.Exec(id, process, new RuntimeIo(0, write, write));
        }
        finally
        {
            ProcessCalls.Close(write);
        }
        string[] lines;
        using (started)
        {
            lines = NestorRuntimeTests.Lines(output.ReadToEnd());
            Assert.Equal(0, started.WaitForExit());
        }
        Assert.True(int.Parse(lines[0], System.Globalization.CultureInfo.InvariantCulture) > 1, string.Join('\n', lines));
        Assert.Equal("exec-target", lines[1]);
        Assert.Equal(new FileInfo($"/proc/{init}/ns/pid").LinkTarget, lines[2]);
        Assert.Equal(new FileInfo($"/proc/{init}/ns/mnt").LinkTarget, lines[3]);
        Assert.Equal(["0", "/tmp"], lines[4..6]);
        // CAP_KILL is capability 5.
        Assert.Equal("CapEff:\t0000000000000020", lines[6]);

        // As another user: the status comes back through the relaying child.
        var user = new SpecProcess { Args = ["sh", "-c", "exit $(id -u)"], Env = ["PATH=/bin"], User = new SpecUser { Uid = 42, Gid = 42 } };
        using var failing = nestor.Exec(id, user, new RuntimeIo());
        Assert.Equal(42, failing.WaitForExit());
        Assert.Contains("not found", Assert.Throws<ContainerRuntimeException>(() => nestor.Exec(id, new SpecProcess { Args = ["no-such-program"] }, new RuntimeIo())).Message);

        nestor.Kill(id, ProcessCalls.KillSignal);
        nestor.WaitForExit(id);
        Assert.Contains("stopped", Assert.Throws<ContainerRuntimeException>(() => nestor.Exec(id, process, new RuntimeIo())).Message);
        nestor.Delete(id);
    }
}
