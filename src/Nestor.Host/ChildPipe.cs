using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>A pipe one end of which a child process inherits, for programs that talk through a file descriptor number
/// they are given: slirp4netns writes a byte to its <c>--ready-fd</c> when the network is configured, and exits when
/// its <c>--exit-fd</c> reaches end of file (the parent closed its end, or died). The end this process keeps stays
/// close-on-exec; after the child has started, <see cref="CloseChildEnd"/> drops this process's copy of the other,
/// so that the child's exit reads as end of file.</summary>
public sealed class ChildPipe : IDisposable
{
    private int _parentFd;
    private int _childFd;
    private readonly bool _childWrites;

    private unsafe ChildPipe(bool childWrites)
    {
        _childWrites = childWrites;
        int* fds = stackalloc int[2];
        if (LibCNet.Pipe2(fds, LibCNet.O_CLOEXEC) != 0)
        {
            throw HostCallException.LastError("pipe2");
        }
        (_childFd, _parentFd) = childWrites ? (fds[1], fds[0]) : (fds[0], fds[1]);
        // Only the child's end loses FD_CLOEXEC: process starts (fork + exec) pass it on.
        if (LibCNet.Fcntl(_childFd, LibCNet.F_SETFD, 0) != 0)
        {
            var error = HostCallException.LastError("fcntl(F_SETFD) of a pipe");
            Dispose();
            throw error;
        }
    }

    /// <summary>A pipe the child writes to (a readiness report) and this process reads.</summary>
    public static ChildPipe ForChildToWrite() => new(childWrites: true);

    /// <summary>A pipe this process holds the write end of and the child reads (an exit signal: end of file when this
    /// process closes it or ends).</summary>
    public static ChildPipe ForChildToRead() => new(childWrites: false);

    /// <summary>The descriptor number to give the child.</summary>
    public int ChildDescriptor => _childFd;

    public void CloseChildEnd() => Close(ref _childFd);

    /// <summary>Closes this process's end: for <see cref="ForChildToRead"/>, the child sees end of file.</summary>
    public void CloseParentEnd() => Close(ref _parentFd);

    /// <summary>For <see cref="ForChildToWrite"/>: waits up to <paramref name="timeout"/> for a byte: true when one
    /// came, false at end of file (every writer gone without writing); a <see cref="TimeoutException"/> when neither
    /// happened in time.</summary>
    public unsafe bool WaitForByte(TimeSpan timeout)
    {
        if (!_childWrites)
        {
            throw new InvalidOperationException("this pipe is read by the child");
        }
        var descriptor = new LibCNet.PollDescriptor { Fd = _parentFd, Events = LibCNet.POLLIN };
        int ready = LibCNet.Poll(&descriptor, 1, (int)timeout.TotalMilliseconds);
        if (ready < 0)
        {
            throw HostCallException.LastError("poll of a pipe");
        }
        if (ready == 0)
        {
            throw new TimeoutException($"nothing came through the pipe in {timeout.TotalSeconds} s");
        }
        byte value;
        nint count = LibCNet.Read(_parentFd, &value, 1);
        return count < 0 ? throw HostCallException.LastError("read of a pipe") : count == 1;
    }

    public void Dispose()
    {
        CloseChildEnd();
        CloseParentEnd();
    }

    private static void Close(ref int fd)
    {
        if (fd >= 0)
        {
            LibCNet.Close(fd);
            fd = -1;
        }
    }
}
