using System.Text.Json;
using Nestor.Hypervisor.Capabilities;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Integration.Tests.NestorProcess;

namespace Nestor.Integration.Tests;

public class CapabilityTests
{
    [Fact]
    public void Info_reports_the_api_capabilities_probes_and_engine_verdicts()
    {
        RequireKvm();
        var r = Run("info", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        var root = JsonDocument.Parse(r.Stdout).RootElement;
        Assert.True(root.GetProperty("kvm_available").GetBoolean());
        Assert.Equal(12, root.GetProperty("api_version").GetInt32());
        var probes = root.GetProperty("probes").EnumerateArray().ToList();
        Assert.True(probes.Single(p => p.GetProperty("name").GetString() == "ring0-io").GetProperty("works").GetBoolean());
        Assert.Equal(HostCapabilities.ProbeCatalogue.Count(), probes.Count);
        var text = Run("info");
        Assert.Contains("What this host's KVM can run", text.Stdout);
        Assert.Contains("kvm  runs        ring-0 code with port I/O", text.Stdout);
    }

    /// <summary>A guest that needs a software interrupt: refused up front where the probe fails, run where it works.</summary>
    [Fact]
    public void Run_refuses_up_front_a_guest_the_host_cannot_run_and_force_overrides()
    {
        RequireKvm();
        var host = HostCapabilities.Probe("/dev/kvm", [GuestFeature.ExceptionDelivery]);
        string guest = WriteTemp(ProbeGuests.SoftwareInterrupt(), ".bin");
        var r = Run("run", "--engine", "kvm", "--flat", guest);
        if (host.Supports(GuestFeature.ExceptionDelivery))
        {
            Assert.True(r.ExitCode == (int)ProbeGuests.Success, r.ToString());
            return;
        }
        Assert.True(r.ExitCode == 121, r.ToString());
        Assert.Contains("cannot run", r.Stderr);
        Assert.Contains("int 40h", r.Stderr);
        Assert.Contains("--force", r.Stderr);
        var forced = Run("run", "--engine", "kvm", "--flat", guest, "--force");
        Assert.NotEqual(121, forced.ExitCode);
        if (forced.ExitCode == 123)
        {
            // KVM could not emulate it: the message shows the instruction's bytes and text.
            Assert.Contains("bytes cd 40 (int 40h)", forced.Stderr);
        }
    }
}
