using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Reference;

namespace Nestor.Integration.Tests;

/// <summary>Boots NestorOS on the reference machine (QEMU TCG) once with its default workload, and checks every
/// program's RESULT line against values computed here independently (timing fields excluded).</summary>
public sealed class NestorOSDefaultWorkload
{
    public NestorOSDefaultWorkload()
    {
        (Outcome, Output) = NestorOSOnQemu.Boot("");
        Results = Regex.Matches(Output, @"^RESULT (\S+)(.*)$", RegexOptions.Multiline)
            .Select(m => (m.Groups[1].Value, Fields(m.Groups[2].Value)))
            .ToList();
    }

    public QemuOutcome Outcome { get; }

    public string Output { get; }

    public List<(string Program, Dictionary<string, string> Fields)> Results { get; }

    public Dictionary<string, string> Single(string program) => Results.Single(r => r.Program == program).Fields;

    private static Dictionary<string, string> Fields(string text) =>
        text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => f[1]);
}

public class NestorOSOnQemu(NestorOSDefaultWorkload run) : IClassFixture<NestorOSDefaultWorkload>
{
    internal static (QemuOutcome Outcome, string Output) Boot(string commandLine, ulong memoryBytes = 64UL << 20)
    {
        string path = NestorProcess.WriteTemp(BuiltInGuests.NestorOS(), ".elf");
        var serial = new MemoryStream();
        var outcome = QemuReferenceMachine.Run(path, memoryBytes, commandLine, serial, TimeSpan.FromMinutes(3));
        File.Delete(path);
        Assert.False(outcome.TimedOut, $"NestorOS did not finish '{commandLine}' on QEMU within 3 minutes");
        return (outcome, Encoding.UTF8.GetString(serial.ToArray()));
    }

    [Fact]
    public void Boots_by_multiboot_runs_every_program_and_exits_with_status_zero()
    {
        Assert.True(run.Outcome.GuestStatus == 0, run.Output + run.Outcome.Diagnostics);
        Assert.Contains("NestorOS: booted by Multiboot", run.Output);
        var init = run.Single("init");
        Assert.Equal("13", init["programs"]);
        Assert.Equal("0", init["failures"]);
        Assert.Equal(
            ["hello", "syscall", "forkwait", "pagefault", "ptchurn", "memtouch", "memtouch", "memtouch", "compute", "sensitive", "fault", "preempt", "mmutest", "mmutest_smap", "mmutest_user", "init"],
            run.Results.Select(r => r.Program));
    }

    [Fact]
    public void No_frame_is_leaked_by_the_whole_workload()
    {
        var m = Regex.Match(run.Output, @"(\d+) frames free \((\d+) when init started\)");
        Assert.True(m.Success, run.Output);
        Assert.Equal(m.Groups[2].Value, m.Groups[1].Value);
    }

    [Fact]
    public void Process_programs_report_what_they_did()
    {
        Assert.Equal("2", run.Single("hello")["pid"]);
        var syscall = run.Single("syscall");
        Assert.Equal("1000", syscall["count"]);
        Assert.Equal("3", syscall["pid"]);
        var forkwait = run.Single("forkwait");
        Assert.Equal("100", forkwait["count"]);
        Assert.Equal("0", forkwait["failures"]);
        Assert.True(ulong.Parse(forkwait["total_cycles"]) > 0);
    }

    [Fact]
    public void Memory_programs_see_zeroed_private_pages()
    {
        var pagefault = run.Single("pagefault");
        Assert.Equal(("100", "100"), (pagefault["count"], pagefault["sum"]));
        var churn = run.Single("ptchurn");
        Assert.Equal("50", churn["count"]);
        Assert.Equal((50 * Enumerable.Range(0, 16).Sum()).ToString(), churn["sum"]);
        foreach (var (program, fields) in run.Results.Where(r => r.Program == "memtouch"))
        {
            Assert.Equal(MemtouchChecksum(int.Parse(fields["size_mb"]), fields["mode"]).ToString(), fields["checksum"]);
            Assert.Equal("4096", fields["touches"]);
        }
    }

    [Fact]
    public void Compute_matches_an_independent_sieve_and_crc()
    {
        var compute = run.Single("compute");
        int n = int.Parse(compute["n"]);
        var sieve = new byte[n + 1];
        Array.Fill(sieve, (byte)1);
        sieve[0] = sieve[1] = 0;
        for (int i = 2; (long)i * i <= n; i++)
        {
            if (sieve[i] != 0)
            {
                for (int j = i * i; j <= n; j += i)
                {
                    sieve[j] = 0;
                }
            }
        }
        Assert.Equal(sieve.Count(b => b == 1).ToString(), compute["primes"]);
        Assert.Equal(Crc32(sieve).ToString("x"), compute["crc"]);
    }

