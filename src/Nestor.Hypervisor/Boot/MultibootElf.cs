using System.Buffers.Binary;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Boot;

/// <summary>The loadable segments of an ELF32 (i386) or ELF64 (x86-64) executable as a Multiboot loader reads them
/// (System V ABI gABI, "ELF Header" and "Program Header"; Multiboot 0.6.96 §3.1.3: without the a.out kludge the
/// loader uses the ELF headers). Segments go to their physical address, <c>p_paddr</c>, which must lie below 4 GiB:
/// a Multiboot kernel starts with paging off.</summary>
internal static class MultibootElf
{
    private const uint ProgramLoad = 1; // PT_LOAD
    private const ushort Executable = 2; // ET_EXEC
    private const ushort Machine386 = 3, MachineX86_64 = 62;

    public static bool IsElf(ReadOnlySpan<byte> file) =>
        file.Length >= 4 && file[0] == 0x7F && file[1] == (byte)'E' && file[2] == (byte)'L' && file[3] == (byte)'F';

    /// <summary>The segments (file offset, file size, physical address, memory size, virtual address) and the entry
    /// point of <paramref name="file"/>.</summary>
    public static (ulong Entry, List<ElfSegment> Segments) Parse(ReadOnlySpan<byte> file, string name)
    {
        const string Rebuild = "Rebuild the kernel as an ELF32 i386 or ELF64 x86-64 executable, or give its Multiboot header the a.out-kludge addresses (flag bit 16)";
        bool is64 = file.Length >= 5 && file[4] == 2;
        int headerSize = is64 ? 64 : 52;
        if (file.Length < headerSize)
        {
            throw new BadInputException($"'{name}': its ELF header is truncated ({file.Length} bytes)", Rebuild);
        }
        if (file[4] is not (1 or 2))
        {
            throw new BadInputException($"'{name}' has an unknown ELF class {file[4]}", Rebuild);
        }
        if (file[5] != 1)
        {
            throw new BadInputException($"'{name}' is not a little-endian ELF file (EI_DATA {file[5]})", Rebuild);
        }
        if (file[6] != 1)
        {
            throw new BadInputException($"'{name}' has ELF version {file[6]}, not 1 (EV_CURRENT)", Rebuild);
        }
        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(file[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(file[18..]);
        ushort expected = is64 ? MachineX86_64 : Machine386;
        if (machine != expected)
        {
            throw new BadInputException($"'{name}' is an ELF{(is64 ? 64 : 32)} file for machine {machine}, not {(is64 ? "x86-64 (62)" : "i386 (3)")}", Rebuild);
        }
        if (type != Executable)
        {
            throw new BadInputException($"'{name}' is ELF type {type}, not an executable (ET_EXEC): a Multiboot loader does not relocate", Rebuild);
        }
        ulong entry = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(file[24..]) : BinaryPrimitives.ReadUInt32LittleEndian(file[24..]);
        ulong tableOffset = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(file[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(file[28..]);
        int entrySize = BinaryPrimitives.ReadUInt16LittleEndian(file[(is64 ? 54 : 42)..]);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(file[(is64 ? 56 : 44)..]);
        int minimum = is64 ? 56 : 32;
        if (count > 0 && (entrySize < minimum || tableOffset > (ulong)file.Length || (ulong)count * (ulong)entrySize > (ulong)file.Length - tableOffset))
        {
            throw new BadInputException($"'{name}': its program header table ({count} entries of {entrySize} bytes at 0x{tableOffset:x}) lies outside the file or is malformed", Rebuild);
        }
        var segments = new List<ElfSegment>();
        for (int i = 0; i < count; i++)
        {
            var p = file[(int)(tableOffset + (ulong)(i * entrySize))..];
            if (BinaryPrimitives.ReadUInt32LittleEndian(p) != ProgramLoad)
            {
                continue;
            }
            ulong offset, virtualAddress, physicalAddress, fileSize, memorySize;
            uint flags;
            if (is64)
            {
                flags = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
                offset = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
                virtualAddress = BinaryPrimitives.ReadUInt64LittleEndian(p[16..]);
                physicalAddress = BinaryPrimitives.ReadUInt64LittleEndian(p[24..]);
                fileSize = BinaryPrimitives.ReadUInt64LittleEndian(p[32..]);
                memorySize = BinaryPrimitives.ReadUInt64LittleEndian(p[40..]);
            }
            else
            {
                offset = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
                virtualAddress = BinaryPrimitives.ReadUInt32LittleEndian(p[8..]);
                physicalAddress = BinaryPrimitives.ReadUInt32LittleEndian(p[12..]);
                fileSize = BinaryPrimitives.ReadUInt32LittleEndian(p[16..]);
                memorySize = BinaryPrimitives.ReadUInt32LittleEndian(p[20..]);
                flags = BinaryPrimitives.ReadUInt32LittleEndian(p[24..]);
            }
            if (memorySize == 0)
            {
                continue;
            }
            if (fileSize > memorySize)
            {
                throw new BadInputException($"'{name}': segment {i} has more bytes in the file (0x{fileSize:x}) than in memory (0x{memorySize:x})", Rebuild);
            }
            if (offset > (ulong)file.Length || fileSize > (ulong)file.Length - offset)
            {
                throw new BadInputException($"'{name}': segment {i} (0x{fileSize:x} bytes at file offset 0x{offset:x}) is truncated: the file has {file.Length} bytes", Rebuild);
            }
            if (physicalAddress >= 1UL << 32 || memorySize > (1UL << 32) - physicalAddress)
            {
                throw new BadInputException(
                    $"'{name}': segment {i} loads at physical {KernelLoader.Range(physicalAddress, memorySize)}, not below 4 GiB, which a Multiboot kernel (entered with paging off) cannot reach",
                    "Link the kernel's load addresses (p_paddr, the linker script's AT()) below 4 GiB");
            }
            segments.Add(new ElfSegment(virtualAddress, physicalAddress, offset, fileSize, memorySize, (flags & 1) != 0, (flags & 2) != 0));
        }
        if (segments.Count == 0)
        {
            throw new BadInputException($"'{name}' has no loadable segment (PT_LOAD with a size)", Rebuild);
        }
        return (entry, segments);
    }
}
