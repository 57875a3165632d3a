using System.Diagnostics;
using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>A guest is hostile (Firecracker's threat model; Popek and Goldberg's resource control): random code behind
/// an IDT that resumes it after every fault, run by the real <c>nestor</c> command under every technique, must end
/// within its --timeout, with bounded memory and bounded output, and never with an internal error.</summary>
public class HostileGuestFuzzTests(ITestOutputHelper output)
{
    // Guest-physical layout (flat image loaded at 0x100000, 64 MiB of RAM, the loader's identity map).
    private const ulong Entry = 0x10_0000, Gdt = 0x1D_0000, Tss = 0x1D_1000, Idt = 0x1D_2000, Stubs = 0x1D_3000,
        State = 0x1E_0000, HandlerStack = 0x1C_0000, RandomCode = 0x20_0000;
    private const int RandomBytes = 0x1_0000;

    /// <summary>The hostile guest: a GDT with a TSS whose IST1 gives every exception a fresh stack, 256 IDT gates that
    /// pop the error code if there is one and resume at a pseudo-random spot of the random region with the registers
    /// pointing into it, and 64 KiB of random bytes (HLT bytes replaced, so that a run does not simply halt).</summary>
    public static byte[] Build(int seed)
    {
        var random = new Random(seed);
        var image = new byte[RandomCode + RandomBytes - Entry];
        byte[] setup = GuestAssembler.Assemble(a =>
        {
            EmitGdtWithIst(a);
            // IDT: gate v → stub v, interrupt gate (type 0xE), present, DPL 0, IST 1.
            a.mov(rdi, Idt);
            a.mov(rsi, Stubs);
            a.xor(ecx, ecx);
            var gate = a.CreateLabel();
            a.Label(ref gate);
            a.mov(rax, rsi); a.and(eax, 0xFFFF); a.or(rax, 0x0008_0000); // offset 15:0, selector 8
            a.mov(rdx, 0x8E01UL << 32); a.or(rax, rdx);                    // IST 1, type, present
            a.mov(rdx, rsi); a.shr(rdx, 16); a.and(edx, 0xFFFF); a.shl(rdx, 48); a.or(rax, rdx); // offset 31:16
            a.mov(__[rdi], rax);
            a.mov(rax, rsi); a.shr(rax, 32); a.mov(__[rdi + 8], rax);      // offset 63:32
            a.add(rdi, 16); a.add(rsi, 16); a.inc(ecx); a.cmp(ecx, 256); a.jne(gate);
            a.mov(rdi, Idt - 16);
            a.mov(__word_ptr[rdi], 4095);
            a.mov(rax, Idt); a.mov(__[rdi + 2], rax);
            a.lidt(__[rdi]);
            a.mov(rax, (ulong)seed * 0x9E37_79B9_7F4A_7C15UL + 1);
            a.mov(rdi, State); a.mov(__[rdi], rax);
            a.@int(3); // the first "resume" starts the random code
        }, Entry);
        setup.CopyTo(image, 0);
        // Stub v: pop the error code for the vectors that push one (SDM Vol. 3A Table 6-1), then the common resume.
        ulong common = Stubs + 256 * 16;
        for (int v = 0; v < 256; v++)
        {
            byte[] stub = GuestAssembler.Assemble(a =>
            {
                if (v is 8 or 10 or 11 or 12 or 13 or 14 or 17 or 21 or 29 or 30)
                {
                    a.add(rsp, 8);
                }
                a.jmp(common);
            }, Stubs + (ulong)v * 16);
            stub.CopyTo(image, (int)(Stubs - Entry) + v * 16);
        }
        byte[] resume = GuestAssembler.Assemble(a =>
        {
            // Next spot: a linear congruential step (Knuth's MMIX constants), 16 bits of it into the random region.
            a.mov(rdi, State);
            a.mov(rax, __[rdi]);
            a.mov(rbx, 6364136223846793005UL); a.imul(rax, rbx);
            a.mov(rbx, 1442695040888963407UL); a.add(rax, rbx);
            a.mov(__[rdi], rax);
            a.mov(rbx, rax); a.shr(rbx, 40); a.and(ebx, RandomBytes - 1); a.add(rbx, (int)RandomCode);
            a.mov(__[rsp], rbx);                       // RIP
            a.mov(__qword_ptr[rsp + 8], 8);              // CS
            a.mov(__qword_ptr[rsp + 16], 2);             // RFLAGS: IF off
            a.mov(__qword_ptr[rsp + 24], (int)(RandomCode + RandomBytes)); // RSP at the top of the random region
            a.mov(__qword_ptr[rsp + 32], 0x10);          // SS
            foreach (var r in new[] { rax, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15 })
            {
                a.mov(r, RandomCode + 0x8000);
            }
            a.iretq();
        }, common);
        resume.CopyTo(image, (int)(common - Entry));
        var code = image.AsSpan((int)(RandomCode - Entry));
        random.NextBytes(code);
        foreach (ref byte b in code)
        {
            if (b == 0xF4)
            {
                b = 0x90;
            }
        }
        return image;
    }

