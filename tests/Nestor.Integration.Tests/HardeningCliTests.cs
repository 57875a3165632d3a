using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Iced.Intel;
using Nestor.Cli.Commands;
using Nestor.Hypervisor.Capabilities;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary>Issue 10: the real <c>nestor</c> command given hostile or mistaken input, signals and concurrent runs.
/// Every process started here is killed in a finally, and every temporary file deleted.</summary>
public class HardeningCliTests
{
    private const int SigHup = 1, SigInt = 2, SigTerm = 15;

    // ---- Guests ----------------------------------------------------------------------------------------------

    private static void Print(Assembler a, string text)
    {
        a.mov(dx, 0x3F8);
        foreach (char c in text)
        {
            a.mov(al, (byte)c);
            a.@out(dx, al);
        }
    }

    private static void Exit(Assembler a, uint status)
    {
        a.mov(dx, 0xF4);
        a.mov(eax, status);
        a.@out(dx, eax);
        a.hlt();
    }

    /// <summary>Prints <paramref name="line"/>, then a tail with no newline (which the UART holds until the run
    /// ends), then loops for ever.</summary>
    private static string LoopingGuest(string line = "ready\n", string tail = "tail")
    {
        return FlatGuest(a =>
        {
            Print(a, line);
            Print(a, tail);
            var forever = a.CreateLabel();
            a.Label(ref forever);
            a.jmp(forever);
        });
    }

    /// <summary>Prints "ready", then one <c>rep stosb</c> of 2^34 bytes (16 GiB, minutes of work for the
    /// interpreter) over 512 GiB..528 GiB of linear addresses that its own page tables map onto one 2 MiB page of
    /// RAM, then exits with 7.</summary>
    private static string LongRepStosGuest() => FlatGuest(a =>
    {
        var fill = a.CreateLabel();
        var fill2 = a.CreateLabel();
        // PD at 0x401000: 512 entries, each the 2 MiB page at 0x600000 (P, RW, PS).
        a.mov(rdi, 0x401000);
        a.mov(rax, 0x600083);
        a.mov(ecx, 512);
        a.Label(ref fill);
        a.mov(__qword_ptr[rdi], rax);
        a.add(rdi, 8);
        a.dec(ecx);
        a.jnz(fill);
        // PDPT at 0x400000: 512 entries, each that PD.
        a.mov(rdi, 0x400000);
        a.mov(rax, 0x401003);
        a.mov(ecx, 512);
        a.Label(ref fill2);
        a.mov(__qword_ptr[rdi], rax);
        a.add(rdi, 8);
        a.dec(ecx);
        a.jnz(fill2);
        // PML4[1] (512 GiB..1 TiB) of the boot identity map at 0x10000 = that PDPT; reload CR3.
        a.mov(rax, 0x400003);
        a.mov(rdi, 0x10008);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(rax, cr3);
        a.mov(cr3, rax);
        Print(a, "ready\n");
        a.mov(rdi, 1UL << 39);
        a.mov(rcx, 1UL << 34);
        a.xor(eax, eax);
        a.rep.stosb();
        Exit(a, 7);
    });

