using Nestor.Hypervisor.Configuration;

namespace Nestor.Hypervisor.Hosting;

/// <summary>ESX's admission control (vSphere resource-management guide, "Admission Control"): a VM powers on only if
/// its memory reservation (min) plus its virtualization overhead fits in the host memory not yet reserved, the part of
/// its memory that is not reserved (max − min) fits in the host swap not yet promised (so that every admitted VM can
/// always be given its max, in RAM or in swap), and its CPU reservation fits in the host CPU not yet reserved.
/// Refused VMs take nothing; the VMs after them are still considered.</summary>
public sealed class AdmissionControl(ulong hostMemory, ulong hostSwap, int hostCpus)
{
    /// <summary>The per-VM overhead charged at admission: 4 MiB for the VMM's own structures and devices, 1 MiB per
    /// vCPU, and 1/256 of the guest's memory for its P2M and the nested or shadow tables (eight bytes per 4 KiB page
    /// for each of two tables).</summary>
    public static ulong OverheadBytes(ulong maxBytes, int vcpus) => (4UL << 20) + ((ulong)vcpus << 20) + maxBytes / 256;

    /// <summary>Host memory reserved by admitted VMs (their min plus overhead).</summary>
    public ulong ReservedMemory { get; private set; }

    /// <summary>Host swap promised to admitted VMs (their max − min).</summary>
    public ulong ReservedSwap { get; private set; }

    /// <summary>Host CPU reserved by admitted VMs, in percent of one CPU.</summary>
    public double ReservedCpuPercent { get; private set; }

    /// <summary>Host memory, swap and CPU capacity.</summary>
    public (ulong Memory, ulong Swap, double CpuPercent) Capacity => (hostMemory, hostSwap, hostCpus * 100.0);

    /// <summary>Admits <paramref name="vm"/> (and reserves what it needs) or says why not, naming the shortfall.</summary>
    /// <returns>Null when admitted, else the refusal.</returns>
    public string? TryAdmit(HostedVmSpec vm)
    {
        ulong overhead = OverheadBytes(vm.Memory.MaxBytes, vm.VcpuCount);
        ulong memoryNeeded = vm.Memory.MinBytes + overhead;
        ulong memoryFree = hostMemory - ReservedMemory;
        ulong swapNeeded = vm.Memory.MaxBytes - vm.Memory.MinBytes;
        ulong swapFree = hostSwap - ReservedSwap;
        double cpuFree = hostCpus * 100.0 - ReservedCpuPercent;
        if (memoryNeeded > memoryFree)
        {
            return $"its memory reservation {Mib(vm.Memory.MinBytes)} + overhead {Mib(overhead)} = {Mib(memoryNeeded)} does not fit in " +
                   $"the {Mib(memoryFree)} of host memory not yet reserved: {Mib(memoryNeeded - memoryFree)} short";
        }
        if (swapNeeded > swapFree)
        {
            return $"its unreserved memory (max − min = {Mib(swapNeeded)}) does not fit in the {Mib(swapFree)} of host swap not yet " +
                   $"promised: {Mib(swapNeeded - swapFree)} short";
        }
        if (vm.Cpu.ReservationPercent > cpuFree + 1e-9)
        {
            return $"its CPU reservation of {vm.Cpu.ReservationPercent:0.#}% does not fit in the {cpuFree:0.#}% of host CPU " +
                   $"not yet reserved: {vm.Cpu.ReservationPercent - cpuFree:0.#} points short";
        }
        ReservedMemory += memoryNeeded;
        ReservedSwap += swapNeeded;
        ReservedCpuPercent += vm.Cpu.ReservationPercent;
        return null;
    }

    /// <summary>An admitted VM ended: what it reserved is free again.</summary>
    public void Release(HostedVmSpec vm)
    {
        ReservedMemory -= vm.Memory.MinBytes + OverheadBytes(vm.Memory.MaxBytes, vm.VcpuCount);
        ReservedSwap -= vm.Memory.MaxBytes - vm.Memory.MinBytes;
        ReservedCpuPercent -= vm.Cpu.ReservationPercent;
    }

    private static string Mib(ulong bytes) => $"{bytes / (1024.0 * 1024):0.#} MiB";
}
