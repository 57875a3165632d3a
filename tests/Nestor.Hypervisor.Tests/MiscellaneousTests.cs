using System.Text.Json;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Capabilities;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.State;
using Nestor.Kvm;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests;

public class MiscellaneousTests
{
    [Theory]
    [InlineData("64M", 64UL << 20)]
    [InlineData("1G", 1UL << 30)]
    [InlineData("512k", 512UL << 10)]
    [InlineData("4096", 4096UL)]
    [InlineData("2MiB", 2UL << 20)]
    public void Sizes_parse(string text, ulong bytes) => Assert.Equal(bytes, Size.Parse(text, "--memory"));

    [Theory]
    [InlineData("")]
    [InlineData("lots")]
    [InlineData("-5M")]
    [InlineData("99999999999999999999G")]
    public void Bad_sizes_say_how_to_write_one(string text)
    {
        var e = Assert.Throws<BadInputException>(() => Size.Parse(text, "--memory"));
        Assert.Contains("64M", e.Advice);
    }

    [Theory]
    [InlineData(1UL << 20)]
    [InlineData(32UL << 30)]
    [InlineData((64UL << 20) + 1)]
    public void Memory_out_of_range_or_unaligned_is_refused(ulong bytes)
    {
        var config = new VmConfig { Kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat), MemoryBytes = bytes };
        Assert.Throws<BadInputException>(config.Validate);
    }

    [Fact]
    public void Kernel_files_that_cannot_be_read_are_reported()
    {
        Assert.Contains("does not exist", Assert.Throws<BadInputException>(() => KernelImageSource.FromFile("/no/such/kernel", KernelFormat.Elf)).Message);
        Assert.Contains("directory", Assert.Throws<BadInputException>(() => KernelImageSource.FromFile("/tmp", KernelFormat.Elf)).Message);
        string empty = Path.GetTempFileName();
        Assert.Contains("empty", Assert.Throws<BadInputException>(() => KernelImageSource.FromFile(empty, KernelFormat.Elf)).Message);
    }

    [Fact]
    public void Guest_cpuid_announces_nestor_and_drops_kvm_paravirtual_leaves()
    {
        KvmCpuidEntry[] host =
        [
            new() { Function = 1, Ecx = 0x1 },
            new() { Function = 0x4000_0000, Ebx = 0x4B4D564B },
            new() { Function = 0x4000_0001, Eax = 0xFF },
        ];
        var guest = KvmEngine.GuestCpuid(host);
        Assert.DoesNotContain(guest, e => e.Function == 0x4000_0001);
        var leaf = Assert.Single(guest, e => e.Function == 0x4000_0000);
        var signature = new byte[12];
        BitConverter.TryWriteBytes(signature, leaf.Ebx);
        BitConverter.TryWriteBytes(signature.AsSpan(4), leaf.Ecx);
        BitConverter.TryWriteBytes(signature.AsSpan(8), leaf.Edx);
        Assert.Equal("NestorNestor", System.Text.Encoding.ASCII.GetString(signature));
        Assert.Equal(0x8000_0001u, guest.Single(e => e.Function == 1).Ecx);
    }

    [Fact]
    public void State_json_writes_64_bit_values_as_hex_strings()
    {
        var state = new VcpuState { Rax = 0xFEDC_BA98_7654_3210, Rip = 0x100000, Cr0 = 0x8001_0033 };
        using var document = JsonDocument.Parse(VcpuStateWriter.ToJson(state));
        var root = document.RootElement;
        Assert.Equal("0xfedcba9876543210", root.GetProperty("rax").GetString());
        Assert.Equal("0x100000", root.GetProperty("rip").GetString());
        Assert.Equal("0x80010033", root.GetProperty("cr0").GetString());
        foreach (string name in new[] { "rbx", "r15", "rflags", "cr2", "cr3", "cr4", "efer" })
        {
            Assert.StartsWith("0x", root.GetProperty(name).GetString());
        }
        Assert.Equal("0x0", root.GetProperty("segments").GetProperty("cs").GetProperty("selector").GetString());
    }

    [Fact]
    public void Requirement_scan_finds_the_instructions_that_need_exceptions_and_user_mode()
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            a.nop();
            a.lidt(__[rax]);
            a.@int(0x80);
            a.sysretq();
            a.popcnt(rax, rbx);
            a.hlt();
        });
        using var memory = new GuestMemory(4 << 20);
        var kernel = KernelLoader.Load(GuestAssembler.Flat("scan", code), memory);
        var needs = GuestRequirementScanner.Scan(kernel);
        Assert.Equal([GuestFeature.ExceptionDelivery, GuestFeature.UserMode, GuestFeature.Popcnt], needs.Select(n => n.Feature));
        Assert.Equal(0x100001UL, needs[0].Address);
        Assert.Contains("lidt", needs[0].Instruction);
    }

    [Fact]
    public void Straight_line_ring0_code_has_no_requirements()
    {
        using var memory = new GuestMemory(4 << 20);
        var kernel = KernelLoader.Load(BuiltInGuests.Get("hello"), memory);
        Assert.Empty(GuestRequirementScanner.Scan(kernel));
    }
}
