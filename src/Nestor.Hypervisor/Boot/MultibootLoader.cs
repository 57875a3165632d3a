using System.Buffers.Binary;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.State;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;

namespace Nestor.Hypervisor.Boot;

/// <summary>A Multiboot module (<c>--module FILE[,cmdline]</c>, QEMU's <c>-initrd</c>): a file the loader places
/// in RAM beside the kernel and lists in the information structure (Multiboot 0.6.96 §3.3, <c>mods_*</c>).</summary>
/// <param name="Name">The file's name, the first word of the module's string as loaders give it.</param>
/// <param name="Contents">The file's bytes.</param>
/// <param name="CommandLine">What follows the name in the module's string (may be empty).</param>
public sealed record MultibootModule(string Name, byte[] Contents, string CommandLine = "")
{
    /// <summary>Reads the module a <c>--module FILE[,cmdline]</c> value names: everything before the first comma
    /// is the file, everything after it the module's command line. The file is read as a kernel file is (a
    /// regular file only, at most <paramref name="maximumBytes"/>).</summary>
    /// <exception cref="BadInputException">The value is empty or the file cannot be read.</exception>
    public static MultibootModule FromOption(string value, ulong maximumBytes)
    {
        int comma = value.IndexOf(',', StringComparison.Ordinal);
        string path = comma < 0 ? value : value[..comma];
        string arguments = comma < 0 ? "" : value[(comma + 1)..];
        if (path.Length == 0)
        {
            throw new BadInputException($"--module '{value}' names no file", "Give --module FILE or --module FILE,cmdline");
        }
        try
        {
            var file = KernelImageSource.FromFile(path, KernelFormat.Flat, maximumBytes: maximumBytes);
            return new MultibootModule(path, file.Contents, arguments);
        }
        catch (BadInputException e)
        {
            // The file checks are the kernel file's; say which file it was.
            throw new BadInputException(e.Message.Replace("kernel file", "module file", StringComparison.Ordinal),
                e.Advice?.Replace("kernel", "module", StringComparison.Ordinal), e);
        }
    }
}

/// <summary>A kernel booted by <see cref="MultibootLoader"/>: the kernel as loaded, the 32-bit entry state, where
/// the information structure is, and where each module went.</summary>
public sealed record MultibootBoot(LoadedKernel Kernel, VcpuState State, GuestPhysical Information, IReadOnlyList<LoadedRange> Modules);

/// <summary>Boots a kernel the way a Multiboot v1 loader does, QEMU's <c>-kernel</c> and GRUB alike (Multiboot
/// Specification 0.6.96, §3.1 header, §3.2 machine state, §3.3 boot information). The kernel is loaded by its
/// header's a.out-kludge addresses when flag bit 16 asks for them, otherwise by the program headers of its ELF32 or
/// ELF64 file, anywhere the firmware memory map (<see cref="FirmwareMemoryMap"/>) calls RAM, below 1 MiB too. Then
/// the modules, the information structure (memory size, memory map, command line, modules, boot loader name) and a
/// boot GDT are placed high in the RAM left below 4 GiB, and the vCPU starts in flat 32-bit protected mode with
/// paging off, EAX = 0x2BADB002 and EBX = the information structure. Used by the software machine, whose CPU models
/// 32-bit protected mode and the switch into long mode.</summary>
public static class MultibootLoader
{
    public const uint HeaderMagic = 0x1BADB002;
    public const uint BootloaderMagic = 0x2BADB002;

    /// <summary>The name in <c>boot_loader_name</c> (§3.3, flag 9).</summary>
    public const string BootLoaderName = "Nestor";

    // Header flags, §3.1.2. Bits 0-15 are requirements a loader must meet or refuse the kernel; 16-31 optional.
    private const uint PageAlignModules = 1u << 0, MemoryInformation = 1u << 1, VideoMode = 1u << 2, AoutKludge = 1u << 16;
    private const uint KnownRequirements = PageAlignModules | MemoryInformation | VideoMode;

