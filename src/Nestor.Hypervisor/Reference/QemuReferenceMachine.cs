using System.Diagnostics;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Reference;

/// <summary>How a run on the reference machine ended.</summary>
/// <param name="ProcessStatus">QEMU's own exit status.</param>
/// <param name="GuestStatus">The value the guest wrote to the debug-exit port (QEMU's status is (v &lt;&lt; 1) | 1),
/// or null when QEMU ended some other way.</param>
/// <param name="TimedOut">True when the run was killed at its time limit.</param>
/// <param name="Wall">Wall-clock time of the QEMU process.</param>
/// <param name="Diagnostics">What QEMU printed on standard error.</param>
public sealed record QemuOutcome(int ProcessStatus, uint? GuestStatus, bool TimedOut, TimeSpan Wall, string Diagnostics);

/// <summary>How QEMU shows a disk to the guest.</summary>
public enum QemuDiskInterface
{
    /// <summary>An IDE disk on the PC's primary channel (master, then slave): ATA PIO, as Nestor's <c>if=ata</c>.</summary>
    Ide,

    /// <summary>virtio-blk on a virtio-mmio transport (version 2) of QEMU's <c>microvm</c> machine, as Nestor's
    /// <c>if=virtio</c>; the machine is then microvm rather than the PC.</summary>
    VirtioMmio,
}

/// <summary>A raw disk image given to the reference machine.</summary>
/// <param name="Path">The raw image file; QEMU writes to it unless <paramref name="ReadOnly"/>.</param>
/// <param name="Interface">How the guest sees it.</param>
/// <param name="ReadOnly">The disk is write-protected.</param>
public sealed record QemuDisk(string Path, QemuDiskInterface Interface, bool ReadOnly = false);

/// <summary>A Multiboot module given to the reference machine (QEMU's <c>-initrd</c>, Nestor's <c>--module</c>).</summary>
/// <param name="Path">The module's file.</param>
/// <param name="CommandLine">What follows the file's name in the module's string (may be empty).</param>
public sealed record QemuModule(string Path, string CommandLine = "");

/// <summary>QEMU as the reference machine (REFERENCE-MACHINE.md): the same guest-visible platform as Nestor (COM1,
/// debug-exit at 0xF4), booting a Multiboot kernel with <c>-kernel</c>. With <c>tcg</c> it is QEMU's software CPU,
/// the yardstick for Nestor's engines.</summary>
public static class QemuReferenceMachine
{
    public const string Executable = "qemu-system-x86_64";

    /// <summary>Boots <paramref name="kernelPath"/> and copies the guest's COM1 output to <paramref name="serial"/>.</summary>
    /// <param name="accelerator"><c>tcg</c> (software CPU) or <c>kvm</c>.</param>
    /// <param name="disks">Raw disk images to attach; IDE and virtio-mmio disks cannot be mixed (the PC has no
    /// virtio-mmio transports, microvm no IDE channel).</param>
    /// <exception cref="HostUnsupportedException">QEMU is not installed.</exception>
    public static QemuOutcome Run(string kernelPath, ulong memoryBytes, string commandLine, Stream serial,
        TimeSpan? timeout = null, string accelerator = "tcg", IReadOnlyList<QemuDisk>? disks = null,
        IReadOnlyList<QemuModule>? modules = null)
    {
        var info = new ProcessStartInfo(Executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        string[] arguments =
        [
            "-accel", accelerator, "-cpu", accelerator == "tcg" ? "max" : "host", "-m", $"{memoryBytes >> 20}M",
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-kernel", kernelPath, "-append", commandLine,
        ];
        if (modules is { Count: > 0 })
        {
            arguments = [.. arguments, "-initrd", InitrdArgument(modules)];
        }
        foreach (var a in DiskArguments(disks ?? []).Concat(arguments))
        {
            info.ArgumentList.Add(a);
        }
        Process process;
        var clock = Stopwatch.StartNew();
        try
        {
            process = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new HostUnsupportedException($"{Executable} (the reference machine) is not installed",
                "Install it: apt-get install qemu-system-x86 (scripts/install-prerequisites does)");
        }
        using (process)
        {
            process.StandardInput.Close();
            var copy = process.StandardOutput.BaseStream.CopyToAsync(serial);
            var errors = process.StandardError.ReadToEndAsync();
            bool finished = process.WaitForExit(timeout ?? Timeout.InfiniteTimeSpan);
            if (!finished)
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
            }
            copy.Wait();
            serial.Flush();
            clock.Stop();
            int status = process.ExitCode;
            // isa-debug-exit: status (v << 1) | 1, so odd statuses come from the guest (QEMU's own failures are 0 or 1
            // with a message; 1 is also v = 0, which stderr disambiguates).
            bool qemuFailed = errors.Result.Split('\n').Any(l =>
                l.StartsWith(Executable + ":", StringComparison.Ordinal) && !l.Contains("warning", StringComparison.Ordinal));
            uint? guest = finished && (status & 1) == 1 && !qemuFailed ? (uint)(status >> 1) : null;
            return new QemuOutcome(status, guest, !finished, clock.Elapsed, errors.Result);
        }
    }

