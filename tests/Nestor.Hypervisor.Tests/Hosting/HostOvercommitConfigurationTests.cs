using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Memory.Reclamation;
using Nestor.Hypervisor.Memory.Swapping;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>The memory-overcommitment switches of HOST.json and the command line (issue 15): each mechanism on by
/// default, each one off by the file or by a switch, and errors that name the field.</summary>
public class HostOvercommitConfigurationTests
{
    private static HostSpec Spec(string json, OvercommitSwitches? switches = null) =>
        HostConfiguration.ToSpec(HostConfiguration.ParseFile(json, "HOST.json"), "HOST.json", switches: switches);

    [Fact]
    public void Every_mechanism_is_on_by_default_with_esx_thresholds()
    {
        var o = Spec("""{ "vms": [ { "name": "a" } ] }""").Overcommit;
        Assert.True(o.Reclaim);
        Assert.True(o.Balloon);
        Assert.Equal(new SharingOptions(200), o.Sharing);
        Assert.Equal(new HostSwapOptions(null, SwapVictimPolicy.Random), o.HostSwap);
        Assert.Equal(ReclamationThresholds.Default, o.Thresholds);
    }

    [Fact]
    public void The_file_sets_each_switch_and_the_vms_balloon_and_swap_disk()
    {
        string dir = Path.GetTempPath();
        var spec = Spec($$"""
            { "host": { "balloon": false, "sharing": { "rate": 50, "per-vm-rate": 10 }, "host-swap": { "dir": "{{dir}}", "policy": "clock" },
                        "reclaim": { "high": 12, "soft": 8, "hard": 4, "low": 2 } },
              "vms": [ { "name": "a", "balloon": true, "swap": "swap.img,if=ata", "cmdline": "swaptouch 100" }, { "name": "b", "swap": "b.img" } ] }
            """);
        var o = spec.Overcommit;
        Assert.False(o.Balloon);
        Assert.Equal(new SharingOptions(50, 10), o.Sharing);
        Assert.Equal(new HostSwapOptions(dir, SwapVictimPolicy.Clock), o.HostSwap);
        Assert.Equal(new ReclamationThresholds(12, 8, 4, 2), o.Thresholds);
        Assert.True(spec.Vms[0].Balloon);
        Assert.Equal(new DiskConfig("swap.img", DiskInterface.Ata), spec.Vms[0].SwapDisk);
        Assert.Equal("swap=ata0 swaptouch 100", spec.Vms[0].BootCommandLine);
        Assert.Equal("swap=vda", spec.Vms[1].BootCommandLine);
        Assert.False(spec.Vms[1].Balloon);
    }

    [Fact]
    public void Switches_on_the_command_line_win_over_the_file()
    {
        var o = Spec("""{ "host": { "sharing": { "rate": 50 } }, "vms": [ { "name": "a" } ] }""",
            new OvercommitSwitches { NoBalloon = true, NoHostSwap = true, NoReclaim = true, SharingRate = 7 }).Overcommit;
        Assert.False(o.Balloon);
        Assert.Null(o.HostSwap);
        Assert.False(o.Reclaim);
        Assert.Equal(7, o.Sharing!.PagesPerRound);
        Assert.Null(Spec("""{ "vms": [ { "name": "a" } ] }""", new OvercommitSwitches { NoSharing = true }).Overcommit.Sharing);
        Assert.Null(Spec("""{ "host": { "sharing": { "enabled": false } }, "vms": [ { "name": "a" } ] }""").Overcommit.Sharing);
    }

    [Theory]
    [InlineData("""{ "host": { "sharing": { "rate": 0 } }, "vms": [ { "name": "a" } ] }""", "host.sharing.rate")]
    [InlineData("""{ "host": { "sharing": { "per-vm-rate": -1 } }, "vms": [ { "name": "a" } ] }""", "host.sharing.per-vm-rate")]
    [InlineData("""{ "host": { "host-swap": { "policy": "lru" } }, "vms": [ { "name": "a" } ] }""", "host.host-swap.policy")]
    [InlineData("""{ "host": { "host-swap": { "dir": "/no/such/dir" } }, "vms": [ { "name": "a" } ] }""", "host.host-swap.dir")]
    [InlineData("""{ "host": { "reclaim": { "soft": 9 } }, "vms": [ { "name": "a" } ] }""", "host.reclaim")]
    [InlineData("""{ "vms": [ { "name": "a", "swap": "x.img,if=floppy" } ] }""", "vms[0].swap")]
    [InlineData("""{ "vms": [ { "name": "a", "swap": "x.img,ro" } ] }""", "vms[0].swap")]
    [InlineData("""{ "vms": [ { "name": "a", "balloon": "yes" } ] }""", "$.vms[0].balloon")]
    [InlineData("""{ "host": { "sharing": { "rat": 3 } }, "vms": [ { "name": "a" } ] }""", "rat")]
    public void A_malformed_field_is_an_error_naming_it(string json, string field)
    {
        var e = Assert.Throws<BadInputException>(() => Spec(json));
        Assert.Contains(field, e.Message);
    }

    [Fact]
    public void A_vm_option_takes_balloon_and_swap()
    {
        var vm = HostConfiguration.ParseVmOption("a=builtin:nestoros,balloon,swap=s.img,swap-if=ata,cmdline=hello");
        Assert.True(vm.Balloon);
        Assert.Equal("s.img,if=ata", vm.Swap);
        Assert.Throws<BadInputException>(() => HostConfiguration.ParseVmOption("a=builtin:nestoros,swap-if=ata"));
    }
}