    [Fact]
    public void Sensitive_instructions_report_bare_metal_values()
    {
        var s = run.Single("sensitive");
        Assert.Equal("3", s["user_cpl"]);
        Assert.Equal("0", s["kernel_cpl"]);
        Assert.Equal("1", s["kernel_popf_cleared_if"]); // at CPL 0 POPF can clear IF (at CPL 1 > IOPL it silently cannot)
        Assert.Equal("55", s["sgdt_limit"]);      // the kernel's 7-entry GDT
        Assert.Equal("4095", s["sidt_limit"]);
        Assert.Equal("0", s["sldt"]);
        Assert.Equal("28", s["str"]);             // TSS selector 0x28
        Assert.Equal("33", s["smsw"]);            // CR0 low word: PE MP ET NE
    }

    [Fact]
    public void A_null_dereference_in_a_user_process_kills_only_that_process()
    {
        Assert.Matches(@"NestorOS: process \d+ \(fault\) killed: page fault at address 0x0", run.Output);
        var fault = run.Single("fault");
        Assert.Equal("142", fault["child_status"]); // 128 + vector 14
        Assert.Equal("1", fault["parent_survived"]);
    }

    [Fact]
    public void The_apic_timer_preempts_processes_that_never_yield()
    {
        var preempt = run.Single("preempt");
        Assert.Equal("0", preempt["child_status"]);
        Assert.Equal("1", preempt["preempted"]);
    }

    /// <summary>User-mode accesses to the 8 leaves (bit 0 U/S, bit 1 R/W, bit 2 XD) × read/write/fetch, as the SDM's
    /// rules give them (§4.6, §4.7): ff = allowed, else the error code (P=1, W=2, U=4, I/D=0x10).</summary>
    [Fact]
    public void The_mmu_matrix_from_user_mode_follows_the_sdm_on_the_reference_machine()
    {
        var expected = new StringBuilder();
        for (int page = 0; page < 8; page++)
        {
            bool user = (page & 1) != 0, writable = (page & 2) != 0, noExecute = (page & 4) != 0;
            expected.Append(user ? "ff" : "05");                                   // read
            expected.Append(user && writable ? "ff" : "07");                       // write
            expected.Append(user && !noExecute ? "ff" : "15");                     // fetch
        }
        Assert.Equal(expected.ToString(), run.Single("mmutest_user")["user"]);
        Assert.Equal("1", run.Single("mmutest")["smep"]);
        Assert.Equal("1", run.Single("mmutest")["smap"]);
    }

    [Fact]
    public void A_fault_in_the_kernel_panics_cleanly()
    {
        var (outcome, output) = Boot("panic-test");
        Assert.Equal(100u, outcome.GuestStatus);
        Assert.Contains("NestorOS panic: page fault (vector 14) in the kernel, error code 0x2, CR2=0x0", output);
    }

    [Fact]
    public void A_process_that_runs_out_of_memory_is_killed_with_a_message_and_nothing_leaks()
    {
        var (outcome, output) = Boot("pagefault 10000", 16UL << 20);
        Assert.Equal(1u, outcome.GuestStatus);
        Assert.Contains("(pagefault) killed", output);
        Assert.Contains("out of memory", output);
        var m = Regex.Match(output, @"(\d+) frames free \((\d+) when init started\)");
        Assert.True(m.Success, output);
        Assert.Equal(m.Groups[2].Value, m.Groups[1].Value);
    }

    [Fact]
    public void An_unknown_program_is_reported_and_init_fails()
    {
        var (outcome, output) = Boot("nosuchprogram 1");
        Assert.Equal(1u, outcome.GuestStatus);
        Assert.Contains("init: cannot run 'nosuchprogram'", output);
    }

    /// <summary>The memtouch checksum, from the same walk the program does (user/programs.c).</summary>
    private static ulong MemtouchChecksum(int mb, string mode)
    {
        ulong pages = (ulong)mb * 256;
        var values = new ulong[pages];
        for (ulong i = 0; i < pages; i++)
        {
            values[i] = i;
        }
        ulong step = mode switch { "rand" => 40503, "stride" => 512, _ => 1 };
        if (mode == "rand")
        {
            while (Gcd(step, pages) != 1)
            {
                step += 2;
            }
        }
        ulong checksum = 0;
        for (ulong pass = 0; pass < 4; pass++)
        {
            ulong index = pass;
            for (ulong i = 0; i < pages; i++)
            {
                index = (index + step) % pages;
                if (step == 512 && i % Math.Max(pages / 512, 1) == 0)
                {
                    index = (index + 1) % pages;
                }
                checksum += values[index]++;
            }
        }
        return checksum;
    }

    /// <summary>CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit.</summary>
    private static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
            {
                crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
            }
        }
        return ~crc;
    }

    private static ulong Gcd(ulong a, ulong b) => b == 0 ? a : Gcd(b, a % b);
}