    /// <summary>QEMU's <c>-initrd</c> value for a Multiboot kernel's modules (QEMU 7.2 hw/i386/multiboot.c): the
    /// modules separated by commas, each the file, a space and its command line; a comma inside a module's string is
    /// doubled (QEMU's option escape). QEMU gives the guest the whole string, file name included, as the module's
    /// string, and opens the file named by what precedes the first space, so a path with a space cannot be passed.</summary>
    /// <exception cref="BadInputException">A path contains a space or is empty.</exception>
    public static string InitrdArgument(IReadOnlyList<QemuModule> modules)
    {
        var parts = new List<string>(modules.Count);
        foreach (var m in modules)
        {
            if (m.Path.Length == 0 || m.Path.Contains(' ', StringComparison.Ordinal))
            {
                throw new BadInputException($"the module file '{m.Path}' cannot be given to QEMU: its -initrd takes a module's file name up to the first space",
                    "Give the module by a path without spaces (a symbolic link will do)");
            }
            string entry = m.CommandLine.Length > 0 ? m.Path + " " + m.CommandLine : m.Path;
            parts.Add(entry.Replace(",", ",,", StringComparison.Ordinal));
        }
        return string.Join(',', parts);
    }

    /// <summary>QEMU's options for <paramref name="disks"/>: <c>-drive</c> per disk (a comma in a path is doubled,
    /// QEMU's escape), and for virtio-mmio the microvm machine with modern (version 2) transports.</summary>
    private static List<string> DiskArguments(IReadOnlyList<QemuDisk> disks)
    {
        var arguments = new List<string>();
        if (disks.Select(d => d.Interface).Distinct().Count() > 1)
        {
            throw new ArgumentException("IDE and virtio-mmio disks need different QEMU machines (pc, microvm)", nameof(disks));
        }
        if (disks.Count > 0 && disks[0].Interface == QemuDiskInterface.VirtioMmio)
        {
            arguments.AddRange(["-M", "microvm", "-global", "virtio-mmio.force-legacy=false"]);
        }
        for (int i = 0; i < disks.Count; i++)
        {
            string file = $"file={disks[i].Path.Replace(",", ",,", StringComparison.Ordinal)},format=raw{(disks[i].ReadOnly ? ",readonly=on" : "")}";
            if (disks[i].Interface == QemuDiskInterface.Ide)
            {
                arguments.AddRange(["-drive", $"{file},if=ide,index={i}"]);
            }
            else
            {
                arguments.AddRange(["-drive", $"id=disk{i},{file},if=none", "-device", $"virtio-blk-device,drive=disk{i}"]);
            }
        }
        return arguments;
    }
}