    // Information-structure flags, §3.3.
    private const uint HasMemory = 1u << 0, HasCommandLine = 1u << 2, HasModules = 1u << 3, HasMemoryMap = 1u << 6, HasBootLoaderName = 1u << 9;

    /// <summary>Size of the information structure up to and including the VBE fields (§3.3).</summary>
    public const int InformationSize = 88;

    private const int MemoryMapEntrySize = 24, ModuleEntrySize = 16, GdtSize = 24;

    /// <summary>The offset of a valid Multiboot header in the first 8 KiB of <paramref name="file"/>, or -1.</summary>
    public static int FindHeader(ReadOnlySpan<byte> file)
    {
        for (int offset = 0; offset + 12 <= Math.Min(file.Length, 8192); offset += 4)
        {
            uint magic = BinaryPrimitives.ReadUInt32LittleEndian(file[offset..]);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(file[(offset + 4)..]);
            uint checksum = BinaryPrimitives.ReadUInt32LittleEndian(file[(offset + 8)..]);
            if (magic == HeaderMagic && magic + flags + checksum == 0)
            {
                return offset;
            }
        }
        return -1;
    }

    /// <summary>Loads the kernel and its modules, writes the information structure and returns the 32-bit entry
    /// state.</summary>
    /// <param name="diagnostics">Where warnings go (a header flag that is ignored).</param>
    /// <exception cref="BadInputException">No header, a requirement Nestor cannot meet, a malformed ELF file, a
    /// segment outside RAM or in a reserved range, or no room left for the modules.</exception>
    public static MultibootBoot Load(KernelImageSource source, GuestMemory memory, string commandLine,
        IReadOnlyList<MultibootModule>? modules = null, TextWriter? diagnostics = null)
    {
        modules ??= [];
        ReadOnlySpan<byte> file = source.Contents;
        int header = FindHeader(file);
        if (header < 0)
        {
            throw new BadInputException($"'{source.Name}' has no Multiboot header in its first 8 KiB",
                "Boot it by the Nestor boot protocol (without --multiboot), or add a Multiboot v1 header");
        }
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(file[(header + 4)..]);
        if ((flags & 0xFFFF & ~KnownRequirements) != 0)
        {
            throw new BadInputException(
                $"'{source.Name}': its Multiboot header asks for requirement bits 0x{flags & 0xFFFF & ~KnownRequirements:x} (flags 0x{flags:x}), which Multiboot 0.6.96 does not define; a loader must refuse what it does not understand (§3.1.2)",
                "Clear those bits in the kernel's Multiboot header");
        }
        if ((flags & VideoMode) != 0)
        {
            // As QEMU does: there is no graphics adapter to set a mode on; the information structure says so by
            // leaving its VBE and framebuffer flags (11, 12) clear.
            diagnostics?.WriteLine($"nestor: '{source.Name}' asks for a video mode (Multiboot header flag 2); ignored, as QEMU does: the VM has no display and the information structure has no video fields");
        }
        var map = FirmwareMemoryMap.Build(memory.Size);
        var ranges = (flags & AoutKludge) != 0
            ? LoadKludge(source, file, header, memory, map, out ulong entry)
            : LoadElf(source, file, memory, map, out entry);
        var placement = new BootPlacement(map);
        foreach (var range in ranges)
        {
            placement.Occupy(range.Start.Value & ~0xFFFUL, (range.End.Value + 0xFFF) & ~0xFFFUL);
        }
        var loadedModules = PlaceModules(modules, memory, placement);
        var kernel = new LoadedKernel(new GuestPhysical(entry), ranges.Min(r => r.Start), ranges.Max(r => r.End), ranges);
        var (information, gdt) = WriteInformation(memory, placement, map, source.Name, commandLine, modules, loadedModules);
        return new MultibootBoot(kernel, EntryState(memory, entry, information, gdt), information, loadedModules);
    }

