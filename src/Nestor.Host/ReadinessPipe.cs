using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>A pipe whose write end a child process inherits, for programs that report readiness by writing to a file
/// descriptor they are given (slirp4netns's <c>--ready-fd</c>, conmon's sync pipe). The read end stays close-on-exec.
/// After the child has started, <see cref="CloseWriteEnd"/> drops this process's copy, so that the child's exit reads
/// as end of file.</summary>
public sealed class ReadinessPipe : IDisposable
{
    private int _readFd;
    private int _writeFd;

    public unsafe ReadinessPipe()
    {
        int* fds = stackalloc int[2];
        if (LibCNet.Pipe2(fds, LibCNet.O_CLOEXEC) != 0)
        {
            throw HostCallException.LastError("pipe2");
        }
        _readFd = fds[0];
        _writeFd = fds[1];
        // Only the write end loses FD_CLOEXEC: process starts (fork + exec) pass it on.
        if (LibCNet.Fcntl(_writeFd, LibCNet.F_SETFD, 0) != 0)
        {
            var error = HostCallException.LastError("fcntl(F_SETFD) of a pipe");
            Dispose();
            throw error;
        }
    }

    /// <summary>The descriptor number to give the child.</summary>
    public int WriteDescriptor => _writeFd;

    public void CloseWriteEnd()
    {
        if (_writeFd >= 0)
        {
            LibCNet.Close(_writeFd);
            _writeFd = -1;
        }
    }

    /// <summary>Waits up to <paramref name="timeout"/> for a byte: true when one came, false at end of file (every
    /// writer gone without writing); a <see cref="TimeoutException"/> when neither happened in time.</summary>
    public unsafe bool WaitForByte(TimeSpan timeout)
    {
        var descriptor = new LibCNet.PollDescriptor { Fd = _readFd, Events = LibCNet.POLLIN };
        int ready = LibCNet.Poll(&descriptor, 1, (int)timeout.TotalMilliseconds);
        if (ready < 0)
        {
            throw HostCallException.LastError("poll of a readiness pipe");
        }
        if (ready == 0)
        {
            throw new TimeoutException($"no readiness reported in {timeout.TotalSeconds} s");
        }
        byte value;
        nint count = LibCNet.Read(_readFd, &value, 1);
        return count < 0 ? throw HostCallException.LastError("read of a readiness pipe") : count == 1;
    }

    public void Dispose()
    {
        CloseWriteEnd();
        if (_readFd >= 0)
        {
            LibCNet.Close(_readFd);
            _readFd = -1;
        }
    }
}
