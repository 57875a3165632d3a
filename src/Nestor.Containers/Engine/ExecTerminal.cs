using System.Net.Sockets;
using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Runtime;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary><c>container exec -t</c>: the runtime makes a pseudo-terminal in the container (pts(4)) and sends its
/// master over a console socket this listens on (runc's <c>--console-socket</c>, which crun and runc speak too); the
/// command then copies the master's output to its own stdout and, with <c>-i</c>, its stdin to the master, until the
/// process ends. The terminal gets this command's window size when its stdout is a terminal.</summary>
public sealed class ExecTerminal : IDisposable
{
    private readonly Socket listener;

    private ExecTerminal(string socketPath)
    {
        SocketPath = socketPath;
        File.Delete(socketPath);
        listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socketPath));
        listener.Listen(1);
    }

    /// <summary>The console socket's path, for <see cref="RuntimeIo.ConsoleSocket"/>.</summary>
    public string SocketPath { get; }

    /// <summary>Listens at a fresh path under <paramref name="directory"/> (short: unix(7) paths end at 108 bytes).</summary>
    public static ExecTerminal Listen(string directory)
    {
        Directory.CreateDirectory(directory);
        return new ExecTerminal(Path.Combine(directory, $"x{Guid.NewGuid():N}"[..13] + ".console"));
    }

    /// <summary>This command's terminal size (rows, columns) when its stdout is a terminal, for process.consoleSize.</summary>
    public static (uint Rows, uint Columns)? ClientSize() => TerminalCalls.WindowSize(1);

    /// <summary>Receives the master the runtime sent (it did so before its exec returned), then relays until the
    /// process ends; returns its exit status.</summary>
    public int Relay(IRuntimeProcess process, bool input)
    {
        ArgumentNullException.ThrowIfNull(process);
        // The runtime (a process of its own) connects when it has made the pty; one that fails first ends without.
        var exited = Task.Run(process.WaitForExit);
        while (!listener.Poll(50_000, SelectMode.SelectRead))
        {
            if (exited.IsCompleted)
            {
                return exited.Result;
            }
        }
        int master;
        using (var connection = listener.Accept())
        {
            master = TerminalCalls.ReceiveDescriptor((int)connection.Handle).Descriptor;
        }
        // One handle for both directions: the input thread's writes after the end fail as disposed instead of reaching
        // a descriptor number the process has reused meanwhile.
        using var handle = new SafeFileHandle(master, ownsHandle: true);
        using var terminal = new FileStream(handle, FileAccess.ReadWrite, bufferSize: 0);
        if (input)
        {
            var forward = new Thread(() => CopyInput(terminal)) { IsBackground = true };
            forward.Start();
        }
        using var stdout = Console.OpenStandardOutput();
        var buffer = new byte[16 * 1024];
        while (true)
        {
            int read;
            try
            {
                read = terminal.Read(buffer, 0, buffer.Length);
            }
            catch (IOException)
            {
                break; // EIO: every slave is closed, the process has ended
            }
            if (read == 0)
            {
                break;
            }
            stdout.Write(buffer, 0, read);
            stdout.Flush();
        }
        return exited.Result;
    }

    private static void CopyInput(FileStream terminal)
    {
        using var stdin = Console.OpenStandardInput();
        var buffer = new byte[4096];
        try
        {
            int count;
            while ((count = stdin.Read(buffer, 0, buffer.Length)) > 0)
            {
                terminal.Write(buffer, 0, count);
            }
        }
        catch (Exception exception) when (exception is IOException or ObjectDisposedException)
        {
            // The process ended and its terminal with it.
        }
    }

    public void Dispose()
    {
        listener.Dispose();
        File.Delete(SocketPath);
    }
}
