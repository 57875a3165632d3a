using System.Runtime.InteropServices;
using System.Text;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>Pseudo-terminals for a container's process and runc's console-socket protocol: the runtime connects to the
/// caller's Unix socket, the init opens a pty in the container's devpts (pts(4)), sends the master with SCM_RIGHTS
/// (unix(7)) and the pty's name as the message, and keeps the slave as the process's controlling terminal.</summary>
public static unsafe class TerminalCalls
{
    private const ulong TIOCGWINSZ = 0x5413;
    private const ulong TIOCSWINSZ = 0x5414;
    private const ulong TIOCSCTTY = 0x540E;
    private const ulong TIOCGPTN = 0x80045430;
    private const ulong TIOCSPTLCK = 0x40045431;
    private const ulong TIOCGPTPEER = 0x5441;

    /// <summary>Connects a stream socket to the Unix socket at <paramref name="path"/> (close-on-exec).</summary>
    public static int ConnectUnixSocket(string path)
    {
        int fd = LibC.Socket(1 /* AF_UNIX */, 1 /* SOCK_STREAM */ | LibC.O_CLOEXEC, 0);
        if (fd < 0)
        {
            throw HostCallException.LastError("socket(AF_UNIX)");
        }
        byte[] address = new byte[110];
        address[0] = 1; // sun_family = AF_UNIX
        int length = Encoding.UTF8.GetBytes(path, address.AsSpan(2, 107));
        fixed (byte* pointer = address)
        {
            if (LibC.Connect(fd, pointer, (uint)(2 + length + 1)) != 0)
            {
                var error = HostCallException.LastError($"connect to the console socket {path}");
                LibC.Close(fd);
                throw error;
            }
        }
        return fd;
    }

    /// <summary>Opens /dev/ptmx (the container's, after pivot_root), unlocks it, sets its size, sends the master over
    /// <paramref name="socket"/> and closes it and the socket; returns the slave's descriptor.</summary>
    public static int CreateAndSendMaster(int socket, uint rows, uint columns) =>
        SendNewPseudoTerminal("/dev/ptmx", 0, socket, rows, columns);

    /// <summary>As <see cref="CreateAndSendMaster"/> for a pty in the devpts of the container whose process
    /// <paramref name="pid"/> is, opened from outside through /proc/PID/root (an exec'd process's terminal must be the
    /// container's, or <c>tty</c> inside cannot name it). dev and dev/pts are mount points the container cannot replace
    /// without CAP_SYS_ADMIN, ptmx is opened without following a final link, and what was opened must answer
    /// TIOCGPTN, so no host file is opened in its place.</summary>
    public static int CreateAndSendMasterIn(int pid, int socket, uint rows, uint columns) =>
        SendNewPseudoTerminal($"/proc/{pid}/root/dev/pts/ptmx", LibC.O_NOFOLLOW, socket, rows, columns);

    private static int SendNewPseudoTerminal(string ptmx, int extraFlags, int socket, uint rows, uint columns)
    {
        int master = LibC.Open(ptmx, LibC.O_RDWR | LibC.O_NOCTTY | LibC.O_CLOEXEC | extraFlags, 0);
        if (master < 0)
        {
            var error = HostCallException.LastError($"opening {ptmx}");
            LibC.Close(socket);
            throw error;
        }
        try
        {
            int unlock = 0;
            if (LibC.Ioctl(master, TIOCSPTLCK, (nint)(&unlock)) != 0)
            {
                throw HostCallException.LastError("unlocking the pty (TIOCSPTLCK)");
            }
            int number = 0;
            if (LibC.Ioctl(master, TIOCGPTN, (nint)(&number)) != 0)
            {
                throw HostCallException.LastError("TIOCGPTN");
            }
            int slave = LibC.Ioctl(master, TIOCGPTPEER, LibC.O_RDWR | LibC.O_NOCTTY | LibC.O_CLOEXEC);
            if (slave < 0)
            {
                throw HostCallException.LastError("opening the pty's slave (TIOCGPTPEER)");
            }
            if (rows > 0 && columns > 0)
            {
                ushort* size = stackalloc ushort[4];
                size[0] = (ushort)rows;
                size[1] = (ushort)columns;
                size[2] = 0;
                size[3] = 0;
                LibC.Ioctl(master, TIOCSWINSZ, (nint)size);
            }
            SendDescriptor(socket, master, $"/dev/pts/{number}");
            return slave;
        }
        finally
        {
            LibC.Close(master);
            LibC.Close(socket);
        }
    }

