using System.Diagnostics;
using System.Text;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

/// <summary><c>nestor run --disk</c> end to end with the emulated ATA disk: ring-0 guests that drive it by polling
/// (this host's nested KVM runs port I/O but delivers no guest interrupts, so the KVM guests poll, and so, for the same
/// code, do the sim ones), the image file afterwards, a nestor killed right after its guest's flush, and the
/// refusals a user meets.</summary>
public class DiskCommandTests
{
    private const int Sector = 512, Sectors = 8, FirstSector = 2;
    private const ushort Data = 0x1F0, Count = 0x1F2, LbaLow = 0x1F3, LbaMid = 0x1F4, LbaHigh = 0x1F5, Device = 0x1F6,
        Status = 0x1F7, Control = 0x3F6;
    private const byte Busy = 0x80, DataRequest = 0x08, Error = 0x01;
    private const ulong Pattern = 0x20_0000, Readback = 0x21_0000;

    /// <summary>The guest's pattern, byte <c>i</c> = 31 i + 7 (mod 256), computed here as the guest computes it.</summary>
    private static byte[] ExpectedPattern() => [.. Enumerable.Range(0, Sectors * Sector).Select(i => (byte)(i * 31 + 7))];

    private static void Out(Assembler a, ushort port, int value)
    {
        a.mov(dx, port);
        a.mov(al, (byte)value);
        a.@out(dx, al);
    }

    private static void Print(Assembler a, string text)
    {
        a.mov(dx, 0x3F8);
        foreach (char c in text)
        {
            a.mov(al, (byte)c);
            a.@out(dx, al);
        }
    }

    private static void Exit(Assembler a, int status)
    {
        a.mov(dx, 0xF4);
        a.mov(eax, status);
        a.@out(dx, eax);
        a.hlt();
    }

    /// <summary>Polls Status until BSY clears; to <paramref name="fail"/> on ERR or a DRQ other than expected.</summary>
    private static void Poll(Assembler a, Label fail, bool dataRequest)
    {
        var wait = a.CreateLabel();
        a.mov(dx, Status);
        a.Label(ref wait);
        a.@in(al, dx);
        a.test(al, Busy);
        a.jnz(wait);
        a.test(al, Error);
        a.jnz(fail);
        a.test(al, DataRequest);
        if (dataRequest)
        {
            a.jz(fail);
        }
        else
        {
            a.jnz(fail);
        }
    }

    /// <summary>A READ or WRITE SECTORS (LBA28) of the 8 sectors from <see cref="FirstSector"/>, 16-bit PIO word by
    /// word from or to RDI/RSI.</summary>
    private static void Transfer(Assembler a, Label fail, bool write)
    {
        Out(a, Count, Sectors);
        Out(a, LbaLow, FirstSector);
        Out(a, LbaMid, 0);
        Out(a, LbaHigh, 0);
        Out(a, Device, 0xE0);
        Out(a, Status, write ? 0x30 : 0x20);
        var block = a.CreateLabel();
        a.mov(ebx, Sectors);
        a.Label(ref block);
        Poll(a, fail, dataRequest: true);
        a.mov(ecx, Sector / 2);
        a.mov(dx, Data);
        if (write)
        {
            a.rep.outsw();
        }
        else
        {
            a.rep.insw();
        }
        a.dec(ebx);
        a.jnz(block);
        Poll(a, fail, dataRequest: false);
    }

    /// <summary>Fills the pattern, writes it, FLUSH CACHE; then either prints "flushed" and spins (to be killed) or
    /// reads it back, compares and exits 0 (1 on any error).</summary>
    private static string Guest(bool spinAfterFlush) => FlatGuest(a =>
    {
        var fail = a.CreateLabel();
        var fill = a.CreateLabel();
        Out(a, Control, 0x02); // nIEN: this driver polls
        a.mov(rdi, Pattern);
        a.xor(ecx, ecx);
        a.Label(ref fill);
        a.imul(eax, ecx, 31);
        a.add(eax, 7);
        a.mov(__byte_ptr[rdi + rcx], al);
        a.inc(ecx);
        a.cmp(ecx, Sectors * Sector);
        a.jb(fill);

        a.mov(rsi, Pattern);
        Transfer(a, fail, write: true);
        Out(a, Status, 0xE7); // FLUSH CACHE
        Poll(a, fail, dataRequest: false);
        if (spinAfterFlush)
        {
            Print(a, "flushed\n");
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.pause();
            a.jmp(spin);
        }
        else
        {
            a.mov(rdi, Readback);
            Transfer(a, fail, write: false);
            a.mov(rsi, Pattern);
            a.mov(rdi, Readback);
            a.mov(ecx, Sectors * Sector);
            a.repe.cmpsb();
            a.jne(fail);
            Print(a, "disk ok\n");
            Exit(a, 0);
        }
        a.Label(ref fail);
        Print(a, "disk error\n");
        Exit(a, 1);
    });

