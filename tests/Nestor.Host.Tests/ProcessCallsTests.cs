using System.Net.Sockets;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Nestor.Host.Tests;

/// <summary>clone3 into new namespaces followed by execve, with the step that failed reported; waitpid's statuses;
/// the process identity by start time; descriptors over a Unix socket.</summary>
public class ProcessCallsTests
{
    [Fact]
    public void ClonedChildExecutesInNewPidAndUtsNamespaces()
    {
        var (read, write) = ProcessCalls.CreatePipe();
        int released = 0;
        int pid;
        using var output = new StreamReader(new FileStream(new SafeFileHandle(read, true), FileAccess.Read));
        try
        {
            pid = ProcessCalls.CloneAndExecute(new CloneExecRequest
            {
                CloneFlags = (ulong)(NamespaceKinds.Pid | NamespaceKinds.Uts | NamespaceKinds.Mount),
                Executable = "/bin/busybox",
                Arguments = ["sh", "-c", "echo $$; readlink /proc/self/ns/uts"],
                Environment = ["PATH=/bin"],
                Stdout = write,
            }, child => released = child);
        }
        finally
        {
            ProcessCalls.Close(write);
        }
        Assert.Equal(pid, released);
        string[] lines = output.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(0, ProcessCalls.WaitForExit(pid));
        Assert.Equal("1", lines[0]);
        Assert.NotEqual(new FileInfo("/proc/self/ns/uts").LinkTarget, lines[1]);
    }

    [Fact]
    public void AFailedExecIsAnErrorNamingTheStep()
    {
        var failure = Assert.Throws<HostCallException>(() => ProcessCalls.CloneAndExecute(new CloneExecRequest
        {
            Executable = "/nonexistent-" + Guid.NewGuid().ToString("N"),
            Arguments = ["x"],
            Environment = [],
        }));
        Assert.Equal(2, failure.ErrorNumber); // ENOENT
        Assert.StartsWith("execve", failure.Operation);
    }

    [Fact]
    public void AFailingSetnsIsAnErrorNamingTheStep()
    {
        // A pipe is not a namespace descriptor: setns fails with EINVAL in the child, before its exec.
        var (read, write) = ProcessCalls.CreatePipe();
        try
        {
            var failure = Assert.Throws<HostCallException>(() => ProcessCalls.CloneAndExecute(new CloneExecRequest
            {
                Executable = "/bin/true",
                Arguments = ["true"],
                Environment = [],
                JoinNamespaces = [read],
            }));
            Assert.StartsWith("setns", failure.Operation);
            Assert.Equal(22, failure.ErrorNumber);
        }
        finally
        {
            ProcessCalls.Close(read);
            ProcessCalls.Close(write);
        }
    }

    [Fact]
    public void WaitForExitReportsTheStatusAsAShellDoes()
    {
        Assert.Equal(5, ProcessCalls.WaitForExit(Start("exit 5")));
        Assert.Equal(128 + ProcessCalls.KillSignal, ProcessCalls.WaitForExit(Start("kill -9 $$")));
        Assert.Equal(-1, ProcessCalls.WaitForExit(Environment.ProcessId));
    }

    [Fact]
    public void StartTimeIdentifiesALiveProcessOnly()
    {
        Assert.NotNull(ProcessCalls.StartTime(Environment.ProcessId));
        int pid = Start("exit 0");
        // Until reaped the child is a zombie, which counts as gone.
        long deadline = Environment.TickCount64 + 10_000;
        while (ProcessCalls.StartTime(pid) is not null && Environment.TickCount64 < deadline)
        {
            Thread.Sleep(5);
        }
        Assert.Null(ProcessCalls.StartTime(pid));
        ProcessCalls.WaitForExit(pid);
        Assert.Null(ProcessCalls.StartTime(pid));
        Assert.False(ProcessCalls.Signal(pid, 0));
    }

    [Fact]
    public void NamespaceInodeIsTheOneReadlinkShows()
    {
        string link = new FileInfo("/proc/self/ns/net").LinkTarget!;
        Assert.Equal($"net:[{NamespaceCalls.Inode("self", NamespaceKinds.Network)}]", link);
        Assert.Equal(NamespaceKinds.Time, NamespaceCalls.FromSpecType("time"));
        Assert.Null(NamespaceCalls.FromSpecType("bogus"));
    }

    [Fact]
    public async Task ADescriptorSentOverAUnixSocketArrives()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nestor-host-fd-{Guid.NewGuid():N}.sock");
        try
        {
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(path));
            listener.Listen(1);
            var accepted = listener.AcceptAsync();
            int client = TerminalCalls.ConnectUnixSocket(path);
            using var server = await accepted;
            var (read, write) = ProcessCalls.CreatePipe();
            try
            {
                TerminalCalls.SendDescriptor(client, write, "the pipe");
                var (received, name) = TerminalCalls.ReceiveDescriptor((int)server.SafeHandle.DangerousGetHandle());
                Assert.Equal("the pipe", name);
                Assert.NotEqual(write, received);
                ProcessCalls.WriteAll(received, "through"u8);
                ProcessCalls.Close(received);
                ProcessCalls.Close(write);
                var buffer = new byte[16];
                int count = ProcessCalls.ReadSome(read, buffer);
                Assert.Equal("through", Encoding.UTF8.GetString(buffer, 0, count));
            }
            finally
            {
                ProcessCalls.Close(read);
                ProcessCalls.Close(client);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static int Start(string script) => ProcessCalls.CloneAndExecute(new CloneExecRequest
    {
        Executable = "/bin/busybox",
        Arguments = ["sh", "-c", script],
        Environment = [],
    });
}
