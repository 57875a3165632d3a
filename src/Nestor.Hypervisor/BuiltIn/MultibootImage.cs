using System.Buffers.Binary;
using Iced.Intel;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Architecture;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.BuiltIn;

/// <summary>Wraps 64-bit code written for the Nestor boot protocol into one ELF64 image that boots two ways:
/// Nestor enters it at e_entry (the 64-bit code) by its own protocol, and QEMU's <c>-kernel</c> loads it as a
/// Multiboot v1 kernel through the header's a.out-kludge fields (Multiboot Specification 0.6.96, §3.1.1 and §3.1.3)
/// and enters a 32-bit shim that builds the same long-mode environment before jumping to the same code. That is
/// how the same guest code runs on Nestor and on the reference machine.</summary>
public static class MultibootImage
{
    /// <summary>Where the image is loaded (file offset 0 lands here in both loaders).</summary>
    public const ulong LoadAddress = 0x100000;

    /// <summary>Where the 64-bit payload starts: the 4 KiB page after the headers and the shim.</summary>
    public const ulong PayloadAddress = LoadAddress + 0x1000;

    private const uint MultibootMagic = 0x1BADB002;
    private const uint AoutKludge = 1u << 16;
    private const int HeaderOffset = 0x80;
    private const int ShimOffset = 0xA0;

    /// <summary>Builds the image around <paramref name="payload"/>, which must be position-independent or
    /// assembled for <see cref="PayloadAddress"/>. Under QEMU the payload gets RDI = 0 (no Nestor boot-information
    /// block) and RSP = 0x80000.</summary>
    public static byte[] Build(byte[] payload)
    {
        int size = (int)(PayloadAddress - LoadAddress) + payload.Length;
        var image = new byte[size];
        Span<byte> s = image;

        // ELF64 header (System V gABI): one PT_LOAD segment covering the whole file at LoadAddress.
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F';
        s[4] = 2; s[5] = 1; s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);            // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 62);           // EM_X86_64
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], PayloadAddress); // e_entry
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], 64);           // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(s[52..], 64);           // e_ehsize
        BinaryPrimitives.WriteUInt16LittleEndian(s[54..], 56);           // e_phentsize
        BinaryPrimitives.WriteUInt16LittleEndian(s[56..], 1);            // e_phnum
        var ph = s[64..];
        BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);                 // PT_LOAD
        BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 7);            // RWX
        BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], 0);            // p_offset
        BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], LoadAddress); // p_vaddr
        BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], LoadAddress); // p_paddr
        BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], (ulong)size);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], (ulong)size);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[48..], 0x1000);

        // Multiboot header with the a.out kludge: load the file from offset 0 at LoadAddress, enter the shim.
        var mb = s[HeaderOffset..];
        uint flags = AoutKludge;
        BinaryPrimitives.WriteUInt32LittleEndian(mb, MultibootMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(mb[4..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(mb[8..], unchecked(0u - MultibootMagic - flags));
        BinaryPrimitives.WriteUInt32LittleEndian(mb[12..], (uint)LoadAddress + HeaderOffset); // header_addr
        BinaryPrimitives.WriteUInt32LittleEndian(mb[16..], (uint)LoadAddress);                // load_addr
        BinaryPrimitives.WriteUInt32LittleEndian(mb[20..], (uint)LoadAddress + (uint)size);   // load_end_addr
        BinaryPrimitives.WriteUInt32LittleEndian(mb[24..], (uint)LoadAddress + (uint)size);   // bss_end_addr
        BinaryPrimitives.WriteUInt32LittleEndian(mb[28..], (uint)LoadAddress + ShimOffset);   // entry_addr

        byte[] shim = Shim();
        if (ShimOffset + shim.Length > (int)(PayloadAddress - LoadAddress))
        {
            throw new InvalidOperationException("Multiboot shim does not fit before the payload");
        }
        shim.CopyTo(s[ShimOffset..]);
        payload.CopyTo(s[(int)(PayloadAddress - LoadAddress)..]);
        return image;
    }

    /// <summary>32-bit protected-mode code that does what Nestor's <see cref="LongModeSetup"/> does from outside:
    /// identity-map the first 4 GiB with 2 MiB pages at the same addresses, load the same GDT, enable PAE, long
    /// mode and paging (SDM Vol. 3A §9.8.5), and far-jump to the payload in 64-bit mode.</summary>
    private static byte[] Shim() => GuestAssembler.Assemble(a =>
    {
        uint pml4 = (uint)GuestMemoryLayout.PageTables.Value;
        uint gdt = (uint)GuestMemoryLayout.BootGdt.Value;
        a.cli();
        a.mov(edi, pml4);
        a.mov(ecx, 6 * 1024);
        a.xor(eax, eax);
        a.rep.stosd();
        a.mov(__dword_ptr[pml4], pml4 + 0x1000 + 3);
        for (uint g = 0; g < 4; g++)
        {
            a.mov(__dword_ptr[pml4 + 0x1000 + g * 8], pml4 + 0x2000 + g * 0x1000 + 3);
        }
        var fill = a.CreateLabel();
        a.mov(edi, pml4 + 0x2000);
        a.mov(eax, 0x83); // present, writable, 2 MiB page
        a.mov(ecx, 4 * 512);
        a.Label(ref fill);
        a.mov(__dword_ptr[edi], eax);
        a.mov(__dword_ptr[edi + 4], 0);
        a.add(eax, 0x200000);
        a.add(edi, 8);
        a.sub(ecx, 1);
        a.jnz(fill);
        ulong code = SegmentDescriptor.Flat(0xB, 0, longMode: true);
        ulong data = SegmentDescriptor.Flat(0x3, 0, longMode: false);
        a.mov(__dword_ptr[gdt], 0);
        a.mov(__dword_ptr[gdt + 4], 0);
        a.mov(__dword_ptr[gdt + 8], (uint)code);
        a.mov(__dword_ptr[gdt + 12], (uint)(code >> 32));
        a.mov(__dword_ptr[gdt + 16], (uint)data);
        a.mov(__dword_ptr[gdt + 20], (uint)(data >> 32));
        a.mov(__word_ptr[gdt + 0x30], 0x17);
        a.mov(__dword_ptr[gdt + 0x32], gdt);
        a.lgdt(__[gdt + 0x30]);
        a.mov(ax, 0x10);
        a.mov(ds, ax);
        a.mov(es, ax);
        a.mov(ss, ax);
        a.mov(esp, (uint)GuestMemoryLayout.StackTop.Value);
        a.mov(eax, (uint)Cr4.PhysicalAddressExtension);
        a.mov(cr4, eax);
        a.mov(eax, pml4);
        a.mov(cr3, eax);
        a.mov(ecx, Msr.Efer);
        a.rdmsr();
        a.or(eax, (int)(Efer.LongModeEnable | Efer.NoExecuteEnable));
        a.wrmsr();
        a.mov(eax, unchecked((uint)(Cr0.ProtectionEnable | Cr0.MonitorCoprocessor | Cr0.ExtensionType |
                                   Cr0.NumericError | Cr0.WriteProtect | Cr0.Paging)));
        a.mov(cr0, eax);
        a.xor(edi, edi); // no Nestor boot-information block under Multiboot
        // jmp far 0x08:PayloadAddress (EA ptr16:32), now in 64-bit mode.
        a.db([0xEA, .. BitConverter.GetBytes((uint)PayloadAddress), 0x08, 0x00]);
    }, LoadAddress + ShimOffset, bitness: 32);
}
