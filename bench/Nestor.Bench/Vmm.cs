using System.Diagnostics;

namespace Nestor.Bench;

/// <summary>One VMM configuration under test: how to start it on a guest image, and which process exit status
/// means "the guest wrote 0 to the debug-exit port".</summary>
/// <param name="Name">Name in the report, e.g. "Nestor (JIT)".</param>
/// <param name="IsQemu">True for the reference VMM every ratio is taken against.</param>
/// <param name="Executable">Program to start.</param>
/// <param name="ArgumentsBeforeImage">Arguments before the image path.</param>
/// <param name="ArgumentsAfterImage">Arguments after the image path.</param>
/// <param name="Environment">Extra environment variables (reported in RESULTS.md when not empty).</param>
/// <param name="SuccessExitCode">Process status for guest status 0.</param>
internal sealed record Vmm(
    string Name,
    bool IsQemu,
    string Executable,
    IReadOnlyList<string> ArgumentsBeforeImage,
    IReadOnlyList<string> ArgumentsAfterImage,
    IReadOnlyDictionary<string, string> Environment,
    int SuccessExitCode)
{
    /// <summary>How this configuration was built and started, for the report.</summary>
    public string Description { get; init; } = "";

    /// <summary>Guest RAM for every run: the 64 MiB guest.</summary>
    public const string GuestMemory = "64M";

    /// <summary><c>nestor run --engine kvm --memory 64M [extra] IMAGE</c> (KVM: the peer of QEMU/KVM; sim is the default
    /// engine). Guest status 0 is process status 0.</summary>
    public static Vmm Nestor(string name, string executable, IReadOnlyDictionary<string, string>? environment = null) =>
        new(name, false, executable, ["run", "--engine", "kvm", "--memory", GuestMemory], [], environment ?? new Dictionary<string, string>(), 0);

    /// <summary>The reference command line, with KVM acceleration. isa-debug-exit turns guest status v into
    /// process status (v &lt;&lt; 1) | 1, so guest status 0 is process status 1.</summary>
    public static Vmm Qemu(string executable) => new("QEMU (KVM)", true, executable,
        ["-accel", "kvm", "-m", GuestMemory, "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-kernel"],
        [], new Dictionary<string, string>(), 1);

    /// <summary>A start description for a run on <paramref name="image"/>; <paramref name="extra"/> goes before the
    /// image (only Nestor takes extra options, e.g. <c>--json</c>). Standard streams are redirected so that no
    /// terminal is involved and the harness sees the guest's first byte itself.</summary>
    public ProcessStartInfo StartInfo(string image, params string[] extra)
    {
        if (IsQemu && extra.Length > 0)
        {
            throw new ArgumentException("QEMU runs take no extra options: its arguments end with -kernel IMAGE", nameof(extra));
        }
        var info = new ProcessStartInfo(Executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true, // QEMU's -serial stdio would otherwise read the harness's terminal
            UseShellExecute = false,
        };
        foreach (var a in ArgumentsBeforeImage)
        {
            info.ArgumentList.Add(a);
        }
        foreach (var a in extra)
        {
            info.ArgumentList.Add(a);
        }
        info.ArgumentList.Add(image);
        foreach (var a in ArgumentsAfterImage)
        {
            info.ArgumentList.Add(a);
        }
        foreach (var (key, value) in Environment)
        {
            info.Environment[key] = value;
        }
        return info;
    }

    /// <summary>The environment as <c>K=V K=V</c>, for the report.</summary>
    public string EnvironmentText => string.Join(' ', Environment.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"{e.Key}={e.Value}"));
}
