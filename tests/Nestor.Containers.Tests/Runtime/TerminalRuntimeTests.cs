using System.Net.Sockets;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Runtime;
using Nestor.Host;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>process.terminal with a console socket (runc's protocol): the runtime sends the pty master over the Unix
/// socket, and the container's process has the slave as stdin/stdout/stderr and controlling terminal.</summary>
public sealed class TerminalRuntimeTests : IDisposable
{
    private readonly RuntimeUnderTest runtime = new();
    private readonly string socketPath = Path.Combine(Path.GetTempPath(), $"nestor-rt-console-{Guid.NewGuid():N}.sock");

    public void Dispose()
    {
        runtime.Dispose();
        File.Delete(socketPath);
    }

    [Fact]
    public async Task TheProcessGetsAPtyWhoseMasterArrivesOnTheConsoleSocket()
    {
        using var bundle = new BusyboxBundle(["sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && echo stdio-is-a-terminal"]);
        bundle.Spec.Process!.Terminal = true;
        bundle.Write();
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socketPath));
        listener.Listen(1);
        var accepted = listener.AcceptAsync();
        string id = RuntimeUnderTest.UniqueId("tty");
        runtime.Runtime.Create(id, bundle.Directory, new RuntimeIo(ConsoleSocket: socketPath));
        using var connection = await accepted;
        var (master, name) = TerminalCalls.ReceiveDescriptor((int)connection.SafeHandle.DangerousGetHandle());
        Assert.StartsWith("/dev/pts/", name);
        using var terminal = new FileStream(new SafeFileHandle(master, true), FileAccess.Read, 1);
        runtime.Runtime.Start(id);
        var output = new StringBuilder();
        var buffer = new byte[256];
        try
        {
            int read;
            while ((read = terminal.Read(buffer)) > 0)
            {
                output.Append(Encoding.UTF8.GetString(buffer, 0, read));
            }
        }
        catch (IOException)
        {
            // EIO: the slave side closed (the process exited).
        }
        Assert.Equal(0, runtime.Runtime.WaitForExit(id));
        Assert.Equal([name, "stdio-is-a-terminal"], output.ToString().Split("\r\n", StringSplitOptions.RemoveEmptyEntries));
        runtime.Runtime.Delete(id);
    }
}
