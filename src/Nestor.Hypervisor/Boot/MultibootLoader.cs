using System.Buffers.Binary;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.State;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;

namespace Nestor.Hypervisor.Boot;

/// <summary>Boots a kernel the way a Multiboot v1 loader does (Multiboot Specification 0.6.96, §3.1 header, §3.2
/// machine state, §3.3 boot information): load it by its header's a.out-kludge addresses, build the information
/// structure (memory size, memory map, command line), and enter the 32-bit entry point in flat protected mode with
/// paging off, EAX = 0x2BADB002 and EBX = the information structure. Used by the software machine, whose CPU models
/// 32-bit protected mode and the switch into long mode.</summary>
public static class MultibootLoader
{
    public const uint HeaderMagic = 0x1BADB002;
    public const uint BootloaderMagic = 0x2BADB002;
    private const uint AoutKludge = 1u << 16;

    /// <summary>Where the information structure, its memory map and the command line go (below the kernel, inside
    /// the boot-data area).</summary>
    public static readonly GuestPhysical Information = new(0x9000);
    private static readonly GuestPhysical MemoryMap = new(0x9100);
    private static readonly GuestPhysical CommandLine = new(0xA000);
    private static readonly GuestPhysical Gdt = new(0x8000);

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

    /// <summary>Loads the kernel and returns it with the 32-bit entry state.</summary>
    public static (LoadedKernel Kernel, VcpuState State) Load(KernelImageSource source, GuestMemory memory, string commandLine)
    {
        ReadOnlySpan<byte> file = source.Contents;
        int header = FindHeader(file);
        if (header < 0)
        {
            throw new BadInputException($"'{source.Name}' has no Multiboot header in its first 8 KiB",
                "Boot it by the Nestor boot protocol (without --multiboot), or add a Multiboot v1 header");
        }
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(file[(header + 4)..]);
        if ((flags & AoutKludge) == 0 || header + 32 > file.Length)
        {
            throw new BadInputException($"'{source.Name}' has a Multiboot header without load addresses (the a.out kludge, flag bit 16)",
                "Nestor's Multiboot loader reads the header's addresses; add them (NestorOS and MultibootImage show how)");
        }
        uint headerAddress = Field(file, header, 12), loadAddress = Field(file, header, 16);
        uint loadEnd = Field(file, header, 20), bssEnd = Field(file, header, 24), entry = Field(file, header, 28);
        long fileStart = header - (long)(headerAddress - loadAddress);
        long length = loadEnd == 0 ? file.Length - fileStart : loadEnd - loadAddress;
        if (fileStart < 0 || length <= 0 || fileStart + length > file.Length || loadAddress > headerAddress)
        {
            throw new BadInputException($"'{source.Name}': its Multiboot load addresses do not match the file", "Rebuild the kernel");
        }
        ulong end = Math.Max(loadAddress + (ulong)length, bssEnd);
        if (loadAddress < 0x100000)
        {
            throw new BadInputException(
                $"'{source.Name}' wants 0x{loadAddress:x}..0x{end:x}, below 1 MiB, where the Multiboot information and boot structures lie",
                "Link the kernel to load at or above 0x100000 (1 MiB), as Multiboot kernels do");
        }
        if (!memory.IsRam(new GuestPhysical(loadAddress), end - loadAddress))
        {
            var (why, advice) = KernelLoader.WhyNotRam(loadAddress, end - loadAddress, memory);
            throw new BadInputException(
                $"'{source.Name}' wants 0x{loadAddress:x}..0x{end:x}, which is not inside guest RAM ({Size.Format(memory.Size)}): {why}",
                advice);
        }
        var bytes = source.Contents.AsMemory((int)fileStart, (int)length);
        memory.Write(new GuestPhysical(loadAddress), bytes.Span);
        if (bssEnd > loadAddress + (ulong)length)
        {
            memory.Span(new GuestPhysical(loadAddress + (ulong)length), (int)(bssEnd - loadAddress - (ulong)length)).Clear();
        }
        var kernel = new LoadedKernel(new GuestPhysical(entry), new GuestPhysical(loadAddress), new GuestPhysical(end),
            [new LoadedRange(new GuestPhysical(loadAddress), (ulong)length, true, bytes)]);
        WriteInformation(memory, source.Name, commandLine, kernel);
        return (kernel, EntryState(memory, entry));
    }