    /// <summary>§3.1.3: header_addr is where the header itself lands, so the file from <c>header - (header_addr -
    /// load_addr)</c> goes to load_addr, up to load_end_addr (0: the end of the file), then zeros to bss_end_addr
    /// (0: none).</summary>
    private static List<LoadedRange> LoadKludge(KernelImageSource source, ReadOnlySpan<byte> file, int header, GuestMemory memory,
        IReadOnlyList<FirmwareMemoryRange> map, out ulong entry)
    {
        if (header + 32 > file.Length)
        {
            throw new BadInputException($"'{source.Name}': its Multiboot header sets the a.out kludge (flag bit 16) but the file ends inside the address fields",
                "Rebuild the kernel");
        }
        uint headerAddress = Field(file, header, 12), loadAddress = Field(file, header, 16);
        uint loadEnd = Field(file, header, 20), bssEnd = Field(file, header, 24);
        entry = Field(file, header, 28);
        long fileStart = header - (long)headerAddress + loadAddress;
        long length = loadEnd == 0 ? file.Length - fileStart : (long)loadEnd - loadAddress;
        if (loadAddress > headerAddress || fileStart < 0 || length <= 0 || fileStart + length > file.Length)
        {
            throw new BadInputException(
                $"'{source.Name}': its Multiboot load addresses (header_addr 0x{headerAddress:x}, load_addr 0x{loadAddress:x}, load_end_addr 0x{loadEnd:x}) do not match the file ({file.Length} bytes, header at offset 0x{header:x})",
                "Rebuild the kernel: load_addr ≤ header_addr, and load_end_addr within the file");
        }
        ulong end = Math.Max(loadAddress + (ulong)length, bssEnd);
        CheckPlacement(source.Name, "the image", loadAddress, end - loadAddress, memory, map);
        if (entry < loadAddress || entry >= end)
        {
            throw new BadInputException($"'{source.Name}': its Multiboot entry_addr 0x{entry:x} is outside the image it loads (0x{loadAddress:x}..0x{end:x})",
                "Set entry_addr to the kernel's 32-bit entry point");
        }
        var bytes = source.Contents.AsMemory((int)fileStart, (int)length);
        memory.Write(new GuestPhysical(loadAddress), bytes.Span);
        Clear(memory, loadAddress + (ulong)length, end - loadAddress - (ulong)length);
        return [new LoadedRange(new GuestPhysical(loadAddress), end - loadAddress, true, bytes)];
    }

    /// <summary>§3.1.3 without the kludge: the ELF program headers say where each segment goes.</summary>
    private static List<LoadedRange> LoadElf(KernelImageSource source, ReadOnlySpan<byte> file, GuestMemory memory,
        IReadOnlyList<FirmwareMemoryRange> map, out ulong entry)
    {
        if (!MultibootElf.IsElf(file))
        {
            throw new BadInputException(
                $"'{source.Name}' is not an ELF file and its Multiboot header has no load addresses (the a.out kludge, flag bit 16)",
                "Give an ELF32 or ELF64 Multiboot kernel, or set flag bit 16 and the header's address fields");
        }
        var (elfEntry, segments) = MultibootElf.Parse(file, source.Name);
        var ranges = new List<LoadedRange>();
        for (int i = 0; i < segments.Count; i++)
        {
            var s = segments[i];
            CheckPlacement(source.Name, $"segment {i}", s.PhysicalAddress, s.MemorySize, memory, map);
            for (int j = 0; j < ranges.Count; j++)
            {
                if (s.PhysicalAddress < ranges[j].End.Value && ranges[j].Start.Value < s.PhysicalAddress + s.MemorySize)
                {
                    throw new BadInputException($"'{source.Name}': its loadable segments overlap in physical memory (0x{ranges[j].Start.Value:x}..0x{ranges[j].End.Value:x} and {KernelLoader.Range(s.PhysicalAddress, s.MemorySize)})",
                        "Fix the linker script");
                }
            }
            var bytes = source.Contents.AsMemory((int)s.FileOffset, (int)s.FileSize);
            memory.Write(new GuestPhysical(s.PhysicalAddress), bytes.Span);
            Clear(memory, s.PhysicalAddress + s.FileSize, s.MemorySize - s.FileSize);
            ranges.Add(new LoadedRange(new GuestPhysical(s.PhysicalAddress), s.MemorySize, s.Executable, bytes));
        }
        entry = PhysicalEntry(source.Name, elfEntry, segments);
        return ranges;
    }

