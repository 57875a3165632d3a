using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Nestor.Bench;

/// <summary>What the figures were measured on, read from the machine at run time: numbers without the machine
/// they came from mean little, and exit costs in particular differ by an order of magnitude between bare metal and
/// nested KVM.</summary>
internal sealed record MachineFacts(string Cpu, int Cores, string Kernel, string Virtualization, string DotNet, string Qemu)
{
    public static MachineFacts Read(string qemu)
    {
        var cpuinfo = File.Exists("/proc/cpuinfo") ? File.ReadAllLines("/proc/cpuinfo") : [];
        string cpu = Field(cpuinfo, "model name") ?? "unknown";
        var flags = (Field(cpuinfo, "flags") ?? "").Split(' ');
        return new MachineFacts(cpu, Environment.ProcessorCount, Command("uname", "-srmv") ?? "unknown",
            DescribeVirtualization(flags), RuntimeInformation.FrameworkDescription,
            Command(qemu, "--version")?.Split('\n')[0] ?? "not found");
    }

    /// <summary>Whether /dev/kvm is itself running inside a VM. The CPUID hypervisor bit (the <c>hypervisor</c>
    /// flag) says this host is a guest, so every VM exit of our L2 guest is handled by L1 KVM with the help of the L0
    /// hypervisor, which makes exits several times dearer than on bare metal, for Nestor and QEMU alike.</summary>
    private static string DescribeVirtualization(string[] flags)
    {
        // PVM ("pagetable-based virtual machine") is a KVM back end for hosts that are themselves VMs without
        // hardware virtualization exposed to them: it runs guests with shadow paging and software-switched worlds
        // instead of VMX/SVM, so exits and guest modes other than plain 64-bit code cost more than on VT-x.
        if (Directory.Exists("/sys/module/kvm_pvm"))
        {
            return "PVM: /dev/kvm is backed by the kvm_pvm module (pagetable-based virtual machine, no VMX/SVM in this " +
                   "host, which is itself a VM" + (flags.Contains("hypervisor") ? ", CPUID hypervisor bit set" : "") + ")";
        }
        bool vmx = flags.Contains("vmx"), svm = flags.Contains("svm");
        string extension = vmx ? "Intel VT-x" : svm ? "AMD-V" : "no VMX/SVM flag";
        string module = vmx ? "kvm_intel" : "kvm_amd";
        string nestedParameter = $"/sys/module/{module}/parameters/nested";
        string nestedHere = File.Exists(nestedParameter) ? File.ReadAllText(nestedParameter).Trim() : "n/a";
        return flags.Contains("hypervisor")
            ? $"{extension}; this host is itself a VM (CPUID hypervisor bit set), so /dev/kvm is nested KVM and each VM exit " +
              $"also goes through the outer hypervisor ({module}.nested here: {nestedHere})"
            : $"{extension}; bare metal (no CPUID hypervisor bit)";
    }

    private static string? Field(string[] cpuinfo, string name) =>
        cpuinfo.FirstOrDefault(l => l.StartsWith(name, StringComparison.Ordinal) && l.Contains(':')) is { } line
            ? line[(line.IndexOf(':') + 1)..].Trim()
            : null;

    private static string? Command(string file, string arguments)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(file, arguments)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            });
            if (p is null)
            {
                return null;
            }
            string text = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? text : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}