    // ---- A nestor running in the background ------------------------------------------------------------------

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);

    /// <summary><c>nestor</c> started in the background, its output collected as it comes.</summary>
    private sealed class Background : IDisposable
    {
        private readonly Process process;
        private readonly StringBuilder stdout = new(), stderr = new();
        private readonly Task pumps;

        public Background(string? workingDirectory, params string[] args)
        {
            // Through env(1), with the signals the tests send set back to their default action: a test run started
            // in the background by a non-interactive shell (a CI script, `scripts/test &`) ignores SIGINT, and a
            // process inherits that, so nestor would rightly never see the Ctrl-C these tests send.
            var info = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true };
            if (workingDirectory is not null)
            {
                info.WorkingDirectory = workingDirectory;
            }
            info.ArgumentList.Add("--default-signal=INT,TERM,HUP");
            info.ArgumentList.Add("dotnet");
            info.ArgumentList.Add("exec");
            info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "nestor.dll"));
            foreach (var a in args)
            {
                info.ArgumentList.Add(a);
            }
            process = Process.Start(info)!;
            pumps = Task.WhenAll(Pump(process.StandardOutput, stdout), Pump(process.StandardError, stderr));
        }

        private static async Task Pump(StreamReader from, StringBuilder into)
        {
            var buffer = new char[4096];
            int n;
            while ((n = await from.ReadAsync(buffer)) > 0)
            {
                lock (into)
                {
                    into.Append(buffer, 0, n);
                }
            }
        }

        public string Stdout
        {
            get
            {
                lock (stdout)
                {
                    return stdout.ToString();
                }
            }
        }

        public bool HasExited => process.HasExited;

        /// <summary>Polls <paramref name="condition"/> until it holds, the process ends, or the time is up.</summary>
        public bool WaitUntil(Func<bool> condition, TimeSpan limit)
        {
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < limit)
            {
                if (condition())
                {
                    return true;
                }
                if (process.HasExited)
                {
                    pumps.Wait(TimeSpan.FromSeconds(10)); // all of its output, then one last look
                    return condition();
                }
                Thread.Sleep(50);
            }
            return false;
        }

        public void Signal(int signal) => Assert.Equal(0, Kill(process.Id, signal));

        /// <summary>The result once the process has ended, or null if it is still running after <paramref name="limit"/>.</summary>
        public NestorResult? WaitForExit(TimeSpan limit)
        {
            if (!process.WaitForExit(limit))
            {
                return null;
            }
            pumps.Wait(TimeSpan.FromSeconds(10));
            lock (stderr)
            {
                return new NestorResult(process.ExitCode, Stdout, stderr.ToString());
            }
        }

        public void Dispose()
        {
            try
            {
                if (!process.HasExited)
                {
                    process.Kill(entireProcessTree: true);
                    process.WaitForExit(10_000);
                }
            }
            finally
            {
                process.Dispose();
            }
        }
    }

    private static string TempPath(string extension) => NestorProcess.TempPath(extension);

    private static void Delete(params string[] paths)
    {
        foreach (var path in paths)
        {
            if (File.Exists(path))
            {
                File.Delete(path);
            }
        }
    }

    private static void AssertNoStackTrace(NestorResult r) => Assert.DoesNotContain("   at ", r.Stderr);

    // ---- 1. Kernels that are not regular files, too large, or slow to load ----------------------------------

    [Theory]
    [InlineData("/dev/zero", "a character device")]
    [InlineData("/dev/urandom", "a character device")]
    public void A_device_as_kernel_is_refused_at_once(string device, string kind)
    {
        var r = Run(TimeSpan.FromSeconds(30), "run", "--flat", device);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains($"is {kind}, not a regular file", r.Stderr);
        AssertNoStackTrace(r);
    }

    [Fact]
    public void A_fifo_with_no_writer_as_kernel_is_refused_at_once()
    {
        string fifo = TempPath(".fifo");
        using (var mkfifo = Process.Start("mkfifo", fifo))
        {
            Assert.True(mkfifo.WaitForExit(10_000) && mkfifo.ExitCode == 0, "mkfifo failed");
        }
        try
        {
            var r = Run(TimeSpan.FromSeconds(30), "run", fifo);
            Assert.True(r.ExitCode == 120, r.ToString());
            Assert.Contains("is a FIFO (named pipe), not a regular file", r.Stderr);
        }
        finally
        {
            Delete(fifo);
        }
    }

    [Fact]
    public void A_kernel_larger_than_guest_ram_is_refused_unread()
    {
        string big = TempPath(".bin");
        using (var f = File.Create(big))
        {
            f.SetLength(40 << 20); // sparse
        }
        try
        {
            var r = Run("run", "--flat", big, "--memory", "32M");
            Assert.True(r.ExitCode == 120, r.ToString());
            Assert.Contains("is larger than guest RAM (32 MiB): it is 40 MiB", r.Stderr);
            Assert.Contains("not read", r.Stderr);
        }
        finally
        {
            Delete(big);
        }
    }

    [Fact]
    public void A_sim_time_out_under_the_virtual_clock_says_how_much_guest_time_passed_and_offers_the_host_clock()
    {
        // builtin:spin never ends: under the virtual clock the message measures the guest's time and names --clock
        // host (kvm-unit-tests' vmexit waits for 2^30 TSC ticks); under --clock host the advice would be pointless.
        var r = Run("run", "builtin:spin", "--timeout", "1");
        Assert.True(r.ExitCode == 124, r.ToString());
        Assert.Matches(@"the guest's clock counted [0-9.]+ s in [0-9.]+ s of wall time", r.Stderr);
        Assert.Contains("--clock host", r.Stderr);
        var host = Run("run", "builtin:spin", "--timeout", "1", "--clock", "host");
        Assert.True(host.ExitCode == 124, host.ToString());
        Assert.DoesNotContain("--clock host", host.Stderr);
    }

    [Fact]
    public void The_timeout_covers_loading_too()
    {
        // 48 MiB to read and copy into guest RAM take far longer than 1 ms, so the limit passes while loading.
        string big = TempPath(".bin");
        using (var f = File.Create(big))
        {
            f.SetLength(48 << 20);
        }
        try
        {
            var r = Run("run", "--flat", big, "--timeout", "0.001");
            Assert.True(r.ExitCode == 124, r.ToString());
            Assert.Contains("expired while Nestor was still loading", r.Stderr);
        }
        finally
        {
            Delete(big);
        }
    }

    // ---- 2. Timeouts of any size, and parse errors in Nestor's words -----------------------------------------

    [Theory]
    [InlineData("5000000")]     // more than System.Threading.Timer's 4,294,967 s
    [InlineData("1e300")]       // more than TimeSpan holds
    public void A_huge_timeout_is_accepted(string seconds)
    {
        string guest = FlatGuest(a => Exit(a, 42));
        try
        {
            var r = Run("run", "--flat", guest, "--timeout", seconds);
            Assert.True(r.ExitCode == 42, r.ToString());
            Assert.Equal("", r.Stderr);
        }
        finally
        {
            Delete(guest);
        }
    }

    [Fact]
    public void No_parse_error_of_any_option_names_a_dotnet_type()
    {
        // The command tree as Program builds it, each option given values no converter accepts.
        var root = new RootCommand { RunCommand.Create(), InfoCommand.Create(), BenchCommand.Create(), WalkCommand.Create() };
        var checkedOptions = new List<string>();
        foreach (var command in root.Subcommands)
        {
            foreach (var option in command.Options.Where(o => o.ValueType != typeof(bool)))
            {
                foreach (string value in new[] { "abc", "-1.5x", "99999999999999999999999" })
                {
                    var parse = root.Parse([command.Name, "0x1000", option.Name, value]);
                    foreach (var error in parse.Errors)
                    {
                        Assert.False(error.Message.Contains("System.", StringComparison.Ordinal) || error.Message.Contains('`'),
                            $"nestor {command.Name} {option.Name} {value}: {error.Message}");
                    }
                }
                checkedOptions.Add($"{command.Name} {option.Name}");
            }
        }
        Assert.Contains("run --timeout", checkedOptions);
        Assert.Contains("walk --pid", checkedOptions);
        Assert.Contains("walk --break-at", checkedOptions);
        Assert.Contains("bench --pwc", checkedOptions);
        var r = Run("run", "--timeout", "abc");
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("--timeout 'abc' is not a number of seconds", r.Stderr);
    }

    // ---- 7. SIGTERM and SIGHUP stop the run cleanly ----------------------------------------------------------

    [Theory]
    [InlineData(SigTerm, 143, "SIGTERM", "terminated", false)]
    [InlineData(SigTerm, 143, "SIGTERM", "terminated", true)]
    [InlineData(SigHup, 129, "SIGHUP", "hung-up", false)]
    [InlineData(SigHup, 129, "SIGHUP", "hung-up", true)]
    public void A_termination_signal_stops_the_vm_and_writes_every_report(int signal, int status, string name, string kind, bool json)
    {
        string guest = LoopingGuest();
        string log = TempPath(".log"), state = TempPath(".json");
        try
        {
            using var nestor = new Background(null, ["run", "--flat", guest, "--serial-log", log, "--dump-state", state, json ? "--json" : "--stats"]);
            Assert.True(nestor.WaitUntil(() => File.Exists(log) && File.ReadAllText(log).Contains("ready\n"), TimeSpan.FromSeconds(60)),
                "the guest never printed its first line");
            nestor.Signal(signal);
            var r = nestor.WaitForExit(TimeSpan.FromSeconds(30)) ?? throw new Xunit.Sdk.XunitException($"{name} did not stop nestor within 30 s");
            Assert.True(r.ExitCode == status, r.ToString());
            Assert.Equal("ready\ntail", File.ReadAllText(log)); // the tail the UART held, written at the end
            var dump = JsonDocument.Parse(File.ReadAllText(state)).RootElement;
            Assert.StartsWith("0x10", dump.GetProperty("rip").GetString());
            if (json)
            {
                var root = JsonDocument.Parse(r.Stdout).RootElement;
                Assert.Equal(kind, root.GetProperty("outcome").GetProperty("kind").GetString());
                Assert.Contains(name, root.GetProperty("outcome").GetProperty("message").GetString());
                Assert.Equal("ready\ntail", root.GetProperty("serial").GetString());
            }
            else
            {
                Assert.Contains($"({name}) with the guest at rip=0x10", r.Stderr);
                Assert.Contains($"({name}) after", r.Stdout);
                Assert.Contains($"(exit status {status})", r.Stdout);
                Assert.Contains("VM exits handled by Nestor", r.Stdout);
            }
        }
        finally
        {
            Delete(guest, log, state);
        }
    }

    // ---- 8. Ctrl-C during a long instruction -----------------------------------------------------------------

    /// <summary>SIGINT during one long <c>rep stosb</c> must end the run promptly with 130, not minutes later with
    /// the guest's status. Needs the engine side of issue 10 (another engineer's change to SimEngine and the CPU:
    /// REP string instructions interruptible, and a stop request winning over a guest exit that follows it): until
    /// it is merged this test fails with "not acted on within 10 s". RunControl keeps the first stop reason and
    /// the status maps from it (LoaderHardeningTests.Run_control_keeps_the_first_stop_reason).</summary>
    [Fact]
    public void Ctrl_c_during_a_long_rep_stos_interrupts_the_run()
    {
        string guest = LongRepStosGuest();
        try
        {
            using var nestor = new Background(null, "run", "--flat", guest);
            Assert.True(nestor.WaitUntil(() => nestor.Stdout.Contains("ready\n"), TimeSpan.FromSeconds(60)), "the guest never printed 'ready'");
            Thread.Sleep(200); // into the rep stosb
            nestor.Signal(SigInt);
            var r = nestor.WaitForExit(TimeSpan.FromSeconds(10)) ?? throw new Xunit.Sdk.XunitException(
                "SIGINT during a long rep stosb was not acted on within 10 s (needs the engine's interruptible REP)");
            Assert.True(r.ExitCode == 130, r.ToString());
            Assert.Contains("interrupted (Ctrl-C, SIGINT)", r.Stderr);
        }
        finally
        {
            Delete(guest);
        }
    }

    /// <summary>The same signal between instructions (a guest that loops) is acted on at once today: what the test
    /// above waits for is the engine, not the signal's delivery.</summary>
    [Fact]
    public void Ctrl_c_during_a_loop_interrupts_the_run()
    {
        string guest = LoopingGuest();
        try
        {
            using var nestor = new Background(null, "run", "--flat", guest, "--json");
            Thread.Sleep(2000); // booted and looping by then (with --json its output comes in the report)
            Assert.False(nestor.HasExited, "nestor ended early");
            nestor.Signal(SigInt);
            var r = nestor.WaitForExit(TimeSpan.FromSeconds(30)) ?? throw new Xunit.Sdk.XunitException("SIGINT did not stop nestor within 30 s");
            Assert.True(r.ExitCode == 130, r.ToString());
            var root = JsonDocument.Parse(r.Stdout).RootElement;
            Assert.Equal("interrupted", root.GetProperty("outcome").GetProperty("kind").GetString());
            Assert.Equal("ready\ntail", root.GetProperty("serial").GetString());
        }
        finally
        {
            Delete(guest);
        }
    }

    // ---- 9. One writer per serial log -------------------------------------------------------------------------

    [Fact]
    public void A_second_nestor_writing_the_same_serial_log_is_refused_without_touching_it()
    {
        string first = LoopingGuest("first\n", "tail"), second = LoopingGuest("second\n", "");
        string log = TempPath(".log");
        try
        {
            using var running = new Background(null, "run", "--flat", first, "--serial-log", log);
            Assert.True(running.WaitUntil(() => File.Exists(log) && File.ReadAllText(log).Contains("first\n"), TimeSpan.FromSeconds(60)),
                "the first run never printed");
            var r = Run("run", "--flat", second, "--serial-log", log, "--timeout", "5");
            Assert.True(r.ExitCode == 120, r.ToString());
            Assert.Contains($"another nestor is writing the serial log '{log}'", r.Stderr);
            Assert.Equal("first\n", File.ReadAllText(log)); // not truncated, nothing of the second's
            running.Signal(SigTerm);
            var end = running.WaitForExit(TimeSpan.FromSeconds(30));
            Assert.True(end?.ExitCode == 143, end?.ToString() ?? "the first run did not stop");
            Assert.Equal("first\ntail", File.ReadAllText(log));
        }
        finally
        {
            Delete(first, second, log);
        }
    }

    // ---- 10. bench's arguments and timeout; info without KVM ------------------------------------------------

    [Theory]
    [InlineData("forkwait's COUNT must be a whole number of 0 or more, not '-5'", "forkwait", "-5")]
    [InlineData("forkwait's COUNT must be a whole number of 0 or more, not 'abc'", "forkwait", "abc")]
    [InlineData("'--bogus' is not an option of 'nestor bench'", "--bogus", "forkwait", "100")]
    [InlineData("'--bogus' is not an option of 'nestor bench'", "forkwait", "100", "--bogus")]
    [InlineData("hello takes no arguments", "hello", "twice")]
    [InlineData("memtouch's MODE is one of seq, rand, stride", "memtouch", "4", "sideways")]
    [InlineData("there is no NestorOS program 'forkwiat'", "forkwiat", "100")]
    public void Bench_refuses_arguments_nestoros_would_misread(string message, params string[] arguments)
    {
        var r = Run(TimeSpan.FromSeconds(60), ["bench", .. arguments]);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains(message, r.Stderr);
    }

    [Fact]
    public void Bench_has_a_timeout_per_run()
    {
        var r = Run(TimeSpan.FromSeconds(120), "bench", "--timeout", "0.5", "forkwait", "100000000");
        Assert.True(r.ExitCode == 124, r.ToString()); // the timeout's own status, as for nestor run
        Assert.Contains("still running after 0.5 s (--timeout)", r.Stderr);
    }

    [Fact]
    public void Info_without_kvm_succeeds_and_says_kvm_is_unavailable()
    {
        var r = Run("info", "--kvm-device", "/dev/no-kvm-here");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("KVM is unavailable on this host", r.Stdout);
        Assert.Contains("sim  runs", r.Stdout);
        Assert.DoesNotContain("not in this release", r.Stdout);
        var json = Run("info", "--json", "--kvm-device", "/dev/no-kvm-here");
        Assert.True(json.ExitCode == 0, json.ToString());
        Assert.False(JsonDocument.Parse(json.Stdout).RootElement.GetProperty("kvm_available").GetBoolean());
    }

    // ---- 11. walk and canonical addresses --------------------------------------------------------------------

    [Theory]
    [InlineData("0x800000000000")]
    [InlineData("0x7fff00000000000")]
    public void Walk_refuses_a_non_canonical_address(string address)
    {
        var r = Run("walk", address);
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("is not a canonical address", r.Stderr);
        Assert.Contains("bits 63..47", r.Stderr);
        Assert.Contains("#GP", r.Stderr);
    }

    // ---- Messages ---------------------------------------------------------------------------------------------

    [Fact]
    public void The_refusal_of_a_guest_the_host_kvm_cannot_run_points_to_the_sim_engine()
    {
        RequireKvm();
        if (HostCapabilities.Probe("/dev/kvm", [GuestFeature.ExceptionDelivery]).Supports(GuestFeature.ExceptionDelivery))
        {
            return; // this host's KVM runs it: there is no refusal to read
        }
        string guest = WriteTemp(ProbeGuests.SoftwareInterrupt(), ".bin");
        try
        {
            var r = Run("run", "--engine", "kvm", "--flat", guest);
            Assert.True(r.ExitCode == 121, r.ToString());
            Assert.DoesNotContain("once it exists", r.Stderr);
            Assert.Contains("--engine sim", r.Stderr);
        }
        finally
        {
            Delete(guest);
        }
    }

    [Fact]
    public void Advice_names_only_options_that_were_given()
    {
        var multiboot = Run("run", "--engine", "kvm", "--multiboot");
        Assert.True(multiboot.ExitCode == 120, multiboot.ToString());
        Assert.DoesNotContain("--flat", multiboot.Stderr);
        var qemu = Run("run", "--qemu", "--stats");
        Assert.True(qemu.ExitCode == 120, qemu.ToString());
        Assert.Contains("Drop --stats with --qemu", qemu.Stderr);
        Assert.DoesNotContain("--flat", qemu.Stderr);
    }

    [Theory]
    [InlineData("guest memory 4095 bytes is out of range", "--memory", "4095")]
    [InlineData("a TLB has 1 to 65536 entries, not 1000000", "--tlb", "1000000:1")]
    [InlineData("shadow paging has none", "--technique", "hw", "--mmu", "shadow", "--nested-pages", "2m")]
    [InlineData("shadow paging has none", "--technique", "bt", "--nested-pages", "2m")]
    public void Range_and_combination_errors_say_exactly_what_is_wrong(string message, params string[] options)
    {
        string guest = WriteTemp([0xF4], ".bin");
        try
        {
            var r = Run(["run", "--flat", guest, .. options]);
            Assert.True(r.ExitCode == 120, r.ToString());
            Assert.Contains(message, r.Stderr);
        }
        finally
        {
            Delete(guest);
        }
    }

    [Fact]
    public void A_kernel_path_beginning_with_at_is_a_path_not_a_response_file()
    {
        string directory = NestorProcess.TempPath("");
        Directory.CreateDirectory(directory);
        try
        {
            File.WriteAllBytes(Path.Combine(directory, "@exit42.bin"), Nestor.Hypervisor.BuiltIn.GuestAssembler.Assemble(a => Exit(a, 42)));
            File.WriteAllText(Path.Combine(directory, "exit42.bin"), "--memory lots\n");
            using var nestor = new Background(directory, "run", "--flat", "@exit42.bin");
            var r = nestor.WaitForExit(TimeSpan.FromSeconds(60)) ?? throw new Xunit.Sdk.XunitException("nestor did not finish");
            Assert.True(r.ExitCode == 42, r.ToString());
            Assert.DoesNotContain("lots", r.Stderr);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>The unclaimed-access report says where the access was made without misleading: both engines give
    /// the RIP after the accessing instruction (the software machine has advanced cpu.Rip, KVM has completed the
    /// I/O or MMIO instruction by its exit), and the message says so. Naming the instruction's own address needs
    /// the engines to supply it (Nestor.Machine's Cpu keeps the instruction's start privately; KVM does not report
    /// the length of an I/O instruction), which is not this worktree's to change.</summary>
    [Theory]
    [InlineData("sim", false)]
    [InlineData("sim", true)]
    [InlineData("kvm", false)]
    [InlineData("kvm", true)]
    public void An_unclaimed_access_is_reported_with_the_rip_of_the_instruction_that_made_it_or_the_one_after_on_kvm(string engine, bool mmio)
    {
        if (engine == "kvm")
        {
            RequireKvm();
        }
        string guest = FlatGuest(a =>
        {
            if (mmio)
            {
                a.mov(eax, 0xD000_0000);            // five bytes: the store below is at 0x100005..0x100008
                a.mov(__byte_ptr[rax], 1);           // c6 00 01, into the device hole
            }
            else
            {
                a.mov(dx, 0x1234);                  // 66 ba 34 12: the out is at 0x100004
                a.@out(dx, al);
            }
            Exit(a, 0);
        });
        try
        {
            var r = Run("run", "--engine", engine, "--flat", guest);
            Assert.True(r.ExitCode == 0, r.ToString());
            string where = mmio ? "MMIO address 0xd0000000" : "I/O port 0x1234";
            // The software machine knows where the instruction began; KVM's exits give the address after it.
            string expected = engine == "sim"
                ? $"(rip={(mmio ? "0x100005" : "0x100004")})"
                : $"(rip={(mmio ? "0x100008" : "0x100005")}, just after the instruction that made the access)";
            Assert.Contains($"{where}, which no device claims {expected}", r.Stderr);
        }
        finally
        {
            Delete(guest);
        }
    }

    [Fact]
    public void Messages_from_the_runtime_are_words_not_resource_keys()
    {
        // The state dump is written with File.WriteAllText, whose IOException text comes from the runtime's resources.
        var r = Run("run", "builtin:hello", "--dump-state", "/nonexistent-nestor-dir/state.json");
        Assert.True(r.ExitCode == 120, r.ToString());
        Assert.Contains("cannot write the state dump", r.Stderr);
        Assert.Contains("Could not find a part of the path", r.Stderr);
        Assert.DoesNotContain("IO_PathNotFound", r.Stderr);
    }
}