    /// <summary>e_entry as the CPU, paging off, must see it: a physical address inside a segment as is, or a
    /// virtual address inside a segment loaded elsewhere translated to where it was loaded (as GRUB does).</summary>
    private static ulong PhysicalEntry(string name, ulong entry, List<ElfSegment> segments)
    {
        foreach (var s in segments)
        {
            if (entry >= s.PhysicalAddress && entry - s.PhysicalAddress < s.MemorySize)
            {
                return entry;
            }
        }
        foreach (var s in segments)
        {
            if (entry >= s.VirtualAddress && entry - s.VirtualAddress < s.MemorySize)
            {
                return entry - s.VirtualAddress + s.PhysicalAddress;
            }
        }
        throw new BadInputException($"'{name}' enters at 0x{entry:x} (e_entry), which is inside no loadable segment",
            "Link the 32-bit entry point into the kernel's code segment");
    }

    private static void CheckPlacement(string name, string what, ulong start, ulong length, GuestMemory memory, IReadOnlyList<FirmwareMemoryRange> map)
    {
        length = Math.Max(length, 1);
        if (!memory.IsRam(new GuestPhysical(start), length))
        {
            var (why, advice) = KernelLoader.WhyNotRam(start, length, memory);
            throw new BadInputException(
                $"'{name}': {what} ({KernelLoader.Range(start, length)}) is not inside guest RAM ({Size.Format(memory.Size)}): {why}", advice);
        }
        if (!FirmwareMemoryMap.IsRam(map, start, length))
        {
            var free = string.Join(", ", map.Where(r => r.Type == FirmwareMemoryRange.Ram).Select(r => $"0x{r.Start:x}..0x{r.End:x}"));
            throw new BadInputException(
                $"'{name}': {what} ({KernelLoader.Range(start, length)}) is not inside one RAM range of the memory map; it touches the EBDA, the VGA window or the BIOS area [0x{FirmwareMemoryMap.EbdaStart:x}, 0x{FirmwareMemoryMap.ExtendedStart:x}), where the firmware's data (the ACPI tables) lies",
                $"Link the kernel inside RAM: {free}");
        }
    }

    private static void Clear(GuestMemory memory, ulong start, ulong length)
    {
        while (length > 0)
        {
            int chunk = (int)Math.Min(length, 1 << 20);
            memory.Span(new GuestPhysical(start), chunk).Clear();
            start += (ulong)chunk;
            length -= (ulong)chunk;
        }
    }

    private static uint Field(ReadOnlySpan<byte> file, int header, int offset) =>
        BinaryPrimitives.ReadUInt32LittleEndian(file[(header + offset)..]);

