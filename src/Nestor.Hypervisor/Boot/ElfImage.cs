using System.Buffers.Binary;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Boot;

/// <summary>One PT_LOAD program header of an ELF64 file.</summary>
public sealed record ElfSegment(ulong VirtualAddress, ulong PhysicalAddress, ulong FileOffset, ulong FileSize,
    ulong MemorySize, bool Executable, bool Writable);

/// <summary>The parts of an ELF64 executable a boot loader needs (System V ABI, "ELF Header" and "Program Header";
/// x86-64 psABI for EM_X86_64). Every malformed field becomes a <see cref="BadInputException"/> naming the field.</summary>
public sealed class ElfImage
{
    private const ushort MachineX86_64 = 62;
    private const ushort TypeExecutable = 2;
    private const ushort TypeShared = 3;
    private const uint LoadSegment = 1;

    private ElfImage(ulong entry, IReadOnlyList<ElfSegment> segments)
    {
        Entry = entry;
        Segments = segments;
    }

    /// <summary>e_entry.</summary>
    public ulong Entry { get; }

    /// <summary>The PT_LOAD segments, in file order.</summary>
    public IReadOnlyList<ElfSegment> Segments { get; }

    /// <summary>True when <paramref name="file"/> starts with the ELF magic.</summary>
    public static bool HasElfMagic(ReadOnlySpan<byte> file) =>
        file.Length >= 4 && file[0] == 0x7F && file[1] == (byte)'E' && file[2] == (byte)'L' && file[3] == (byte)'F';

    /// <summary>Parses and validates <paramref name="file"/>; <paramref name="name"/> appears in error messages.</summary>
    public static ElfImage Parse(ReadOnlySpan<byte> file, string name)
    {
        if (!HasElfMagic(file))
        {
            throw new BadInputException($"'{name}' is not an ELF file (it does not start with 7f 45 4c 46)",
                "Give an ELF64 x86-64 kernel, or add --flat to load raw code");
        }
        if (file.Length < 64)
        {
            throw new BadInputException($"'{name}' is truncated: {file.Length} bytes is shorter than an ELF64 header",
                "Rebuild the kernel");
        }
        if (file[4] == 1)
        {
            throw new BadInputException($"'{name}' is a 32-bit ELF file; the Nestor boot protocol needs an ELF64 kernel",
                "Link the kernel as elf64-x86-64 with a 64-bit entry point (a 32-bit Multiboot entry is for QEMU -kernel)");
        }
        if (file[4] != 2)
        {
            throw new BadInputException($"'{name}' has an unknown ELF class {file[4]}", "Give an ELF64 x86-64 kernel");
        }
        if (file[5] != 1)
        {
            throw new BadInputException($"'{name}' is a big-endian ELF file", "Give a little-endian x86-64 kernel");
        }
        if (file[6] != 1)
        {
            // e_ident[EI_VERSION]: EV_CURRENT (1) is the only version there has ever been; anything else means the
            // header is corrupt or not meant for this format's readers.
            throw new BadInputException($"'{name}' has ELF version {file[6]} (e_ident[EI_VERSION]); the only ELF version is 1 (EV_CURRENT)",
                "The file is corrupt or not an ELF kernel: rebuild it");
        }
        ushort type = U16(file, 16);
        ushort machine = U16(file, 18);
        if (machine != MachineX86_64)
        {
            throw new BadInputException($"'{name}' is an ELF file for machine {machine}, not x86-64 (62)",
                "Build the kernel for x86-64");
        }
        if (type == TypeShared)
        {
            throw new BadInputException($"'{name}' is a position-independent (ET_DYN) ELF file; Nestor loads fixed-address executables",
                "Link the kernel with -no-pie (or -static) at a fixed address");
        }
        if (type != TypeExecutable)
        {
            throw new BadInputException($"'{name}' is an ELF file of type {type}, not an executable (ET_EXEC)",
                "Link the kernel into an executable; an object file (.o) cannot be booted");
        }
        ulong entry = U64(file, 24);
        ulong programHeaders = U64(file, 32);
        ushort headerSize = U16(file, 54);
        ushort count = U16(file, 56);
        if (count == 0)
        {
            throw new BadInputException($"'{name}' has no program headers, so there is nothing to load", "Rebuild the kernel");
        }
        if (headerSize < 56 || programHeaders > (ulong)file.Length || (ulong)headerSize * count > (ulong)file.Length - programHeaders)
        {
            throw new BadInputException($"'{name}' is truncated or corrupt: its program headers lie outside the file",
                "Rebuild the kernel");
        }
        var segments = new List<ElfSegment>();
        for (int i = 0; i < count; i++)
        {
            var h = file.Slice((int)programHeaders + i * headerSize, headerSize);
            if (U32(h, 0) != LoadSegment)
            {
                continue;
            }
            uint flags = U32(h, 4);
            var s = new ElfSegment(U64(h, 16), U64(h, 24), U64(h, 8), U64(h, 32), U64(h, 40),
                (flags & 1) != 0, (flags & 2) != 0);
            if (s.FileSize > s.MemorySize)
            {
                throw new BadInputException(
                    $"'{name}' segment {i} is corrupt: its file size 0x{s.FileSize:x} exceeds its memory size 0x{s.MemorySize:x}",
                    "Rebuild the kernel");
            }
            if (s.FileSize > ulong.MaxValue - s.FileOffset)
            {
                throw new BadInputException(
                    $"'{name}' segment {i} is corrupt: its file bytes ({KernelLoader.Range(s.FileOffset, s.FileSize)}) would end past the end of any file",
                    "Rebuild the kernel");
            }
            if (s.FileOffset > (ulong)file.Length || s.FileSize > (ulong)file.Length - s.FileOffset)
            {
                throw new BadInputException(
                    $"'{name}' is truncated: segment {i} needs bytes {KernelLoader.Range(s.FileOffset, s.FileSize)} but the file has {file.Length} bytes",
                    "Rebuild the kernel, or copy the whole file");
            }
            if (s.MemorySize > ulong.MaxValue - s.PhysicalAddress)
            {
                throw new BadInputException(
                    $"'{name}' segment {i} is corrupt: it would occupy physical {KernelLoader.Range(s.PhysicalAddress, s.MemorySize)}",
                    "Rebuild the kernel");
            }
            if (s.MemorySize > 0)
            {
                segments.Add(s);
            }
        }
        if (segments.Count == 0)
        {
            throw new BadInputException($"'{name}' has no loadable (PT_LOAD) segments", "Rebuild the kernel");
        }
        return new ElfImage(entry, segments);
    }

