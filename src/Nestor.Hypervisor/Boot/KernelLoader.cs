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
        }
        CheckEntry(source.Name, elf);
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

    /// <summary>e_entry must be a physical address inside an executable segment: at entry only the identity map
    /// exists, and the code there must be what the kernel linked as code.</summary>
    private static void CheckEntry(string name, ElfImage elf)
    {
        static bool Inside(ulong address, ulong start, ulong length) => address >= start && address - start < length;
        const string Advice = "Link the 64-bit entry point at its physical address (identity-mapped), see docs/boot-protocol.md";
        for (int i = 0; i < elf.Segments.Count; i++)
        {
            var s = elf.Segments[i];
            if (Inside(elf.Entry, s.PhysicalAddress, s.MemorySize))
            {
                if (s.Executable)
                {
                    return;
                }
                throw new BadInputException(
                    $"'{name}' enters at 0x{elf.Entry:x}, inside segment {i} (0x{s.PhysicalAddress:x}..0x{s.PhysicalAddress + s.MemorySize:x}), " +
                    "which is not executable: its p_flags lack PF_X",
                    "Put the entry point in the code segment (check the linker script: the entry symbol's section, PHDRS flags)");
            }
        }
        for (int i = 0; i < elf.Segments.Count; i++)
        {
            var s = elf.Segments[i];
            if (Inside(elf.Entry, s.VirtualAddress, s.MemorySize))
            {
                throw new BadInputException(
                    $"'{name}' enters at 0x{elf.Entry:x}, a virtual address of segment {i}, which is loaded at physical 0x{s.PhysicalAddress:x} " +
                    $"(p_vaddr 0x{s.VirtualAddress:x}); the Nestor boot protocol enters at e_entry with only an identity map",
                    Advice);
            }
        }
        throw new BadInputException($"'{name}' enters at 0x{elf.Entry:x}, which is not inside any loaded segment", Advice);
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
            var (why, advice) = WhyNotRam(start.Value, Math.Max(length, 1), memory);
            throw new BadInputException(
                $"'{name}': {what} ({Range(start.Value, length)}, {Size.Format(length)}) does not fit in guest RAM ({Size.Format(memory.Size)}): {why}",
                advice);
        }
    }

    /// <summary>[start, start + length) for messages; a range whose end passes 2^64 is said to wrap, not printed
    /// as an end below its start.</summary>
    internal static string Range(ulong start, ulong length)
    {
        ulong end = unchecked(start + length);
        if (length == 0 || end > start)
        {
            return $"0x{start:x}..0x{end:x}";
        }
        return end == 0
            ? $"0x{start:x}..0x10000000000000000 (the very top of the address space)"
            : $"0x{start:x} + 0x{length:x} bytes, which wraps around 2^64";
    }

    /// <summary>Why [start, start + length) is not guest RAM, and what would make it RAM: more --memory only helps
    /// below the device hole or above 4 GiB, and only up to the largest guest.</summary>
    internal static (string Why, string Advice) WhyNotRam(ulong start, ulong length, GuestMemory memory)
    {
        ulong end = unchecked(start + length);
        const ulong hole = GuestMemoryLayout.MmioHoleStart, high = GuestMemoryLayout.HighRamStart;
        if (end < start || (end == 0 && length > 0))
        {
            return ("it wraps around the end of the 64-bit address space", "Load it lower (0x100000 is usual)");
        }
        if (start < high && end > hole)
        {
            return ($"it lies in the device hole [0x{hole:x}, 0x{high:x}) below 4 GiB, where guest-physical addresses are MMIO and never RAM, whatever --memory says",
                $"Load it below 0x{hole:x} (3 GiB; 0x100000 is usual), or at or above 0x{high:x} with more than 3 GiB of --memory");
        }
        // The guest RAM size that would make the whole range RAM (RAM past 3 GiB continues at 4 GiB).
        ulong needed = end <= hole ? end : hole + (end - high);
        ulong largestEnd = high + (VmConfig.MaximumMemory - hole);
        if (needed > VmConfig.MaximumMemory)
        {
            return ($"it ends beyond the RAM of the largest guest ({Size.Format(VmConfig.MaximumMemory)}, whose RAM ends at 0x{largestEnd:x})",
                "Load it lower (0x100000 is usual)");
        }
        ulong megabytes = (needed + (1UL << 20) - 1) >> 20;
        return ($"it needs at least {Size.Format(megabytes << 20)} of guest RAM",
            $"Give the VM more memory (--memory {megabytes}M or more), or load the kernel lower");
    }
}