    /// <summary>The modules, in the order given, each on a page boundary (header flag 0 asks for it; Nestor always
    /// does it), one after the other in one block placed as high as it fits.</summary>
    private static List<LoadedRange> PlaceModules(IReadOnlyList<MultibootModule> modules, GuestMemory memory, BootPlacement placement)
    {
        var loaded = new List<LoadedRange>();
        if (modules.Count == 0)
        {
            return loaded;
        }
        ulong total = 0;
        foreach (var module in modules)
        {
            total += ((ulong)module.Contents.Length + 0xFFF) & ~0xFFFUL;
        }
        ulong start = placement.Allocate(total, 0x1000) ?? throw new BadInputException(
            $"the {modules.Count} Multiboot module(s) ({Size.Format(total)} page-aligned) do not fit in the RAM below 4 GiB the kernel leaves free ({Size.Format(memory.Size)} of RAM)",
            "Give the VM more memory (--memory), or smaller modules");
        foreach (var module in modules)
        {
            memory.Write(new GuestPhysical(start), module.Contents);
            loaded.Add(new LoadedRange(new GuestPhysical(start), (ulong)module.Contents.Length, false, module.Contents));
            start += ((ulong)module.Contents.Length + 0xFFF) & ~0xFFFUL;
        }
        return loaded;
    }

