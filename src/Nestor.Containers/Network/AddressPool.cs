using System.Net;

namespace Nestor.Containers.Network;

/// <summary>The bridge's IPAM: which container holds which address of the subnet, in a text file under the state
/// directory (one "ADDRESS CONTAINER-ID" line each), so that every nestor process (a <c>run</c>, an <c>rm</c>, a
/// monitor) sees the same leases. Callers hold the network's lock (<see cref="StateLock"/>) around a change.</summary>
internal sealed class AddressPool(string path, Ipv4Subnet subnet, string bridgeName)
{
    /// <summary>The address <paramref name="containerId"/> holds, leasing the lowest free one if it has none.</summary>
    public IPAddress Lease(string containerId)
    {
        var leases = Read();
        if (leases.FirstOrDefault(lease => lease.ContainerId == containerId) is { Address: { } held })
        {
            return held;
        }
        var taken = leases.Select(lease => lease.Address).ToHashSet();
        var free = subnet.ContainerAddresses.FirstOrDefault(address => !taken.Contains(address))
            ?? throw new ContainerNetworkException(
                $"the address range {subnet} of bridge {bridgeName} is exhausted: all {taken.Count} container addresses are taken",
                "Remove stopped containers (nestor container rm), or run this one with --network none or host");
        leases.Add(new Entry(free, containerId));
        Write(leases);
        return free;
    }

    /// <summary>Gives <paramref name="containerId"/>'s address back; nothing if it holds none.</summary>
    public void Release(string containerId)
    {
        var leases = Read();
        if (leases.RemoveAll(lease => lease.ContainerId == containerId) > 0)
        {
            Write(leases);
        }
    }

    /// <summary>The current leases.</summary>
    public IReadOnlyList<(IPAddress Address, string ContainerId)> Leases => Read().Select(lease => (lease.Address, lease.ContainerId)).ToList();

    private List<Entry> Read()
    {
        if (!File.Exists(path))
        {
            return [];
        }
        var leases = new List<Entry>();
        foreach (string line in File.ReadAllLines(path))
        {
            string[] fields = line.Split(' ', 2, StringSplitOptions.TrimEntries);
            if (fields.Length == 2 && IPAddress.TryParse(fields[0], out var address))
            {
                leases.Add(new Entry(address, fields[1]));
            }
        }
        return leases;
    }

    /// <summary>Written to a temporary file and renamed over the old one, so that a crash never leaves half a file.</summary>
    private void Write(List<Entry> leases)
    {
        string temporary = path + ".new";
        File.WriteAllLines(temporary, leases.Select(lease => $"{lease.Address} {lease.ContainerId}"));
        File.Move(temporary, path, overwrite: true);
    }

    private sealed record Entry(IPAddress Address, string ContainerId);
}

/// <summary>An exclusive lock on a file (flock(2), which .NET takes for <see cref="FileShare.None"/>), held between
/// processes while the network's shared state (bridge, firewall table, leases) changes.</summary>
internal sealed class StateLock : IDisposable
{
    private readonly FileStream _stream;

    private StateLock(FileStream stream)
    {
        _stream = stream;
    }

    public static StateLock Acquire(string path, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                return new StateLock(new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None));
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
            catch (IOException e)
            {
                throw new ContainerNetworkException($"the network state lock {path} stayed taken for {timeout.TotalSeconds} s",
                    "Another nestor command is changing the network; try again, or remove the lock file if no nestor process is running", e);
            }
        }
    }

    public void Dispose() => _stream.Dispose();
}
