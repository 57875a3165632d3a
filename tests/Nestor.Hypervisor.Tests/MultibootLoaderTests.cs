using System.Text;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests;

public class MultibootLoaderTests
{
    [Fact]
    public void A_kludge_image_is_loaded_and_entered_in_32_bit_protected_mode_with_the_information_structure()
    {
        byte[] image = MultibootImage.Build([0x90, 0xF4]);
        using var memory = new GuestMemory(16 << 20);
        var (kernel, state, info, _) = MultibootLoader.Load(new KernelImageSource("image.elf", image, KernelFormat.Elf), memory, "a b");
        Assert.Equal(0x2BADB002UL, state.Rax);
        Assert.Equal(info.Value, state.Rbx);
        Assert.Equal(0x1000A0UL, state.Rip);                      // the shim's 32-bit entry (header entry_addr)
        Assert.False(state.Cs.LongMode);
        Assert.True(state.Cs.DefaultBig);
        Assert.Equal(0UL, state.Cr0 & (1UL << 31));               // paging off
        Assert.Equal(0x90, memory.Span(new GuestPhysical(MultibootImage.PayloadAddress), 1)[0]);
        Assert.Equal((1u << 0) | (1u << 2) | (1u << 6) | (1u << 9), memory.ReadUInt32(info));
        Assert.Equal((16u << 10) - 1024, memory.ReadUInt32(info + 8)); // mem_upper in KiB above 1 MiB
        uint line = memory.ReadUInt32(info + 16);
        Assert.Equal("image.elf a b", Encoding.ASCII.GetString(memory.Span(new GuestPhysical(line), 13)));
        uint mapLength = memory.ReadUInt32(info + 44), map = memory.ReadUInt32(info + 48);
        ulong usable = 0;
        for (uint o = 0; o < mapLength; o += 24)
        {
            if (memory.ReadUInt32(new GuestPhysical(map + o + 20)) == 1)
            {
                usable += memory.ReadUInt64(new GuestPhysical(map + o + 12));
            }
        }
        Assert.InRange(usable, 15UL << 20, 16UL << 20);
        Assert.Equal(MultibootImage.LoadAddress, kernel.ImageStart.Value);
    }

    [Fact]
    public void A_kernel_without_a_multiboot_header_is_refused()
    {
        using var memory = new GuestMemory(4 << 20);
        var e = Assert.Throws<BadInputException>(() =>
            MultibootLoader.Load(new KernelImageSource("plain", new byte[9000], KernelFormat.Elf), memory, ""));
        Assert.Contains("no Multiboot header", e.Message);
    }
}