    /// <summary>The information structure (§3.3) with flags 0 (mem_lower/mem_upper), 2 (cmdline), 3 (mods), 6
    /// (mmap) and 9 (boot_loader_name), followed in one block by the memory map, the module list, the strings and
    /// the boot GDT.</summary>
    private static (GuestPhysical Information, GuestPhysical Gdt) WriteInformation(GuestMemory memory, BootPlacement placement,
        IReadOnlyList<FirmwareMemoryRange> map, string name, string commandLine, IReadOnlyList<MultibootModule> modules, List<LoadedRange> loadedModules)
    {
        // Loaders put the kernel's path first (one word), then the command line proper; modules likewise.
        static byte[] Line(string file, string arguments) =>
            Encoding.UTF8.GetBytes(Path.GetFileName(file).Replace(' ', '-') + (arguments.Length > 0 ? " " + arguments : "") + "\0");
        byte[] kernelLine = Encoding.UTF8.GetBytes(Path.GetFileName(name).Replace(' ', '-') + " " + commandLine + "\0");
        var moduleLines = modules.Select(m => Line(m.Name, m.CommandLine)).ToList();
        byte[] loaderName = Encoding.ASCII.GetBytes(BootLoaderName + "\0");
        int gdtOffset = 0;
        int mapOffset = InformationSize;
        int modulesOffset = mapOffset + map.Count * MemoryMapEntrySize;
        int stringsOffset = modulesOffset + modules.Count * ModuleEntrySize;
        long size = stringsOffset + kernelLine.Length + moduleLines.Sum(l => (long)l.Length) + loaderName.Length;
        size = ((size + 7) & ~7L) + GdtSize;
        gdtOffset = (int)(size - GdtSize);
        if (size > 1 << 20)
        {
            throw new BadInputException($"the Multiboot command lines take {Size.Format((ulong)size)}, more than 1 MiB", "Shorten --cmdline and the modules' command lines");
        }
        ulong blockStart = placement.Allocate((ulong)size, 0x1000) ?? throw new BadInputException(
            $"there is no room left below 4 GiB for the Multiboot information ({Size.Format((ulong)size)}) beside the kernel and modules ({Size.Format(memory.Size)} of RAM)",
            "Give the VM more memory (--memory)");
        var block = memory.Span(new GuestPhysical(blockStart), (int)size);
        block.Clear();
        uint At(int offset) => (uint)(blockStart + (ulong)offset);

        for (int i = 0; i < map.Count; i++)
        {
            var e = block.Slice(mapOffset + i * MemoryMapEntrySize, MemoryMapEntrySize);
            BinaryPrimitives.WriteUInt32LittleEndian(e, MemoryMapEntrySize - 4); // "size": the entry less this field
            BinaryPrimitives.WriteUInt64LittleEndian(e[4..], map[i].Start);
            BinaryPrimitives.WriteUInt64LittleEndian(e[12..], map[i].Length);
            BinaryPrimitives.WriteUInt32LittleEndian(e[20..], map[i].Type);
        }
        int cursor = stringsOffset;
        int Put(Span<byte> target, byte[] text)
        {
            text.CopyTo(target[cursor..]);
            int at = cursor;
            cursor += text.Length;
            return at;
        }
        int kernelLineAt = Put(block, kernelLine);
        for (int i = 0; i < modules.Count; i++)
        {
            var e = block.Slice(modulesOffset + i * ModuleEntrySize, ModuleEntrySize);
            BinaryPrimitives.WriteUInt32LittleEndian(e, (uint)loadedModules[i].Start.Value);
            BinaryPrimitives.WriteUInt32LittleEndian(e[4..], (uint)loadedModules[i].End.Value); // mod_end: exclusive
            BinaryPrimitives.WriteUInt32LittleEndian(e[8..], At(Put(block, moduleLines[i])));
        }
        int loaderNameAt = Put(block, loaderName);

        // mem_lower: KiB of conventional memory from 0; mem_upper: KiB of RAM from 1 MiB up to the first hole.
        ulong lowEnd = GuestMemoryLayout.RamRegions(memory.Size)[0].End.Value;
        var info = block[..InformationSize];
        uint flags = HasMemory | HasCommandLine | HasMemoryMap | HasBootLoaderName | (modules.Count > 0 ? HasModules : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(info, flags);
        BinaryPrimitives.WriteUInt32LittleEndian(info[4..], (uint)(FirmwareMemoryMap.EbdaStart / 1024));
        BinaryPrimitives.WriteUInt32LittleEndian(info[8..], (uint)((lowEnd - FirmwareMemoryMap.ExtendedStart) / 1024));
        BinaryPrimitives.WriteUInt32LittleEndian(info[16..], At(kernelLineAt));
        BinaryPrimitives.WriteUInt32LittleEndian(info[20..], (uint)modules.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(info[24..], modules.Count > 0 ? At(modulesOffset) : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(info[44..], (uint)(map.Count * MemoryMapEntrySize));
        BinaryPrimitives.WriteUInt32LittleEndian(info[48..], At(mapOffset));
        BinaryPrimitives.WriteUInt32LittleEndian(info[64..], At(loaderNameAt));
        return (new GuestPhysical(blockStart), new GuestPhysical(blockStart + (ulong)gdtOffset));
    }

    /// <summary>§3.2: protected mode, paging off, CS a flat 32-bit code segment (offset 0, limit 0xFFFFFFFF), the
    /// data segments flat, IF clear, A20 on (the software machine has no A20 gate: addresses never wrap at 1 MiB).
    /// The GDT the selectors come from is Nestor's (0x08 code, 0x10 data); the kernel must load its own before it
    /// reloads a segment register.</summary>
    private static VcpuState EntryState(GuestMemory memory, ulong entry, GuestPhysical information, GuestPhysical gdt)
    {
        memory.WriteUInt64(gdt, 0);
        memory.WriteUInt64(gdt + 8, SegmentDescriptor.Flat(0xB, 0, longMode: false));
        memory.WriteUInt64(gdt + 16, SegmentDescriptor.Flat(0x3, 0, longMode: false));
        var state = new VcpuState
        {
            Rip = entry,
            Rax = BootloaderMagic,
            Rbx = information.Value,
            Rflags = 0x2,
            Cr0 = Cr0.ProtectionEnable | Cr0.ExtensionType,
            Cs = new SegmentState(0x08, 0, 0xFFFF_FFFF, 0xB, true, 0, true, false, true, true),
            Tr = new SegmentState(0, 0, 0xFFFF, 0xB, false, 0, true, false, false, false),
            Ldt = SegmentState.Null,
            Gdtr = new DescriptorTableState(gdt.Value, GdtSize - 1),
            Idtr = new DescriptorTableState(0, 0),
        };
        var data = new SegmentState(0x10, 0, 0xFFFF_FFFF, 0x3, true, 0, true, false, true, true);
        state.Ds = state.Es = state.Fs = state.Gs = state.Ss = data;
        return state;
    }
}