    /// <summary>Loads a GDT (null, 64-bit code 0x08, data 0x10, a 64-bit TSS 0x18) whose TSS gives IST1 a stack of
    /// its own, so an exception handler runs on a fresh stack whatever the guest did to RSP.</summary>
    internal static void EmitGdtWithIst(Assembler a)
    {
        // GDT: null, 64-bit code (0x08), data (0x10), a 64-bit TSS (0x18, two slots).
        a.mov(rdi, Gdt);
        a.mov(rax, 0UL); a.mov(__[rdi], rax);
        a.mov(rax, 0x00AF_9A00_0000_FFFFUL); a.mov(__[rdi + 8], rax);
        a.mov(rax, 0x00CF_9200_0000_FFFFUL); a.mov(__[rdi + 16], rax);
        a.mov(rax, 0x0000_8900_0000_0067UL | ((Tss & 0xFF_FFFF) << 16) | ((Tss >> 24 & 0xFF) << 56)); a.mov(__[rdi + 24], rax);
        a.mov(rax, Tss >> 32); a.mov(__[rdi + 32], rax);
        a.mov(rax, HandlerStack); a.mov(rdi, Tss + 0x24); a.mov(__[rdi], rax); // IST1
        a.mov(rdi, Gdt - 16);
        a.mov(__word_ptr[rdi], 39);
        a.mov(rax, Gdt); a.mov(__[rdi + 2], rax);
        a.lgdt(__[rdi]);
        a.mov(ax, 0x18);
        a.ltr(ax);
    }

