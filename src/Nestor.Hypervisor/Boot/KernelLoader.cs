using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Boot;

/// <summary>A range of guest memory holding code or data loaded from the kernel file.</summary>
public sealed record LoadedRange(GuestPhysical Start, ulong Length, bool Executable, ReadOnlyMemory<byte> Bytes)
{
    public GuestPhysical End => Start + Length;
}

/// <summary>A kernel placed in guest memory: where it lies and where to enter it.</summary>
public sealed record LoadedKernel(GuestPhysical Entry, GuestPhysical ImageStart, GuestPhysical ImageEnd, IReadOnlyList<LoadedRange> Ranges);

/// <summary>Places a kernel image (ELF64 or raw code) in guest RAM, refusing anything that would not fit or would
/// overwrite the boot structures.</summary>
public static class KernelLoader
{
    /// <summary>Loads <paramref name="source"/> into <paramref name="memory"/>.</summary>
    /// <exception cref="BadInputException">The image is malformed or does not fit.</exception>
    public static LoadedKernel Load(KernelImageSource source, GuestMemory memory)
    {
        return source.Format switch
        {
            KernelFormat.Flat => LoadFlat(source, memory),
            _ => LoadElf(source, memory),
        };
    }

    private static LoadedKernel LoadFlat(KernelImageSource source, GuestMemory memory)
    {
        var start = source.LoadAddress ?? GuestMemoryLayout.DefaultFlatLoadAddress;
        CheckPlacement(source.Name, "the code", start, (ulong)source.Contents.Length, memory);
        memory.Write(start, source.Contents);
        var range = new LoadedRange(start, (ulong)source.Contents.Length, true, source.Contents);
        return new LoadedKernel(start, start, range.End, [range]);
    }

    private static LoadedKernel LoadElf(KernelImageSource source, GuestMemory memory)
    {
        if (source.LoadAddress is not null)
        {
            throw new BadInputException("--load-addr applies to raw code (--flat) only; an ELF file says where it loads",
                "Drop --load-addr, or add --flat to load the file as raw code");
        }
        var elf = ElfImage.Parse(source.Contents, source.Name);
        var ranges = new List<LoadedRange>();
        bool entryInside = false;
        for (int i = 0; i < elf.Segments.Count; i++)
        {
            var s = elf.Segments[i];
            var start = new GuestPhysical(s.PhysicalAddress);
            CheckPlacement(source.Name, $"segment {i}", start, s.MemorySize, memory);
            for (int j = 0; j < ranges.Count; j++)
            {
                if (start < ranges[j].End && ranges[j].Start < start + s.MemorySize)
                {
                    throw new BadInputException($"'{source.Name}' segments {j} and {i} overlap in physical memory",
                        "Fix the linker script");
                }
            }
            var bytes = source.Contents.AsMemory((int)s.FileOffset, (int)s.FileSize);
            memory.Write(start, bytes.Span);
            ClearBss(memory, start + s.FileSize, s.MemorySize - s.FileSize);
            ranges.Add(new LoadedRange(start, s.MemorySize, s.Executable, bytes));
            if (elf.Entry >= s.PhysicalAddress && elf.Entry - s.PhysicalAddress < s.MemorySize && s.Executable)
            {
                entryInside = true;
            }
        }
        if (!entryInside)
        {
            bool virtualOnly = elf.Segments.Any(s => elf.Entry >= s.VirtualAddress && elf.Entry - s.VirtualAddress < s.MemorySize);
            throw new BadInputException(
                virtualOnly
                    ? $"'{source.Name}' enters at 0x{elf.Entry:x}, a virtual address whose segment is loaded elsewhere in physical memory; " +
                      "the Nestor boot protocol enters at e_entry with only an identity map"
                    : $"'{source.Name}' enters at 0x{elf.Entry:x}, which is not inside any executable loaded segment",
                "Link the 64-bit entry point at its physical address (identity-mapped), see docs/boot-protocol.md");
        }
        var first = ranges.Min(r => r.Start);
        var last = ranges.Max(r => r.End);
        return new LoadedKernel(new GuestPhysical(elf.Entry), first, last, ranges);
    }

    private static void ClearBss(GuestMemory memory, GuestPhysical start, ulong length)
    {
        // Fresh anonymous memory is already zero; clear anyway so that loading is correct on reused memory too.
        while (length > 0)
        {
            int chunk = (int)Math.Min(length, 1 << 20);
            memory.Span(start, chunk).Clear();
            start += (ulong)chunk;
            length -= (ulong)chunk;
        }
    }

    private static void CheckPlacement(string name, string what, GuestPhysical start, ulong length, GuestMemory memory)
    {
        if (start < GuestMemoryLayout.BootDataEnd)
        {
            throw new BadInputException(
                $"'{name}': {what} would load at 0x{start.Value:x}, inside the boot structures [0, 0x{GuestMemoryLayout.BootDataEnd.Value:x})",
                $"Load kernels at or above 0x{GuestMemoryLayout.BootDataEnd.Value:x} (0x100000 is usual), see docs/boot-protocol.md");
        }
        if (!memory.IsRam(start, Math.Max(length, 1)))
        {
            throw new BadInputException(
                $"'{name}': {what} (0x{start.Value:x}..0x{start.Value + length:x}, {Size.Format(length)}) does not fit in guest RAM ({Size.Format(memory.Size)})",
                "Give the VM more memory with --memory, or load the kernel lower");
        }
    }
}
