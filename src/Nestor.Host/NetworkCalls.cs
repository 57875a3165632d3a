using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>Process and namespace calls the container network needs besides netlink: signals to its helper processes,
/// the namespace identity of a process.</summary>
public static class NetworkCalls
{
    /// <summary>kill(2); false when the process no longer exists (ESRCH).</summary>
    public static bool Signal(int pid, int signal)
    {
        if (LibCNet.Kill(pid, signal) == 0)
        {
            return true;
        }
        int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
        return errno == 3 ? false : throw new HostCallException($"kill of pid {pid} with signal {signal}", errno);
    }

    /// <summary>The identity of a process's network namespace, as readlink(2) of /proc/PID/ns/net shows it
    /// (<c>net:[4026531840]</c>); equal for two processes exactly when they share the namespace.</summary>
    public static string NetworkNamespaceOf(int pid) =>
        new FileInfo($"/proc/{pid}/ns/net").LinkTarget ?? throw new HostCallException($"readlink of /proc/{pid}/ns/net", 2);
}