    /// <summary>Peak resident memory of a running process (VmHWM), in bytes; 0 once it is gone.</summary>
    private static long PeakResident(int pid)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
                }
            }
        }
        catch (IOException)
        {
        }
        return 0;
    }

    private const double TimeoutSeconds = 2;
    private const long MemoryLimit = 512L << 20;       // measured: 47-252 MiB with the bounded decode cache, 759 MiB before
    private const long OutputLimit = 4L << 20;         // stdout and stderr together

    [Theory]
    [InlineData("native")]
    [InlineData("hw")]
    [InlineData("hw-shadow")]
    [InlineData("trap")]
    [InlineData("bt")]
    [InlineData("pv")]
    public async Task Random_code_behind_a_resuming_idt_ends_within_its_timeout_with_bounded_memory_and_output(string technique)
    {
        string[] techniqueArgs = technique switch
        {
            "hw-shadow" => ["--technique", "hw", "--mmu", "shadow"],
            _ => ["--technique", technique],
        };
        foreach (int seed in new[] { 1, 2, 3 })
        {
            string path = NestorProcess.WriteTemp(Build(seed), ".bin");
            try
            {
                var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (string arg in (string[])["exec", Path.Combine(AppContext.BaseDirectory, "nestor.dll"), "run", "--flat", path,
                             "--timeout", TimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture), "--stats", .. techniqueArgs])
                {
                    info.ArgumentList.Add(arg);
                }
                var clock = Stopwatch.StartNew();
                using var p = Process.Start(info)!;
                var stdout = p.StandardOutput.ReadToEndAsync();
                var stderr = p.StandardError.ReadToEndAsync();
                long peak = 0;
                try
                {
                    // Start-up and JIT take a second or so; the guest then has its timeout; a few seconds of slack.
                    while (!p.WaitForExit(50) && clock.Elapsed < TimeSpan.FromSeconds(TimeoutSeconds + 15))
                    {
                        peak = Math.Max(peak, PeakResident(p.Id));
                    }
                    Assert.True(p.HasExited, $"seed {seed}: still running {clock.Elapsed.TotalSeconds:F1} s after start, past --timeout {TimeoutSeconds}");
                }
                finally
                {
                    if (!p.HasExited)
                    {
                        p.Kill(entireProcessTree: true);
                        p.WaitForExit();
                    }
                }
                string err = await stderr, @out = await stdout;
                string summary = $"seed {seed}: exit {p.ExitCode} in {clock.Elapsed.TotalSeconds:F2} s, peak RSS {peak >> 20} MiB, " +
                                 $"stdout {@out.Length} B, stderr {err.Length} B: {err.Split('\n')[0]}";
                output.WriteLine(summary);
                Assert.DoesNotContain("internal error", err);
                // The guest's own status (a random OUT to the debug-exit port), or triple fault, emulation failure,
                // timeout, halted: never bad input, an internal error or a crash.
                Assert.True(p.ExitCode is (>= 0 and < 120) or 122 or 123 or 124 or 125, summary + "\n" + err);
                Assert.True(peak < MemoryLimit, summary);
                Assert.True(@out.Length + err.Length < OutputLimit, summary);
            }
            finally
            {
                File.Delete(path);
            }
        }
    }

    [Fact]
    public void A_guest_touching_ever_new_unclaimed_addresses_gets_a_bounded_report()
    {
        // A few bytes of guest: an OUT to every port and a read of every MMIO page of the hole, forever. Each address
        // used to get its own line and its own entry: 640 MB of stderr in 5 s.
        string path = NestorProcess.FlatGuest(a =>
        {
            var loop = a.CreateLabel();
            a.mov(rsi, 0xC000_0000UL);
            a.xor(edx, edx);
            a.Label(ref loop);
            a.inc(dx);
            a.mov(ecx, edx);
            a.and(ecx, 0xFFFC);
            a.cmp(ecx, 0xF4);
            a.je(loop);            // not the debug-exit ports
            a.@out(dx, al);
            a.add(esi, 0x1000);
            a.or(esi, unchecked((int)0xC000_0000)); // within the hole below 4 GiB
            a.mov(eax, __dword_ptr[rsi]);
            a.jmp(loop);
        });
        try
        {
            var result = NestorProcess.Run(TimeSpan.FromSeconds(30), "run", "--flat", path, "--timeout", "3", "--stats");
            Assert.True(result.ExitCode == 124, result.ToString()[..Math.Min(2000, result.ToString().Length)]);
            var lines = result.Stderr.Split('\n').Count(l => l.Contains("which no device claims", StringComparison.Ordinal));
            Assert.Equal(Nestor.Hypervisor.Devices.UnclaimedAccessLog.ReportedAddresses, lines);
            Assert.Contains("counted, not reported", result.Stderr);
            Assert.True(result.Stderr.Length < 16 << 10, $"{result.Stderr.Length} bytes of diagnostics");
            Assert.True(result.Stdout.Length < 1 << 20, $"{result.Stdout.Length} bytes of --stats");
            Assert.Contains("other", result.Stdout); // the overflow count is listed
        }
        finally
        {
            File.Delete(path);
        }
    }
}
