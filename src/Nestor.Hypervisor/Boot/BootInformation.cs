using System.Text;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Boot;

/// <summary>Type of a boot memory-map entry.</summary>
public enum MemoryMapType : uint
{
    /// <summary>Free RAM the kernel may use.</summary>
    Usable = 1,
    /// <summary>Boot data (GDT, TSS, this block, page tables, stack): usable once the kernel no longer needs it.</summary>
    BootData = 2,
    /// <summary>The kernel image itself.</summary>
    Kernel = 3,
    /// <summary>Never to be used (page 0).</summary>
    Reserved = 4,
}

/// <summary>One entry of the boot memory map.</summary>
public readonly record struct MemoryMapEntry(GuestPhysical Base, ulong Length, MemoryMapType Type);

/// <summary>The boot-information block of the Nestor boot protocol, whose guest-physical address the kernel receives
/// in RDI (layout in docs/boot-protocol.md).</summary>
public static class BootInformation
{
    /// <summary>The first 8 bytes of the block: ASCII "NESTORBI".</summary>
    public const ulong Magic = 0x4942_524F_5453_454E; // "NESTORBI" read as a little-endian u64

    public const uint Version = 1;

    /// <summary>Size of the fixed header; memory-map entries follow it.</summary>
    public const int HeaderSize = 0x40;

    public const int EntrySize = 24;

    /// <summary>Builds the memory map for a VM: RAM regions split into reserved, boot-data, kernel and usable parts.</summary>
    public static IReadOnlyList<MemoryMapEntry> BuildMemoryMap(ulong memoryBytes, GuestPhysical kernelStart, GuestPhysical kernelEnd)
    {
        // Marked ranges, in address order; everything else inside RAM is usable.
        (ulong Start, ulong End, MemoryMapType Type)[] marks =
        [
            (0, 0x1000, MemoryMapType.Reserved),
            (GuestMemoryLayout.BootGdt.Value, GuestMemoryLayout.BootDataEnd.Value, MemoryMapType.BootData),
            (kernelStart.Value & ~0xFFFUL, (kernelEnd.Value + 0xFFF) & ~0xFFFUL, MemoryMapType.Kernel),
        ];
        var map = new List<MemoryMapEntry>();
        foreach (var region in GuestMemoryLayout.RamRegions(memoryBytes))
        {
            ulong cursor = region.Start.Value;
            ulong end = region.End.Value;
            foreach (var (mStart, mEnd, type) in marks)
            {
                ulong s = Math.Max(mStart, cursor);
                ulong e = Math.Min(mEnd, end);
                if (s >= e)
                {
                    continue;
                }
                if (s > cursor)
                {
                    map.Add(new MemoryMapEntry(new GuestPhysical(cursor), s - cursor, MemoryMapType.Usable));
                }
                map.Add(new MemoryMapEntry(new GuestPhysical(s), e - s, type));
                cursor = e;
            }
            if (cursor < end)
            {
                map.Add(new MemoryMapEntry(new GuestPhysical(cursor), end - cursor, MemoryMapType.Usable));
            }
        }
        return map;
    }

    /// <summary>Writes the block and the command line into guest memory; returns the block's address.</summary>
    public static GuestPhysical Write(GuestMemory memory, string commandLine, LoadedKernel kernel)
    {
        byte[] command = Encoding.UTF8.GetBytes(commandLine);
        if (command.Length > GuestMemoryLayout.MaximumCommandLineBytes)
        {
            throw new BadInputException(
                $"the kernel command line is {command.Length} bytes; at most {GuestMemoryLayout.MaximumCommandLineBytes} fit",
                "Shorten --cmdline");
        }
        if (Array.IndexOf(command, (byte)0) >= 0)
        {
            throw new BadInputException("the kernel command line contains a NUL character", "Remove it from --cmdline");
        }
        var map = BuildMemoryMap(memory.Size, kernel.ImageStart, kernel.ImageEnd);
        var block = GuestMemoryLayout.BootInformation;
        int size = HeaderSize + map.Count * EntrySize;
        if (block.Value + (ulong)size > GuestMemoryLayout.CommandLine.Value)
        {
            throw new InvalidOperationException("boot memory map does not fit its page");
        }
        Span<byte> b = memory.Span(block, size);
        b.Clear();
        BitConverter.TryWriteBytes(b[0x00..], Magic);
        BitConverter.TryWriteBytes(b[0x08..], Version);
        BitConverter.TryWriteBytes(b[0x0C..], (uint)size);
        BitConverter.TryWriteBytes(b[0x10..], memory.Size);
        BitConverter.TryWriteBytes(b[0x18..], GuestMemoryLayout.CommandLine.Value);
        BitConverter.TryWriteBytes(b[0x20..], (uint)command.Length);
        BitConverter.TryWriteBytes(b[0x24..], (uint)map.Count);
        BitConverter.TryWriteBytes(b[0x28..], block.Value + HeaderSize);
        BitConverter.TryWriteBytes(b[0x30..], kernel.ImageStart.Value);
        BitConverter.TryWriteBytes(b[0x38..], kernel.ImageEnd.Value);
        for (int i = 0; i < map.Count; i++)
        {
            var e = b.Slice(HeaderSize + i * EntrySize, EntrySize);
            BitConverter.TryWriteBytes(e, map[i].Base.Value);
            BitConverter.TryWriteBytes(e[8..], map[i].Length);
            BitConverter.TryWriteBytes(e[16..], (uint)map[i].Type);
        }
        var line = memory.Span(GuestMemoryLayout.CommandLine, command.Length + 1);
        command.CopyTo(line);
        line[^1] = 0;
        return block;
    }
}