    private static uint Field(ReadOnlySpan<byte> file, int header, int offset) =>
        BinaryPrimitives.ReadUInt32LittleEndian(file[(header + offset)..]);

    /// <summary>The boot information structure (§3.3): flags 0 (mem_lower/mem_upper), 2 (cmdline), 6 (mmap).</summary>
    private static void WriteInformation(GuestMemory memory, string name, string commandLine, LoadedKernel kernel)
    {
        // Loaders put the kernel's path first (one word), then the command line proper.
        byte[] line = Encoding.UTF8.GetBytes(Path.GetFileName(name).Replace(' ', '-') + " " + commandLine + "\0");
        if (line.Length > 0x1000)
        {
            throw new BadInputException("the kernel command line is too long for the Multiboot information page", "Shorten --cmdline");
        }
        memory.Write(CommandLine, line);
        // The map: RAM as the Nestor boot protocol describes it, with boot data and the kernel marked reserved.
        var map = BootInformation.BuildMemoryMap(memory.Size, kernel.ImageStart, kernel.ImageEnd);
        Span<byte> entries = memory.Span(MemoryMap, map.Count * 24);
        for (int i = 0; i < map.Count; i++)
        {
            var e = entries.Slice(i * 24, 24);
            BinaryPrimitives.WriteUInt32LittleEndian(e, 20);
            BinaryPrimitives.WriteUInt64LittleEndian(e[4..], map[i].Base.Value);
            BinaryPrimitives.WriteUInt64LittleEndian(e[12..], map[i].Length);
            BinaryPrimitives.WriteUInt32LittleEndian(e[20..], map[i].Type == MemoryMapType.Usable ? 1u : 2u);
        }
        ulong below4G = GuestMemoryLayout.RamRegions(memory.Size)[0].Length;
        Span<byte> info = memory.Span(Information, 0x58);
        info.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(info, (1u << 0) | (1u << 2) | (1u << 6));
        BinaryPrimitives.WriteUInt32LittleEndian(info[4..], 640);
        BinaryPrimitives.WriteUInt32LittleEndian(info[8..], (uint)((below4G - 0x100000) / 1024));
        BinaryPrimitives.WriteUInt32LittleEndian(info[16..], (uint)CommandLine.Value);
        BinaryPrimitives.WriteUInt32LittleEndian(info[44..], (uint)(map.Count * 24));
        BinaryPrimitives.WriteUInt32LittleEndian(info[48..], (uint)MemoryMap.Value);
    }

    /// <summary>§3.2: protected mode, paging off, CS a flat 32-bit code segment, data segments flat, IF clear.</summary>
    private static VcpuState EntryState(GuestMemory memory, uint entry)
    {
        memory.WriteUInt64(Gdt, 0);
        memory.WriteUInt64(Gdt + 8, SegmentDescriptor.Flat(0xB, 0, longMode: false));
        memory.WriteUInt64(Gdt + 16, SegmentDescriptor.Flat(0x3, 0, longMode: false));
        var state = new VcpuState
        {
            Rip = entry,
            Rax = BootloaderMagic,
            Rbx = Information.Value,
            Rflags = 0x2,
            Cr0 = Cr0.ProtectionEnable | Cr0.ExtensionType,
            Cs = new SegmentState(0x08, 0, 0xFFFF_FFFF, 0xB, true, 0, true, false, true, true),
            Tr = new SegmentState(0, 0, 0xFFFF, 0xB, false, 0, true, false, false, false),
            Ldt = SegmentState.Null,
            Gdtr = new DescriptorTableState(Gdt.Value, 23),
            Idtr = new DescriptorTableState(0, 0),
        };
        var data = new SegmentState(0x10, 0, 0xFFFF_FFFF, 0x3, true, 0, true, false, true, true);
        state.Ds = state.Es = state.Fs = state.Gs = state.Ss = data;
        return state;
    }
}
