using System.Diagnostics;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Capabilities;

namespace Nestor.Integration.Tests;

/// <summary>The probe guests behind <c>nestor info</c> must be right, or a "NO" would blame the host for a bug in
/// the probe. Each one runs on the reference machine (QEMU's software CPU, REFERENCE-MACHINE.md) and must report
/// success there.</summary>
public class QemuReferenceTests
{
    public static TheoryData<string> ProbeNames() => new(HostCapabilities.AllProbes.Select(p => p.Name));

    [Theory]
    [MemberData(nameof(ProbeNames))]
    public void Probe_guest_succeeds_on_the_reference_machine(string name)
    {
        var probe = HostCapabilities.AllProbes.Single(p => p.Name == name);
        byte[] image = MultibootImage.Build(probe.Guest());
        string path = NestorProcess.WriteTemp(image, ".elf");
        int status = RunQemu(path, out string output);
        // isa-debug-exit turns a write of v into process status (v << 1) | 1.
        Assert.True(status == (int)((ProbeGuests.Success << 1) | 1),
            $"probe '{name}' under QEMU TCG ended with status {status}, expected {(ProbeGuests.Success << 1) | 1}\n{output}");
    }

    private static int RunQemu(string kernel, out string output)
    {
        const string qemu = "qemu-system-x86_64";
        var info = new ProcessStartInfo(qemu)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[]
                 {
                     "-accel", "tcg", "-cpu", "max", "-m", "64M", "-nographic", "-no-reboot", "-nodefaults",
                     "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-kernel", kernel,
                 })
        {
            info.ArgumentList.Add(a);
        }
        Process p;
        try
        {
            p = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            Assert.Fail("qemu-system-x86_64 is not installed; the reference-machine tests need it " +
                        "(apt-get install qemu-system-x86; scripts/test installs it).");
            throw;
        }
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromSeconds(60)))
            {
                p.Kill(true);
                Assert.Fail($"QEMU did not finish booting {kernel} within 60 s");
            }
            output = stdout.Result + stderr.Result;
            return p.ExitCode;
        }
    }
}