    /// <summary>The value (address) of the symbol <paramref name="name"/> in an ELF64 file's symbol table, or null
    /// when the file has no such symbol (or no symbol table: a stripped kernel).</summary>
    public static ulong? FindSymbol(ReadOnlySpan<byte> file, string name)
    {
        const uint SymbolTable = 2;
        if (!HasElfMagic(file) || file.Length < 64 || file[4] != 2)
        {
            return null;
        }
        ulong sectionOffset = U64(file, 0x28);
        int sectionSize = U16(file, 0x3A), sectionCount = U16(file, 0x3C);
        for (int i = 0; i < sectionCount; i++)
        {
            ulong at = sectionOffset + (ulong)(i * sectionSize);
            if (at + 64 > (ulong)file.Length || U32(file, (int)at + 4) != SymbolTable)
            {
                continue;
            }
            ulong symbols = U64(file, (int)at + 0x18), size = U64(file, (int)at + 0x20), entrySize = U64(file, (int)at + 0x38);
            uint link = U32(file, (int)at + 0x28);
            ulong stringsAt = sectionOffset + link * (ulong)sectionSize;
            if (entrySize < 24 || stringsAt + 64 > (ulong)file.Length || symbols + size > (ulong)file.Length)
            {
                return null;
            }
            ulong strings = U64(file, (int)stringsAt + 0x18), stringsSize = U64(file, (int)stringsAt + 0x20);
            for (ulong s = symbols; s + entrySize <= symbols + size; s += entrySize)
            {
                ulong nameAt = strings + U32(file, (int)s);
                if (nameAt >= strings + stringsSize || nameAt + (ulong)name.Length >= (ulong)file.Length)
                {
                    continue;
                }
                var candidate = file.Slice((int)nameAt, name.Length);
                if (file[(int)nameAt + name.Length] == 0 && System.Text.Encoding.ASCII.GetString(candidate) == name)
                {
                    return U64(file, (int)s + 8);
                }
            }
        }
        return null;
    }

    private static ushort U16(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt16LittleEndian(b[o..]);

    private static uint U32(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt32LittleEndian(b[o..]);

    private static ulong U64(ReadOnlySpan<byte> b, int o) => BinaryPrimitives.ReadUInt64LittleEndian(b[o..]);
}
