using System.Runtime.CompilerServices;

namespace Nestor.Machine.Memory;

/// <summary>The machine's physical address space as a frame table: each 4 KiB physical frame is either backed by a
/// page of host memory the caller owns, or is not RAM. For a VM on the bare machine the frames are the guest's RAM
/// regions; under a hypervisor they are the host's frames, which the VMM maps one by one as it hands them to VMs or
/// uses them for its own tables (so guest-physical and host-physical addresses differ, as on real hardware).
/// Accesses outside RAM are not memory: the CPU model routes them to devices; page-table walkers that read outside
/// RAM see all ones (an open bus), which sets reserved bits and faults.</summary>
public sealed unsafe class PhysicalMemory
{
    private const int FrameShift = 12;
    private const ulong FrameSize = 1UL << FrameShift;

    private nint[] frames;

    /// <summary>Host-physical addresses with this bit (bit 51, the top of the 52-bit physical-address width) set are
    /// the VMM's device window: a nested or shadow page-table entry that points there maps a guest-physical page that
    /// is not RAM, and the CPU model sends an access to it to the device at the guest-physical address in the low bits
    /// (where VT-x would take an EPT-misconfiguration exit for the VMM to emulate the access).</summary>
    public const ulong DeviceWindow = 1UL << 51;

    /// <summary>Host-physical addresses with this bit (bit 50) set, beside <see cref="DeviceWindow"/>, are the assigned
    /// window: device memory the VMM maps into the guest (the registers of a device assigned to the VM), which the CPU
    /// model sends to the device at the guest-physical address in the low bits without a VM exit
    /// (<see cref="Processor.IPlatform.DirectDeviceRead"/>), as EPT maps a VFIO device's BAR straight to the device.</summary>
    public const ulong AssignedWindow = 1UL << 50;

    /// <summary>Creates the address space from (start, length, host pointer) triples (page-aligned); the pointers must
    /// stay valid and pinned for the life of this object.</summary>
    public PhysicalMemory(IEnumerable<(ulong Start, ulong Length, nint Host)> ram)
    {
        var regions = ram.ToArray();
        ulong top = regions.Length == 0 ? 0 : regions.Max(r => r.Start + r.Length);
        frames = new nint[(top + FrameSize - 1) >> FrameShift];
        foreach (var (start, length, host) in regions)
        {
            if ((start & (FrameSize - 1)) != 0 || (length & (FrameSize - 1)) != 0)
            {
                throw new ArgumentException($"RAM region at 0x{start:x} of 0x{length:x} bytes is not page-aligned");
            }
            for (ulong offset = 0; offset < length; offset += FrameSize)
            {
                frames[(start + offset) >> FrameShift] = host + (nint)offset;
            }
            Size += length;
        }
    }

    /// <summary>An address space of <paramref name="bytes"/> with no RAM yet: frames are added by <see cref="Map"/>.</summary>
    public PhysicalMemory(ulong bytes)
    {
        frames = new nint[(bytes + FrameSize - 1) >> FrameShift];
    }

    /// <summary>Total RAM in bytes.</summary>
    public ulong Size { get; private set; }

    /// <summary>The end of the address space the frame table covers.</summary>
    public ulong Limit => (ulong)frames.Length << FrameShift;

    /// <summary>Makes frame <paramref name="physical"/> (page-aligned) RAM backed by the 4 KiB of host memory at
    /// <paramref name="host"/>, which must stay valid while mapped.</summary>
    public void Map(ulong physical, nint host)
    {
        ulong frame = physical >> FrameShift;
        if (frame >= (ulong)frames.Length)
        {
            Array.Resize(ref frames, (int)Math.Max(frame + 1, (ulong)frames.Length * 2));
        }
        if (frames[frame] == 0)
        {
            Size += FrameSize;
        }
        frames[frame] = host;
    }

    /// <summary>Frame <paramref name="physical"/> is no longer RAM.</summary>
    public void Unmap(ulong physical)
    {
        ulong frame = physical >> FrameShift;
        if (frame < (ulong)frames.Length && frames[frame] != 0)
        {
            frames[frame] = 0;
            Size -= FrameSize;
        }
    }

    /// <summary>Whether the frame holding <paramref name="physical"/> is RAM.</summary>
    public bool IsRam(ulong physical) => Pointer(physical & ~(FrameSize - 1), 1) != null;

    /// <summary>The host address of <paramref name="physical"/> when [physical, physical + length) is RAM backed by
    /// contiguous host memory, else null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte* Pointer(ulong physical, int length)
    {
        ulong frame = physical >> FrameShift;
        if (frame >= (ulong)frames.Length)
        {
            return null;
        }
        nint host = frames[frame];
        if (host == 0)
        {
            return null;
        }
        ulong offset = physical & (FrameSize - 1);
        if (offset + (ulong)length > FrameSize && !Contiguous(frame, offset + (ulong)length, host))
        {
            return null;
        }
        return (byte*)host + offset;
    }

    /// <summary>Whether the frames after <paramref name="frame"/> covering <paramref name="end"/> bytes from its start
    /// follow it in host memory too.</summary>
    private bool Contiguous(ulong frame, ulong end, nint host)
    {
        ulong count = (end + FrameSize - 1) >> FrameShift;
        for (ulong i = 1; i < count; i++)
        {
            if (frame + i >= (ulong)frames.Length || frames[frame + i] != host + (nint)(i * FrameSize))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Reads an aligned 64-bit value; all ones outside RAM.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong ReadUInt64(ulong physical)
    {
        byte* p = Pointer(physical, 8);
        return p == null ? ulong.MaxValue : Unsafe.ReadUnaligned<ulong>(p);
    }

    /// <summary>Writes a 64-bit value; ignored outside RAM.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WriteUInt64(ulong physical, ulong value)
    {
        byte* p = Pointer(physical, 8);
        if (p != null)
        {
            Unsafe.WriteUnaligned(p, value);
        }
    }
}