    /// <summary>The window size (rows, columns) of the terminal <paramref name="fd"/> is (TIOCGWINSZ, tty_ioctl(4));
    /// null when it is not a terminal. Read by ioctl rather than through System.Console, which on first use switches
    /// the terminal's keypad mode and writes that escape sequence to it.</summary>
    public static (uint Rows, uint Columns)? WindowSize(int fd)
    {
        ushort* size = stackalloc ushort[4];
        return LibC.Ioctl(fd, TIOCGWINSZ, (nint)size) == 0 ? (size[0], size[1]) : null;
    }

    /// <summary>sendmsg(2) of one descriptor as SCM_RIGHTS, with <paramref name="name"/> as the data.</summary>
    public static void SendDescriptor(int socket, int descriptor, string name)
    {
        byte[] data = Encoding.UTF8.GetBytes(name);
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; int fd; } padded to CMSG_SPACE(4) = 24.
        byte* control = stackalloc byte[24];
        new Span<byte>(control, 24).Clear();
        *(ulong*)control = 20; // CMSG_LEN(sizeof(int))
        *(int*)(control + 8) = 1; // SOL_SOCKET
        *(int*)(control + 12) = 1; // SCM_RIGHTS
        *(int*)(control + 16) = descriptor;
        fixed (byte* pointer = data)
        {
            // struct iovec { void* base; size_t length; }
            nint* vector = stackalloc nint[2];
            vector[0] = (nint)pointer;
            vector[1] = data.Length;
            // struct msghdr: name, namelen(+pad), iov, iovlen, control, controllen, flags(+pad).
            nint* message = stackalloc nint[7];
            new Span<nint>(message, 7).Clear();
            message[2] = (nint)vector;
            message[3] = 1;
            message[4] = (nint)control;
            message[5] = 24;
            if (LibC.SendMsg(socket, message, 0) < 0)
            {
                throw HostCallException.LastError("sending the pty master over the console socket");
            }
        }
    }

    /// <summary>recvmsg(2) of one SCM_RIGHTS descriptor on a connected Unix socket (the receiving side of
    /// <see cref="SendDescriptor"/>, what a console-socket listener does): the descriptor (close-on-exec) and the
    /// message's text.</summary>
    public static (int Descriptor, string Name) ReceiveDescriptor(int socket)
    {
        byte* control = stackalloc byte[24];
        new Span<byte>(control, 24).Clear();
        byte* data = stackalloc byte[4096];
        nint* vector = stackalloc nint[2];
        vector[0] = (nint)data;
        vector[1] = 4096;
        nint* message = stackalloc nint[7];
        new Span<nint>(message, 7).Clear();
        message[2] = (nint)vector;
        message[3] = 1;
        message[4] = (nint)control;
        message[5] = 24;
        nint received = LibC.RecvMsg(socket, message, 0x40000000 /* MSG_CMSG_CLOEXEC */);
        if (received < 0)
        {
            throw HostCallException.LastError("recvmsg of a descriptor");
        }
        if (*(int*)(control + 8) != 1 || *(int*)(control + 12) != 1)
        {
            throw new HostCallException("recvmsg: the message carried no descriptor", 22 /* EINVAL */);
        }
        return (*(int*)(control + 16), Encoding.UTF8.GetString(data, (int)received));
    }

    /// <summary>setsid(2), then the slave as controlling terminal (TIOCSCTTY, tty_ioctl(4)) and as stdin, stdout and
    /// stderr.</summary>
    public static void MakeControllingTerminal(int slave)
    {
        if (LibC.Setsid() < 0)
        {
            throw HostCallException.LastError("setsid");
        }
        if (LibC.Ioctl(slave, TIOCSCTTY, 0) != 0)
        {
            throw HostCallException.LastError("making the pty the controlling terminal (TIOCSCTTY)");
        }
        for (int stream = 0; stream < 3; stream++)
        {
            if (LibC.Dup2(slave, stream) < 0)
            {
                throw HostCallException.LastError($"dup2 of the pty onto {stream}");
            }
        }
        if (slave > 2)
        {
            LibC.Close(slave);
        }
    }
}
