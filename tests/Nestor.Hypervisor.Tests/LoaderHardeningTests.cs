using System.Buffers.Binary;
using System.Diagnostics;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.State;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests;

/// <summary>Issue 10: kernel files are read only when they can be read to the end, malformed ELF files are refused
/// with the right reason and advice, sizes and ranges are printed exactly, and time limits of any length work.</summary>
public class LoaderHardeningTests
{
    private static KernelImageSource Elf(byte[] bytes) => new("test.elf", bytes, KernelFormat.Elf);

    [Fact]
    public void A_character_device_is_refused_as_not_a_regular_file()
    {
        // /dev/null reads as empty; the refusal must name what it is rather than call it an empty kernel.
        var e = Assert.Throws<BadInputException>(() => KernelImageSource.FromFile("/dev/null", KernelFormat.Flat));
        Assert.Contains("is a character device, not a regular file", e.Message);
    }

    [Fact]
    public async Task A_fifo_without_a_writer_is_refused_without_blocking()
    {
        string fifo = Path.Combine(Path.GetTempPath(), $"nestor-test-{Guid.NewGuid():N}.fifo");
        using (var mkfifo = Process.Start("mkfifo", fifo))
        {
            Assert.True(mkfifo.WaitForExit(10_000) && mkfifo.ExitCode == 0, "mkfifo failed");
        }
        try
        {
            var reading = Task.Run(() => KernelImageSource.FromFile(fifo, KernelFormat.Flat));
            await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(5)));
            if (!reading.IsCompleted)
            {
                // Unblock the reader (opening the other end lets its open return) so the test process can end.
                using (new FileStream(fifo, FileMode.Open, FileAccess.Write))
                {
                }
                Assert.Fail("reading a FIFO with no writer as a kernel blocked");
            }
            var e = await Assert.ThrowsAsync<BadInputException>(() => reading);
            Assert.Contains("is a FIFO (named pipe), not a regular file", e.Message);
        }
        finally
        {
            File.Delete(fifo);
        }
    }

    [Fact]
    public void A_file_larger_than_the_limit_is_refused_before_it_is_read()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nestor-test-{Guid.NewGuid():N}.bin");
        using (var f = File.Create(path))
        {
            f.SetLength(3 << 20); // sparse: no disk space
        }
        try
        {
            var e = Assert.Throws<BadInputException>(() => KernelImageSource.FromFile(path, KernelFormat.Flat, null, 2UL << 20));
            Assert.Contains("larger than guest RAM (2 MiB): it is 3 MiB", e.Message);
            Assert.Contains("--memory", e.Advice);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void The_elf_magic_is_checked_before_the_rest_of_a_large_file_is_read()
    {
        long requested = 0;
        int Read(Span<byte> buffer, long offset)
        {
            requested += buffer.Length;
            buffer.Fill((byte)'x');
            return buffer.Length;
        }
        var e = Assert.Throws<BadInputException>(() =>
            KernelImageSource.Read("big.txt", 64L << 20, KernelFormat.Elf, null, 64L << 20, Read));
        Assert.Contains("is not an ELF file", e.Message);
        Assert.True(requested <= 4, $"{requested} bytes were read before the magic was checked");
    }

    [Fact]
    public void A_file_whose_size_says_zero_is_still_read_to_its_end_within_the_limit()
    {
        // Files in /proc report size 0 and have contents.
        byte[] contents = [.. Enumerable.Range(0, 10_000).Select(i => (byte)i)];
        int Read(Span<byte> buffer, long offset)
        {
            int n = (int)Math.Min(buffer.Length, contents.Length - offset);
            contents.AsSpan((int)offset, n).CopyTo(buffer);
            return n;
        }
        var source = KernelImageSource.Read("/proc/like", 0, KernelFormat.Flat, null, 1 << 20, Read);
        Assert.Equal(contents, source.Contents);
        var e = Assert.Throws<BadInputException>(() => KernelImageSource.Read("/proc/like", 0, KernelFormat.Flat, null, 4096, Read));
        Assert.Contains("larger than guest RAM (4 KiB)", e.Message);
    }

    [Fact]
    public void An_elf_file_of_version_zero_is_refused()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, new TestElf.Segment(0x100000, [0xF4], 1));
        file[6] = 0; // e_ident[EI_VERSION]
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("ELF version 0", e.Message);
        Assert.Contains("EV_CURRENT", e.Message);
    }

    [Fact]
    public void A_segment_whose_file_range_wraps_around_2_to_the_64_says_so()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, new TestElf.Segment(0x100000, [0xF4], 1));
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(64 + 8), 0x1000);             // p_offset
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(64 + 32), ulong.MaxValue);     // p_filesz
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(64 + 40), ulong.MaxValue);     // p_memsz
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("wraps around 2^64", e.Message);
        Assert.DoesNotContain("0x1000..0xfff", e.Message);
    }

    [Fact]
    public void Flat_code_whose_range_wraps_around_2_to_the_64_says_so()
    {
        using var memory = new GuestMemory(4 << 20);
        var source = new KernelImageSource("code", new byte[0x2000], KernelFormat.Flat, new GuestPhysical(0xFFFF_FFFF_FFFF_F000));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(source, memory));
        Assert.Contains("wraps around 2^64", e.Message);
        Assert.DoesNotContain("more memory", e.Advice);
    }

    [Fact]
    public void A_segment_in_the_device_hole_is_not_told_to_give_more_memory()
    {
        using var memory = new GuestMemory(64 << 20);
        var file = TestElf.Build(0xC000_0000, new TestElf.Segment(0xC000_0000, [0xF4], 1));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("device hole", e.Message);
        Assert.DoesNotContain("more memory", e.Advice);
        Assert.Contains("below 0xc0000000", e.Advice);
    }

    [Fact]
    public void A_segment_beyond_the_largest_guest_is_told_to_load_lower_and_one_within_it_how_much_memory()
    {
        using var memory = new GuestMemory(4 << 20);
        var far = TestElf.Build(0x5_0000_0000, new TestElf.Segment(0x5_0000_0000, [0xF4], 1));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(far), memory));
        Assert.Contains("largest guest", e.Message);
        Assert.DoesNotContain("more memory", e.Advice);
        var near = TestElf.Build(0x100000, new TestElf.Segment(0x100000, [0xF4], 8 << 20));
        e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(near), memory));
        Assert.Contains("--memory 9M", e.Advice);
    }

    [Fact]
    public void An_entry_point_in_a_non_executable_segment_is_called_that()
    {
        using var memory = new GuestMemory(4 << 20);
        var file = TestElf.Build(0x100000, new TestElf.Segment(0x100000, [0xF4], 0x1000, Executable: false));
        var e = Assert.Throws<BadInputException>(() => KernelLoader.Load(Elf(file), memory));
        Assert.Contains("not executable", e.Message);
        Assert.DoesNotContain("loaded elsewhere", e.Message);
        Assert.DoesNotContain("virtual address", e.Message);
    }

    [Theory]
    [InlineData(4095UL, "4095 bytes")]
    [InlineData(1UL, "1 byte")]
    [InlineData(4096UL, "4 KiB")]
    [InlineData(1536UL << 20, "1.5 GiB")]
    [InlineData((64UL << 20) + 1, "67108865 bytes")]
    [InlineData(5UL << 29, "2.5 GiB")]
    public void Sizes_are_formatted_exactly(ulong bytes, string text)
    {
        Assert.Equal(text, Size.Format(bytes));
    }

    [Fact]
    public void An_out_of_range_memory_size_is_reported_to_the_byte()
    {
        var config = new VmConfig { Kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat), MemoryBytes = 4095 };
        var e = Assert.Throws<BadInputException>(config.Validate);
        Assert.Contains("4095 bytes", e.Message);
        Assert.DoesNotContain("4 KiB", e.Message);
    }

    [Fact]
    public void A_deadline_longer_than_a_timer_can_wait_is_armed_and_waited_for_in_steps()
    {
        // 2^32 ms and more make System.Threading.Timer throw; a Deadline of 100 days must simply be armed.
        using (var far = new Deadline(TimeSpan.FromDays(100), () => { }))
        {
            Assert.False(far.Expired);
        }
        using var fired = new ManualResetEventSlim();
        var clock = Stopwatch.StartNew();
        using var stepped = new Deadline(TimeSpan.FromMilliseconds(300), fired.Set, TimeSpan.FromMilliseconds(40));
        Assert.True(fired.Wait(TimeSpan.FromSeconds(10)), "the deadline never fired");
        // Each 40 ms step that ends before the limit re-arms instead of firing: never early.
        Assert.True(clock.Elapsed >= TimeSpan.FromMilliseconds(290), $"fired after {clock.ElapsedMilliseconds} ms");
    }

    [Fact]
    public void A_run_with_a_timeout_of_a_hundred_days_runs()
    {
        byte[] exit7 = [0xBA, 0xF4, 0, 0, 0, 0xB8, 7, 0, 0, 0, 0xEF, 0xF4]; // mov edx,0xf4; mov eax,7; out dx,eax; hlt
        using var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Kernel = new KernelImageSource("exit7", exit7, KernelFormat.Flat),
            Timeout = TimeSpan.FromDays(100),
        });
        using var engine = new SimEngine();
        var outcome = vm.Run(engine).Outcome;
        Assert.Equal(VmOutcomeKind.DebugExit, outcome.Kind);
        Assert.Equal(7u, outcome.GuestStatus);
    }

    [Fact]
    public void Run_control_keeps_the_first_stop_reason()
    {
        var control = new RunControl();
        control.Stop(VmOutcomeKind.Terminated);
        control.Stop(VmOutcomeKind.Timeout);
        control.Stop(VmOutcomeKind.Interrupted);
        Assert.Equal(VmOutcomeKind.Terminated, control.StopReason);
    }

    [Theory]
    [InlineData(VmOutcomeKind.Terminated, "SIGTERM")]
    [InlineData(VmOutcomeKind.HungUp, "SIGHUP")]
    [InlineData(VmOutcomeKind.Interrupted, "SIGINT")]
    public void A_stop_by_signal_names_the_signal(VmOutcomeKind kind, string signal)
    {
        var outcome = VmOutcomes.Stopped(kind, null, new VcpuState { Rip = 0x100000 });
        Assert.Equal(kind, outcome.Kind);
        Assert.Contains(signal, outcome.Message);
        Assert.Contains("rip=0x100000", outcome.Message);
    }
}
