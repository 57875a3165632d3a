using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary>Bad input is refused before any VM exists, with a message that says what to do and exit status 120;
/// a host without KVM gives 121.</summary>
public class InputErrorTests
{
    [Fact]
    public void A_file_that_is_not_elf_suggests_flat()
    {
        string file = WriteTemp("hello world"u8.ToArray(), ".txt");
        var r = Run("run", file);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("is not an ELF file", r.Stderr);
        Assert.Contains("--flat", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr); // no stack trace
    }

    [Fact]
    public void A_missing_kernel_is_reported()
    {
        var r = Run("run", "/no/such/kernel.elf");
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("does not exist", r.Stderr);
    }

    [Fact]
    public void An_unknown_built_in_guest_lists_every_built_in()
    {
        var r = Run("run", "builtin:nosuch");
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("there is no built-in guest 'nosuch'", r.Stderr);
        foreach (string name in new[] { "hello", "nestoros", "spin", "ticker", "smp-spin" })
        {
            Assert.Contains(name, r.Stderr[r.Stderr.IndexOf("Built-in guests", StringComparison.Ordinal)..]);
        }
    }

    [Theory]
    [InlineData("--memory", "lots", "is not a size")]
    [InlineData("--memory", "1K", "out of range")]
    [InlineData("--engine", "vmware", "no engine")]
    [InlineData("--timeout", "0", "not a positive number")]
    [InlineData("--load-addr", "0x10", "boot structures")]
    [InlineData("--clock", "sundial", "unknown clock 'sundial'")]
    public void Bad_options_are_refused(string option, string value, string message)
    {
        string file = WriteTemp([0xF4], ".bin");
        var r = Run("run", "--flat", file, option, value);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains(message, r.Stderr);
    }

    [Theory]
    [InlineData("there is no technique", "--technique", "magic")]
    [InlineData("runs on Nestor's software machine", "--technique", "hw", "--engine", "kvm")]
    [InlineData("--technique native has no VMM", "--mmu", "nested")]
    [InlineData("no memory virtualization", "--technique", "hw", "--mmu", "paging")]
    [InlineData("not a page size", "--technique", "hw", "--nested-pages", "1g")]
    [InlineData("nested paging is a hardware feature", "--technique", "trap", "--mmu", "nested")]
    [InlineData("the ways must divide the entries", "--tlb", "64:5")]
    [InlineData("is not ENTRIES[:WAYS]", "--nested-tlb", "lots")]
    [InlineData("not a number of entries", "--pwc", "5000")]
    [InlineData("--deterministic and --clock host do not go together", "--clock", "host", "--deterministic")]
    public void Bad_technique_options_are_refused(string message, params string[] options)
    {
        string file = WriteTemp([0xF4], ".bin");
        var r = Run(["run", "--flat", file, .. options]);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains(message, r.Stderr);
    }

    [Fact]
    public void An_unknown_option_is_bad_input()
    {
        var r = Run("run", "--no-such-option");
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("--help", r.Stderr);
    }

    [Fact]
    public void No_kvm_device_says_what_to_do()
    {
        var r = Run("run", "--engine", "kvm", "--kvm-device", "/dev/no-kvm-here");
        Assert.True(r.ExitCode == 121, r.ToString());
        Assert.Contains("KVM is not available", r.Stderr);
        Assert.Contains("kvm_intel or kvm_amd", r.Stderr);
    }
}
