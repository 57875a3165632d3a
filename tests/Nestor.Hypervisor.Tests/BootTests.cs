using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests;

public class BootTests
{
    private static KernelImageSource Elf(byte[] bytes) => new("test.elf", bytes, KernelFormat.Elf);

    [Fact]
    public void Elf_segments_are_loaded_at_their_physical_addresses_with_bss_cleared()
    {
        using var memory = new GuestMemory(8 << 20);
        memory.Span(new GuestPhysical(0x200004), 4).Fill(0xCC); // must be cleared as BSS
        var elf = TestElf.Build(0x100000,
            new TestElf.Segment(0x100000, [0x90, 0x90, 0xF4], 3),
            new TestElf.Segment(0x200000, [1, 2, 3, 4], 0x1000, Executable: false));
        var kernel = KernelLoader.Load(Elf(elf), memory);
        Assert.Equal(0x100000UL, kernel.Entry.Value);
        Assert.Equal(0x100000UL, kernel.ImageStart.Value);
        Assert.Equal(0x201000UL, kernel.ImageEnd.Value);
        Assert.Equal([0x90, 0x90, 0xF4], memory.Span(new GuestPhysical(0x100000), 3).ToArray());
        Assert.Equal([1, 2, 3, 4, 0, 0, 0, 0], memory.Span(new GuestPhysical(0x200000), 8).ToArray());
    }

    [Theory]
    [InlineData(new byte[] { 0x4D, 0x5A, 0x90, 0x00 }, "is not an ELF file")]
    [InlineData(new byte[] { 0x7F, 0x45, 0x4C, 0x46, 2, 1, 1 }, "truncated")]
    public void Files_that_are_not_elf64_are_refused_with_the_reason(byte[] file, string reason)
    {
        using var memory = new GuestMemory(4 << 20);
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains(reason, e.Message);
        Assert.NotNull(e.Advice);
    }

