using System.Diagnostics;
using System.Text;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests.Boot;

/// <summary>Multiboot v1 as QEMU's <c>-kernel</c> and GRUB load it: ELF32 and ELF64 kernels by their program
/// headers, the a.out kludge, kernels below 1 MiB, modules, the information structure, the refusals. Every kernel is
/// booted on the software machine and reports what it was given on COM1.</summary>
public class MultibootBootTests
{
    private static readonly MultibootModule[] TwoModules =
    [
        new("first.bin", Encoding.ASCII.GetBytes("HELLO"), "x=1"),
        new("second.bin", Encoding.ASCII.GetBytes("WORLD")),
    ];

    private static (uint? Status, string Serial, Vm Vm) Boot(byte[] kernel, string commandLine = "a b", IReadOnlyList<MultibootModule>? modules = null,
        ulong memory = 64UL << 20, TextWriter? diagnostics = null)
    {
        var serial = new MemoryStream();
        var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Kernel = new KernelImageSource("kernel.elf", kernel, KernelFormat.Elf),
            MemoryBytes = memory,
            CommandLine = commandLine,
            Multiboot = true,
            Modules = modules ?? [],
            SerialOutput = serial,
            Diagnostics = diagnostics ?? TextWriter.Null,
            Timeout = TimeSpan.FromSeconds(60),
        });
        using var engine = new SimEngine();
        var outcome = vm.Run(engine).Outcome;
        vm.Serial.Flush();
        return (outcome.GuestStatus, Encoding.ASCII.GetString(serial.ToArray()), vm);
    }

    [Theory]
    [InlineData(1, 0x200000u)]
    [InlineData(2, 0x200000u)]
    [InlineData(1, 0x400000u)] // where kvm-unit-tests' images load
    public void An_ELF_kernel_without_the_kludge_is_loaded_by_its_program_headers(int elfClass, uint address)
    {
        var (status, serial, vm) = Boot(MultibootTestKernel.Elf(elfClass, address));
        using (vm)
        {
            Assert.Equal("Nestor|kernel.elf a b|\n", serial);
            Assert.Equal(639u - 600, status);
            Assert.Equal(address, vm.Kernel.ImageStart.Value);
            Assert.Equal(address + 16UL, vm.InitialState.Rip);
        }
    }

    [Fact]
    public void An_ELF_entry_at_a_virtual_address_enters_where_its_segment_was_loaded()
    {
        var (status, serial, vm) = Boot(MultibootTestKernel.Elf(1, 0x300000, virtualAddress: 0xC0300000));
        using (vm)
        {
            Assert.Equal("Nestor|kernel.elf a b|\n", serial);
            Assert.Equal(39u, status);
            Assert.Equal(0x300010UL, vm.InitialState.Rip);
        }
    }

    [Theory]
    [InlineData(0x8000u)]   // where Nestor's Multiboot GDT used to be
    [InlineData(0x20000u)]
    [InlineData(0x100000u)]
    public void A_kludge_kernel_loads_anywhere_the_memory_map_calls_RAM_below_1_MiB_too(uint address)
    {
        var (status, serial, vm) = Boot(MultibootTestKernel.Kludge(address), "k", TwoModules);
        using (vm)
        {
            Assert.Equal("Nestor|kernel.elf k| first.bin x=1=HELLO second.bin=WORLD\n", serial);
            Assert.Equal(39u, status);
            Assert.Equal(address, vm.Kernel.ImageStart.Value);
        }
    }

    [Fact]
    public void The_information_structure_has_the_memory_map_modules_and_name_and_lies_clear_of_the_kernel()
    {
        var (_, _, vm) = Boot(MultibootTestKernel.Elf(1, 0x100000), "", TwoModules, memory: 32UL << 20);
        using (vm)
        {
            var memory = vm.Memory;
            var info = vm.MultibootInformation!.Value;
            uint flags = memory.ReadUInt32(info);
            Assert.Equal((1u << 0) | (1u << 2) | (1u << 3) | (1u << 6) | (1u << 9), flags);
            Assert.Equal(639u, memory.ReadUInt32(info + 4));
            Assert.Equal((32u << 10) - 1024, memory.ReadUInt32(info + 8));
            // The map: RAM to the EBDA, the EBDA and BIOS area reserved, RAM from 1 MiB to the end.
            uint length = memory.ReadUInt32(info + 44), map = memory.ReadUInt32(info + 48);
            var entries = new List<(ulong Base, ulong Length, uint Type)>();
            for (uint o = 0; o < length; o += 24)
            {
                Assert.Equal(20u, memory.ReadUInt32(new GuestPhysical(map + o)));
                entries.Add((memory.ReadUInt64(new GuestPhysical(map + o + 4)), memory.ReadUInt64(new GuestPhysical(map + o + 12)),
                    memory.ReadUInt32(new GuestPhysical(map + o + 20))));
            }
            Assert.Equal(
                [(0UL, 0x9FC00UL, 1u), (0x9FC00UL, 0x400UL, 2u), (0xE0000UL, 0x20000UL, 2u), (0x100000UL, (32UL << 20) - 0x100000, 1u)],
                entries);
            // Modules page-aligned, in order, beside (not over) the kernel and the information block.
            uint mods = memory.ReadUInt32(info + 24);
            Assert.Equal(2u, memory.ReadUInt32(info + 20));
            var ranges = new List<(ulong Start, ulong End)> { (vm.Kernel.ImageStart.Value, vm.Kernel.ImageEnd.Value), (info.Value, info.Value + 0x200) };
            ulong previous = 0;
            for (uint i = 0; i < 2; i++)
            {
                uint start = memory.ReadUInt32(new GuestPhysical(mods + i * 16)), end = memory.ReadUInt32(new GuestPhysical(mods + i * 16 + 4));
                Assert.Equal(0u, start & 0xFFF);
                Assert.Equal(5u, end - start);
                Assert.True(start > previous);
                previous = start;
                ranges.Add((start, end));
            }
            for (int i = 0; i < ranges.Count; i++)
            {
                for (int j = i + 1; j < ranges.Count; j++)
                {
                    Assert.False(ranges[i].Start < ranges[j].End && ranges[j].Start < ranges[i].End, $"ranges {i} and {j} overlap");
                }
            }
            uint name = memory.ReadUInt32(info + 64);
            Assert.Equal("Nestor\0", Encoding.ASCII.GetString(memory.Span(new GuestPhysical(name), 7)));
            Assert.True(info.Value + MultibootLoader.InformationSize <= 32UL << 20);
            Assert.True(info.Value > vm.Kernel.ImageEnd.Value, "the information block is placed high, above the kernel");
        }
    }

    [Fact]
    public void The_boot_structures_move_below_1_MiB_when_the_kernel_fills_extended_memory()
    {
        // 4 MiB of RAM; the kernel's bss reaches its last page.
        byte[] kernel = MultibootTestKernel.Kludge(0x100000);
        uint bssEnd = 4u << 20;
        BitConverter.TryWriteBytes(kernel.AsSpan(24), bssEnd);
        BitConverter.TryWriteBytes(kernel.AsSpan(8), unchecked(0u - MultibootTestKernel.Magic - (1u << 16)));
        var (status, serial, vm) = Boot(kernel, "", TwoModules, memory: 4UL << 20);
        using (vm)
        {
            Assert.Equal(39u, status);
            Assert.Contains("first.bin x=1=HELLO", serial);
            Assert.True(vm.MultibootInformation!.Value.Value < 0x9FC00);
        }
    }

    [Fact]
    public void A_video_mode_request_is_ignored_with_a_warning()
    {
        var diagnostics = new StringWriter();
        var (status, _, vm) = Boot(MultibootTestKernel.Elf(1, 0x200000, flags: 1u << 2), diagnostics: diagnostics);
        vm.Dispose();
        Assert.Equal(39u, status);
        Assert.Contains("video mode", diagnostics.ToString());
    }

    [Theory]
    [InlineData(0xF0000u, "BIOS area")]     // over the ACPI tables
    [InlineData(0xA0000u, "VGA window")]
    [InlineData(0x8000000u, "not inside guest RAM")]
    public void A_kernel_outside_the_RAM_of_the_memory_map_is_refused(uint address, string expected)
    {
        var e = Assert.Throws<BadInputException>(() => Boot(MultibootTestKernel.Kludge(address)));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Requirement_bits_Multiboot_does_not_define_are_refused()
    {
        var e = Assert.Throws<BadInputException>(() => Boot(MultibootTestKernel.Elf(1, 0x200000, flags: 1u << 3)));
        Assert.Contains("requirement bits 0x8", e.Message);
    }

    [Fact]
    public void Malformed_ELF_files_are_refused_with_what_is_wrong()
    {
        var wrongMachine = MultibootTestKernel.Elf(1, 0x200000, machine: 62);
        Assert.Contains("not i386", Assert.Throws<BadInputException>(() => Boot(wrongMachine)).Message);
        var truncated = MultibootTestKernel.Elf(2, 0x200000);
        BitConverter.TryWriteBytes(truncated.AsSpan(32), 0x7FFF_0000UL); // e_phoff past the end
        Assert.Contains("program header table", Assert.Throws<BadInputException>(() => Boot(truncated)).Message);
        var notElf = MultibootTestKernel.Header(0).Concat(new byte[64]).ToArray();
        Assert.Contains("not an ELF file", Assert.Throws<BadInputException>(() => Boot(notElf)).Message);
        var high = MultibootTestKernel.Elf(2, 0x200000);
        BitConverter.TryWriteBytes(high.AsSpan(64 + 24), 0x1_0020_0000UL); // p_paddr above 4 GiB
        Assert.Contains("not below 4 GiB", Assert.Throws<BadInputException>(() => Boot(high)).Message);
    }

    [Fact]
    public void Modules_that_do_not_fit_are_refused()
    {
        var big = new MultibootModule("big", new byte[3 << 20]);
        var e = Assert.Throws<BadInputException>(() => Boot(MultibootTestKernel.Elf(1, 0x100000), modules: [big], memory: 2UL << 20));
        Assert.Contains("do not fit", e.Message);
    }

    [Fact]
    public void A_module_option_names_the_file_and_its_command_line()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nestor-module-{Environment.ProcessId}-{Guid.NewGuid():N}");
        File.WriteAllText(path, "DATA");
        try
        {
            var module = MultibootModule.FromOption(path + ",a=1,b=2", 1 << 20);
            Assert.Equal(path, module.Name);
            Assert.Equal("a=1,b=2", module.CommandLine);
            Assert.Equal("DATA", Encoding.ASCII.GetString(module.Contents));
            var e = Assert.Throws<BadInputException>(() => MultibootModule.FromOption(path + "-missing", 1 << 20));
            Assert.Contains("module file", e.Message);
            Assert.Throws<BadInputException>(() => MultibootModule.FromOption(",x", 1 << 20));
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>The reference: QEMU TCG's <c>-kernel</c> with <c>-initrd</c> gives the same kernel the same modules
    /// and mem_lower (its boot loader name is its own, and it names modules by their whole path).</summary>
    [Fact]
    public void QEMU_boots_the_same_ELF32_kernel_with_the_same_modules()
    {
        string directory = Directory.CreateTempSubdirectory("nestor-mb-").FullName;
        try
        {
            string kernel = Path.Combine(directory, "kernel.elf");
            File.WriteAllBytes(kernel, MultibootTestKernel.Elf(1, 0x200000));
            File.WriteAllText(Path.Combine(directory, "first.bin"), "HELLO");
            File.WriteAllText(Path.Combine(directory, "second.bin"), "WORLD");
            var info = new ProcessStartInfo("qemu-system-x86_64") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = directory };
            foreach (var a in new[] { "-accel", "tcg", "-m", "64M", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-kernel", "kernel.elf", "-append", "a b", "-initrd", "first.bin x=1,second.bin" })
            {
                info.ArgumentList.Add(a);
            }
            using var qemu = Process.Start(info)!;
            string output = qemu.StandardOutput.ReadToEnd();
            Assert.True(qemu.WaitForExit(60_000));
            var (status, serial, vm) = Boot(MultibootTestKernel.Elf(1, 0x200000), "a b", TwoModules);
            vm.Dispose();
            Assert.Equal((int)(status!.Value << 1 | 1), qemu.ExitCode);
            static string Modules(string s) => s[(s.LastIndexOf('|') + 1)..].Trim();
            Assert.Equal("first.bin x=1=HELLO second.bin=WORLD", Modules(output));
            Assert.Equal(Modules(output), Modules(serial));
            Assert.EndsWith("|kernel.elf a b|", output[..(output.LastIndexOf('|') + 1)]);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