    private static string Image(long bytes = 64 * 1024)
    {
        string path = TempPath(".img");
        using var file = File.Create(path);
        file.SetLength(bytes);
        return path;
    }

    private static byte[] Sectors8(string path)
    {
        var bytes = new byte[Sectors * Sector];
        using var file = File.OpenRead(path);
        file.Position = FirstSector * Sector;
        file.ReadExactly(bytes);
        return bytes;
    }

    public static TheoryData<string> Engines => ["sim", "kvm"];

    [Theory]
    [MemberData(nameof(Engines))]
    public void A_guest_writes_flushes_and_reads_back_through_the_ata_disk_and_the_file_holds_what_it_wrote(string engine)
    {
        if (engine == "kvm")
        {
            RequireKvm();
        }
        string image = Image();
        var r = Run("run", "--engine", engine, "--flat", Guest(spinAfterFlush: false), "--disk", image + ",if=ata", "--stats");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("disk ok", r.Stdout);
        Assert.Equal(ExpectedPattern(), Sectors8(image));
        // The disk table: one read and one write of 8 sectors each, one flush, no error.
        string name = Path.GetFileName(image);
        Assert.Matches($@"\n  {name}\s+ata0 \(master\)\s+1\s+1\s+1\s+0\s+{Sectors * Sector}\s+{Sectors * Sector}\s+\d+", r.Stdout);
        // Every data word was one port access (on KVM one KVM_EXIT_IO each, as the guest moves one word at a time).
        Assert.Matches($@"\n  0x1f0\s+ata0\s+{Sectors * Sector / 2}\s+{Sectors * Sector / 2}\n", r.Stdout);

        // The same counts in --json.
        var json = Run("run", "--engine", engine, "--flat", Guest(spinAfterFlush: false), "--disk", image + ",if=ata", "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var disk = System.Text.Json.JsonDocument.Parse(json.Stdout).RootElement.GetProperty("disks")[0];
        Assert.Equal(("ata", 0, false, new FileInfo(image).Length / Sector), (disk.GetProperty("interface").GetString(), disk.GetProperty("index").GetInt32(),
            disk.GetProperty("read_only").GetBoolean(), disk.GetProperty("sectors").GetInt64()));
        Assert.Equal((1L, 1L, 1L, 0L), (disk.GetProperty("reads").GetInt64(), disk.GetProperty("writes").GetInt64(),
            disk.GetProperty("flushes").GetInt64(), disk.GetProperty("errors").GetInt64()));
        Assert.Equal((long)Sectors * Sector, disk.GetProperty("bytes_written").GetInt64());
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public void A_nestor_killed_right_after_the_guest_s_flush_leaves_the_flushed_sectors_in_the_file(string engine)
    {
        if (engine == "kvm")
        {
            RequireKvm();
        }
        string image = Image();
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in new[] { "exec", Path.Combine(AppContext.BaseDirectory, "nestor.dll"), "run", "--engine", engine,
                     "--flat", Guest(spinAfterFlush: true), "--disk", image + ",if=ata" })
        {
            info.ArgumentList.Add(arg);
        }
        using var nestor = Process.Start(info)!;
        var output = new StringBuilder();
        using var flushed = new ManualResetEventSlim();
        nestor.OutputDataReceived += (_, e) =>
        {
            lock (output)
            {
                output.AppendLine(e.Data);
            }
            if (e.Data == "flushed")
            {
                flushed.Set();
            }
        };
        nestor.ErrorDataReceived += (_, e) =>
        {
            lock (output)
            {
                output.AppendLine(e.Data);
            }
        };
        nestor.BeginOutputReadLine();
        nestor.BeginErrorReadLine();
        try
        {
            bool seen = flushed.Wait(TimeSpan.FromSeconds(60));
            Assert.True(seen, $"no 'flushed' line; output: {output}; exited: {nestor.HasExited}");
            // While it runs, the disk is its own: a second nestor is refused, naming it.
            var second = Run("run", "--engine", engine, "--flat", Guest(spinAfterFlush: false), "--disk", image + ",if=ata");
            Assert.True(second.ExitCode == 120, second.ToString());
            Assert.Contains($"disk '{image}' is in use by another process (pid {nestor.Id})", second.Stderr);
            nestor.Kill(); // SIGKILL: nothing of nestor's runs after it, no Dispose, no flush on the way out
            nestor.WaitForExit();
            Assert.Equal(137, nestor.ExitCode); // 128 + SIGKILL
        }
        finally
        {
            if (!nestor.HasExited)
            {
                nestor.Kill();
                nestor.WaitForExit();
            }
        }
        Assert.Equal(ExpectedPattern(), Sectors8(image));
        // The lock died with the process: the disk can be used again.
        var again = Run("run", "--engine", engine, "--flat", Guest(spinAfterFlush: false), "--disk", image + ",if=ata");
        Assert.True(again.ExitCode == 0, again.ToString());
    }

    [Fact]
    public void Disk_options_and_files_that_cannot_be_used_are_refused_with_what_to_do()
    {
        string image = Image();
        string guest = FlatGuest(a => Exit(a, 0));
        var cases = new (string Disk, string Message, string Advice)[]
        {
            (image + ",if=scsi", $"--disk {image},if=scsi: there is no disk interface 'scsi'", "if=ata"),
            (image + ",if=ata,cache=none", $"--disk {image},if=ata,cache=none: unknown option 'cache=none'", "FILE[,if=ata|virtio|assigned][,ro]"),
            (image + ",ro,ro", $"--disk {image},ro,ro: 'ro' is given twice", "Give ro once"),
            (",if=ata", "--disk ',if=ata' names no file", "Give the image file first"),
            (image + ".missing,if=ata", $"disk '{image}.missing' does not exist", "truncate -s 64M"),
        };
        foreach (var (disk, message, advice) in cases)
        {
            var r = Run("run", "--flat", guest, "--disk", disk);
            Assert.True(r.ExitCode == 120, $"{disk}: {r}");
            Assert.Contains($"nestor: {message}\n", r.Stderr);
            Assert.Contains(advice, r.Stderr);
        }
        var third = Run("run", "--flat", guest, "--disk", Image() + ",if=ata", "--disk", Image() + ",if=ata", "--disk", image + ",if=ata");
        Assert.True(third.ExitCode == 120, third.ToString());
        Assert.Contains("and the ATA channel has two places (master and slave), both taken", third.Stderr);
        var twice = Run("run", "--flat", guest, "--disk", image + ",if=ata", "--disk", image + ",if=ata");
        Assert.True(twice.ExitCode == 120, twice.ToString());
        Assert.Contains("this nestor: is the file given twice?", twice.Stderr);
        var qemu = Run("run", "--qemu", "--disk", image + ",if=ata");
        Assert.True(qemu.ExitCode == 120, qemu.ToString());
        Assert.Contains("Drop --disk with --qemu", qemu.Stderr);
    }

    [Fact]
    public void A_read_only_disk_refuses_the_guest_s_write_and_stays_unchanged()
    {
        string image = Image();
        var r = Run("run", "--flat", Guest(spinAfterFlush: false), "--disk", image + ",if=ata,ro", "--stats");
        Assert.True(r.ExitCode == 1, r.ToString()); // the WRITE ended with ERR (ABRT)
        Assert.Contains("disk error", r.Stdout);
        Assert.Equal(new byte[Sectors * Sector], Sectors8(image));
        Assert.Matches(@"\(ro\)\s+ata0 \(master\)\s+0\s+0\s+0\s+1\s", r.Stdout);
    }

    [Fact]
    public void Run_help_documents_the_disk_option()
    {
        var r = Run("run", "--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("--disk", r.Stdout);
        Assert.Contains("FILE[,if=ata|virtio|assigned][,ro]", r.Stdout);
    }
}
