using System.Buffers.Binary;
using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Boot;

/// <summary>Tiny Multiboot v1 kernels for the loader tests, in the three forms loaders meet: ELF32 and ELF64 loaded
/// by their program headers, and a raw image with the a.out-kludge addresses. Each runs the same 32-bit reporter:
/// it checks EAX, prints to COM1 <c>boot_loader_name|cmdline|</c>, then per module <c> string=contents</c>, a
/// newline, and exits through port 0xF4 with mem_lower - 600 (39 for 639 KiB).</summary>
internal static class MultibootTestKernel
{
    public const uint Magic = 0x1BADB002;

    /// <summary>The reporter assembled to run at <paramref name="address"/>, its stack at <paramref name="stackTop"/>.</summary>
    public static byte[] Reporter(ulong address, uint stackTop) => GuestAssembler.Assemble(a =>
    {
        var bad = a.CreateLabel();
        var puts = a.CreateLabel();
        var next = a.CreateLabel();
        var done = a.CreateLabel();
        var contents = a.CreateLabel();
        var contentsEnd = a.CreateLabel();
        a.mov(esp, stackTop);
        a.cmp(eax, 0x2BADB002);
        a.jne(bad);
        a.mov(dx, 0x3F8);
        a.mov(esi, __dword_ptr[ebx + 64]); // boot_loader_name
        a.call(puts);
        a.mov(al, (byte)'|');
        a.@out(dx, al);
        a.mov(esi, __dword_ptr[ebx + 16]); // cmdline
        a.call(puts);
        a.mov(al, (byte)'|');
        a.@out(dx, al);
        a.mov(ecx, __dword_ptr[ebx + 20]); // mods_count
        a.mov(edi, __dword_ptr[ebx + 24]); // mods_addr
        a.Label(ref next);
        a.test(ecx, ecx);
        a.jz(done);
        a.mov(al, (byte)' ');
        a.@out(dx, al);
        a.mov(esi, __dword_ptr[edi + 8]);
        a.call(puts);
        a.mov(al, (byte)'=');
        a.@out(dx, al);
        a.mov(esi, __dword_ptr[edi]);
        a.Label(ref contents);
        a.cmp(esi, __dword_ptr[edi + 4]);
        a.jae(contentsEnd);
        a.lodsb();
        a.@out(dx, al);
        a.jmp(contents);
        a.Label(ref contentsEnd);
        a.add(edi, 16);
        a.dec(ecx);
        a.jmp(next);
        a.Label(ref done);
        a.mov(al, 10);
        a.@out(dx, al);
        a.mov(dx, 0xF4);
        a.mov(eax, __dword_ptr[ebx + 4]);  // mem_lower
        a.sub(eax, 600);
        a.@out(dx, eax);
        a.hlt();
        a.Label(ref bad);
        a.mov(dx, 0xF4);
        a.mov(eax, 0x77);
        a.@out(dx, eax);
        a.hlt();
        a.Label(ref puts);
        var end = a.CreateLabel();
        a.lodsb();
        a.test(al, al);
        a.jz(end);
        a.@out(dx, al);
        a.jmp(puts);
        a.Label(ref end);
        a.ret();
    }, address, bitness: 32);

    /// <summary>A Multiboot header of <paramref name="flags"/> (12 bytes, or 32 with the a.out-kludge fields).</summary>
    public static byte[] Header(uint flags, uint headerAddress = 0, uint loadAddress = 0, uint loadEnd = 0, uint bssEnd = 0, uint entry = 0)
    {
        var header = new byte[(flags & (1u << 16)) != 0 ? 32 : 12];
        BinaryPrimitives.WriteUInt32LittleEndian(header, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(8), unchecked(0u - Magic - flags));
        if (header.Length == 32)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(12), headerAddress);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), loadAddress);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(20), loadEnd);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(24), bssEnd);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(28), entry);
        }
        return header;
    }

    /// <summary>An ELF file (class 1 or 2) with one PT_LOAD segment at physical <paramref name="address"/> (virtual
    /// <paramref name="virtualAddress"/>, by default the same) holding a Multiboot header without the kludge, then
    /// the reporter; 4 KiB of bss follow for its stack. Entered at the reporter's virtual address.</summary>
    public static byte[] Elf(int elfClass, uint address, uint flags = 0, ulong? virtualAddress = null, ushort? machine = null)
    {
        ulong virtualBase = virtualAddress ?? address;
        byte[] header = Header(flags);
        const int CodeOffset = 16;
        byte[] code = Reporter(address + CodeOffset, 0);
        uint fileSize = (uint)(CodeOffset + code.Length);
        uint memorySize = fileSize + 0x1000;
        code = Reporter(address + CodeOffset, (address + memorySize) & ~15u);
        var segment = new byte[fileSize];
        header.CopyTo(segment, 0);
        code.CopyTo(segment, CodeOffset);
        bool is64 = elfClass == 2;
        int ehSize = is64 ? 64 : 52, phSize = is64 ? 56 : 32;
        const int SegmentOffset = 0x100;
        var file = new byte[SegmentOffset + segment.Length];
        var f = file.AsSpan();
        f[0] = 0x7F; f[1] = (byte)'E'; f[2] = (byte)'L'; f[3] = (byte)'F';
        f[4] = (byte)elfClass; f[5] = 1; f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(f[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(f[18..], machine ?? (ushort)(is64 ? 62 : 3));
        BinaryPrimitives.WriteUInt32LittleEndian(f[20..], 1);
        ulong entry = virtualBase + CodeOffset;
        var ph = f[ehSize..];
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(f[24..], entry);
            BinaryPrimitives.WriteUInt64LittleEndian(f[32..], (ulong)ehSize);
            BinaryPrimitives.WriteUInt16LittleEndian(f[52..], (ushort)ehSize);
            BinaryPrimitives.WriteUInt16LittleEndian(f[54..], (ushort)phSize);
            BinaryPrimitives.WriteUInt16LittleEndian(f[56..], 1);
            BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 7);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], SegmentOffset);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], virtualBase);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], address);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], fileSize);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], memorySize);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(f[24..], (uint)entry);
            BinaryPrimitives.WriteUInt32LittleEndian(f[28..], (uint)ehSize);
            BinaryPrimitives.WriteUInt16LittleEndian(f[40..], (ushort)ehSize);
            BinaryPrimitives.WriteUInt16LittleEndian(f[42..], (ushort)phSize);
            BinaryPrimitives.WriteUInt16LittleEndian(f[44..], 1);
            BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], SegmentOffset);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[8..], (uint)virtualBase);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[12..], address);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[16..], fileSize);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[20..], memorySize);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[24..], 7);
        }
        segment.CopyTo(file, SegmentOffset);
        return file;
    }

    /// <summary>A raw (not ELF) image loaded by its a.out-kludge header at <paramref name="address"/>: the header,
    /// the reporter, then 4 KiB of bss (bss_end_addr) for its stack.</summary>
    public static byte[] Kludge(uint address, uint extraFlags = 0)
    {
        const int CodeOffset = 32;
        int codeLength = Reporter(address + CodeOffset, 0).Length;
        uint loadEnd = address + (uint)(CodeOffset + codeLength);
        uint bssEnd = loadEnd + 0x1000;
        byte[] code = Reporter(address + CodeOffset, bssEnd & ~15u);
        byte[] header = Header((1u << 16) | extraFlags, address, address, loadEnd, bssEnd, address + CodeOffset);
        return [.. header, .. code];
    }
}
