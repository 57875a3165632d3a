using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;

namespace Nestor.Hypervisor;

/// <summary>The host the VMs run on: it owns one <see cref="HostFramePool"/> from which every VM on it gets the host
/// frames behind its guest-physical memory and the VMM's tables, and each VM's P2M (<see cref="GuestPhysicalMap"/>),
/// so that guest frames of different VMs can share a host frame. The pool is made on first use (a VM that runs on KVM
/// never needs it). <see cref="Vm.Create(Configuration.VmConfig)"/> gives each VM a private host of its own.</summary>
public sealed class Host : IDisposable
{
    private readonly ulong physicalBytes;
    private readonly ulong tableBytes;
    private HostFramePool? framePool;
    private readonly List<Vm> vms = [];
    private readonly Dictionary<Vm, GuestPhysicalMap> physicalMaps = [];
    // A host of many VMs (Hosting/VirtualMachineHost) starts their runs on several threads at once.
    private readonly Lock gate = new();

    /// <param name="physicalBytes">Size of the host-physical address space the VMM hands frames out of.</param>
    /// <param name="tableBytes">How much of it the VMM may use for its nested and shadow page tables.</param>
    public Host(ulong physicalBytes, ulong tableBytes)
    {
        if (tableBytes >= physicalBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(tableBytes), "the tables must leave room for guest memory");
        }
        this.physicalBytes = physicalBytes;
        this.tableBytes = tableBytes;
    }

    /// <summary>A host sized for VMs with <paramref name="guestBytes"/> of guest RAM in all: room for all of it twice
    /// over (2 MiB-aligned runs for large nested pages can leave holes), and for the VMM's tables (half of guest RAM,
    /// at least 16 MiB).</summary>
    public static Host ForGuestMemory(ulong guestBytes)
    {
        ulong tables = Math.Max(16UL << 20, guestBytes / 2);
        return new Host(2 * guestBytes + tables + (4UL << 20), tables);
    }

    /// <summary>The one host frame pool of all VMs on this host.</summary>
    public HostFramePool FramePool
    {
        get
        {
            lock (gate)
            {
                return framePool ??= new HostFramePool(physicalBytes, tableBytes);
            }
        }
    }

    /// <summary>The VMs created on this host and not yet disposed.</summary>
    public IReadOnlyList<Vm> Vms => vms;

    /// <summary>The P2M of <paramref name="vm"/>'s current (or last) run under a VMM, while it is alive (not disposed
    /// with its engine, or because the engine ran another VM since).</summary>
    public GuestPhysicalMap? PhysicalMapOf(Vm vm)
    {
        lock (gate)
        {
            return physicalMaps.TryGetValue(vm, out var map) && !map.IsDisposed ? map : null;
        }
    }

    /// <summary>A new P2M for a run of <paramref name="vm"/> under a VMM; the one of its previous run gives its frames
    /// and tables back first.</summary>
    public GuestPhysicalMap NewPhysicalMap(Vm vm)
    {
        lock (gate)
        {
            if (!vms.Contains(vm))
            {
                throw new ArgumentException("the VM was not created on this host", nameof(vm));
            }
            physicalMaps.GetValueOrDefault(vm)?.Dispose();
            var map = new GuestPhysicalMap(vm.Memory, FramePool);
            physicalMaps[vm] = map;
            return map;
        }
    }

    internal void Add(Vm vm)
    {
        lock (gate)
        {
            vms.Add(vm);
        }
    }

    /// <summary>The VM is going: its frames go back to the pool.</summary>
    internal void Remove(Vm vm)
    {
        lock (gate)
        {
            if (physicalMaps.Remove(vm, out var map))
            {
                map.Dispose();
            }
            vms.Remove(vm);
        }
    }

    /// <summary>Releases the pool's memory (after the VMs on the host are disposed).</summary>
    public void Dispose()
    {
        foreach (var map in physicalMaps.Values)
        {
            map.Dispose();
        }
        physicalMaps.Clear();
        framePool?.Dispose();
        framePool = null;
    }
}