    [Fact]
    public void A_32_bit_elf_is_refused_with_advice()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, 2, 62, 1, new TestElf.Segment(0x100000, [0xF4], 1));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("32-bit", e.Message);
    }

    [Theory]
    [InlineData((ushort)3, (ushort)62, "position-independent")]
    [InlineData((ushort)1, (ushort)62, "not an executable")]
    [InlineData((ushort)2, (ushort)183, "not x86-64")]
    public void Wrong_type_or_machine_is_refused(ushort type, ushort machine, string reason)
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, type, machine, 2, new TestElf.Segment(0x100000, [0xF4], 1));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void A_segment_beyond_guest_ram_is_refused_naming_the_sizes()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, new TestElf.Segment(0x100000, [0xF4], 8 << 20));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("does not fit in guest RAM (4 MiB)", e.Message);
        Assert.Contains("--memory", e.Advice);
    }

    [Fact]
    public void A_segment_over_the_boot_structures_is_refused()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x10000, new TestElf.Segment(0x10000, [0xF4], 1));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("inside the boot structures", e.Message);
    }

    [Fact]
    public void A_truncated_segment_is_refused()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, new TestElf.Segment(0x100000, new byte[64], 64));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file[..^10]), memory));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void A_higher_half_entry_is_refused_because_only_identity_mapping_exists()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0xFFFF_FFFF_8010_0000, new TestElf.Segment(0x100000, [0xF4], 1, VirtualAddress: 0xFFFF_FFFF_8010_0000));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("identity map", e.Message);
    }

    [Fact]
    public void Flat_code_loads_at_the_default_or_given_address()
    {
        using var memory = new GuestMemory(4 << 20);
        var k = KernelLoader.Load(new KernelImageSource("code", [0xF4], KernelFormat.Flat), memory);
        Assert.Equal(GuestMemoryLayout.DefaultFlatLoadAddress, k.Entry);
        var k2 = KernelLoader.Load(new KernelImageSource("code", [0xF4], KernelFormat.Flat, new GuestPhysical(0x300000)), memory);
        Assert.Equal(0x300000UL, k2.Entry.Value);
        Assert.Equal(0xF4, memory.Span(new GuestPhysical(0x300000), 1)[0]);
    }

    [Fact]
    public void Memory_map_covers_ram_exactly_and_marks_boot_data_and_kernel()
    {
        var map = BootInformation.BuildMemoryMap(64UL << 20, new GuestPhysical(0x100000), new GuestPhysical(0x100800));
        Assert.Equal(0UL, map[0].Base.Value);
        Assert.Equal(MemoryMapType.Reserved, map[0].Type);
        ulong cursor = 0;
        foreach (var e in map)
        {
            Assert.Equal(cursor, e.Base.Value);
            cursor += e.Length;
        }
        Assert.Equal(64UL << 20, cursor);
        Assert.Contains(map, e => e.Type == MemoryMapType.Kernel && e.Base.Value == 0x100000 && e.Length == 0x1000);
        Assert.Contains(map, e => e.Type == MemoryMapType.BootData && e.Base.Value == 0x1000 && e.Length == 0x7F000);
    }

    [Fact]
    public void Ram_above_three_gib_continues_above_four_gib()
    {
        var regions = GuestMemoryLayout.RamRegions(5UL << 30);
        Assert.Equal(2, regions.Count);
        Assert.Equal(3UL << 30, regions[0].Length);
        Assert.Equal(4UL << 30, regions[1].Start.Value);
        Assert.Equal(2UL << 30, regions[1].Length);
        ulong total = BootInformation.BuildMemoryMap(5UL << 30, new GuestPhysical(0x100000), new GuestPhysical(0x101000)).Aggregate(0UL, (a, e) => a + e.Length);
        Assert.Equal(5UL << 30, total);
    }

    [Fact]
    public void Boot_information_block_holds_magic_sizes_map_and_command_line()
    {
        using var memory = new GuestMemory(16 << 20);
        var kernel = KernelLoader.Load(new KernelImageSource("code", [0xF4], KernelFormat.Flat), memory);
        var block = BootInformation.Write(memory, "forkwait 40000", kernel);
        Assert.Equal(BootInformation.Magic, memory.ReadUInt64(block));
        Assert.Equal("NESTORBI"u8.ToArray(), memory.Span(block, 8).ToArray());
        Assert.Equal(16UL << 20, memory.ReadUInt64(block + 0x10));
        ulong line = memory.ReadUInt64(block + 0x18);
        uint length = memory.ReadUInt32(block + 0x20);
        Assert.Equal("forkwait 40000", System.Text.Encoding.UTF8.GetString(memory.Span(new GuestPhysical(line), (int)length)));
        Assert.Equal(0, memory.Span(new GuestPhysical(line + length), 1)[0]);
        uint entries = memory.ReadUInt32(block + 0x24);
        Assert.Equal(BootInformation.BuildMemoryMap(16 << 20, kernel.ImageStart, kernel.ImageEnd).Count, (int)entries);
    }

    [Fact]
    public void Too_long_a_command_line_is_refused()
    {
        using var memory = new GuestMemory(4 << 20);
        var kernel = KernelLoader.Load(new KernelImageSource("code", [0xF4], KernelFormat.Flat), memory);
        var e = Assert.Throws<BadInputException>(() => BootInformation.Write(memory, new string('x', 5000), kernel));
        Assert.Contains("5000 bytes", e.Message);
    }

    [Fact]
    public void Identity_map_translates_every_ram_address_to_itself()
    {
        using var memory = new GuestMemory(64 << 20);
        var pml4 = LongModeSetup.BuildIdentityMap(memory);
        foreach (ulong address in new ulong[] { 0, 0x1234, 0x100000, 0x3FF_FFFF, 0xD000_0000, 0xFFFF_FFFF })
        {
            // Walk PML4 → PDPT → PD (2 MiB page), SDM Vol. 3A §4.5.4.
            ulong e4 = memory.ReadUInt64(pml4 + ((address >> 39) & 511) * 8);
            Assert.Equal(3UL, e4 & 3);
            ulong e3 = memory.ReadUInt64(new GuestPhysical((e4 & 0xF_FFFF_FFFF_F000) + ((address >> 30) & 511) * 8));
            Assert.Equal(3UL, e3 & 3);
            ulong e2 = memory.ReadUInt64(new GuestPhysical((e3 & 0xF_FFFF_FFFF_F000) + ((address >> 21) & 511) * 8));
            Assert.Equal(0x83UL, e2 & 0x87); // present, writable, large, supervisor-only
            Assert.Equal(address, (e2 & 0xF_FFFF_FFE0_0000) | (address & 0x1F_FFFF));
        }
    }

    [Fact]
    public void Initial_state_is_long_mode_cpl0_interrupts_off_with_rdi_at_boot_information()
    {
        using var memory = new GuestMemory(4 << 20);
        var state = LongModeSetup.Prepare(memory, new GuestPhysical(0x100000), GuestMemoryLayout.BootInformation, true);
        Assert.Equal(0x100000UL, state.Rip);
        Assert.Equal(0x2000UL, state.Rdi);
        Assert.Equal(0x80000UL, state.Rsp);
        Assert.False(state.InterruptsEnabled);
        Assert.Equal(0, state.PrivilegeLevel);
        Assert.True(state.Cs.LongMode);
        Assert.NotEqual(0UL, state.Cr0 & (1UL << 31));
        Assert.NotEqual(0UL, state.Efer & (1UL << 10));
    }

    [Fact]
    public void Multiboot_image_is_an_elf64_nestor_can_load_with_a_valid_multiboot_header()
    {
        byte[] payload = [0xF4];
        byte[] image = MultibootImage.Build(payload);
        using var memory = new GuestMemory(4 << 20);
        var kernel = KernelLoader.Load(new KernelImageSource("mb", image, KernelFormat.Elf), memory);
        Assert.Equal(MultibootImage.PayloadAddress, kernel.Entry.Value);
        Assert.Equal(0xF4, memory.Span(kernel.Entry, 1)[0]);
        // Multiboot header: magic, flags, checksum summing to zero, within the first 8 KiB, 4-byte aligned.
        int at = Enumerable.Range(0, 8192 / 4).Select(i => i * 4).First(o => BitConverter.ToUInt32(image, o) == 0x1BADB002);
        uint sum = BitConverter.ToUInt32(image, at) + BitConverter.ToUInt32(image, at + 4) + BitConverter.ToUInt32(image, at + 8);
        Assert.Equal(0u, sum);
        Assert.NotEqual(0u, BitConverter.ToUInt32(image, at + 4) & (1u << 16));
    }
}
