using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>HOST.json and <c>--vm</c>: what they give, and errors that name the field.</summary>
public class HostConfigurationTests
{
    [Fact]
    public void A_file_gives_the_host_and_its_vms()
    {
        const string json = """
            { "host": { "memory": "512M", "swap": "128M", "cpus": 2, "scheduler": "credit" },
              "vms": [ { "name": "web", "cmdline": "compute 1000", "technique": "hw", "mmu": "shadow",
                         "memory": { "min": "32M", "max": "64M" }, "cpu": { "shares": 512, "limit": 40 } },
                       { "name": "db", "kernel": "builtin:spin", "run-limit-ms": 50 } ] }
            """;
        var spec = HostConfiguration.ToSpec(HostConfiguration.ParseFile(json, "HOST.json"), "HOST.json");
        Assert.Equal((512UL << 20, 128UL << 20, 2, SchedulerKind.Credit), (spec.MemoryBytes, spec.SwapBytes, spec.HostCpus, spec.Scheduler));
        var web = spec.Vms[0];
        Assert.Equal((Technique.HardwareAssist, MemoryVirtualization.Shadow), (web.Sim.Technique, web.Sim.Memory!.Value));
        Assert.Equal(new MemoryControls(32UL << 20, 64UL << 20, 640), web.Memory);
        Assert.Equal(new CpuControls(512, 0, 40), web.Cpu);
        Assert.Equal(CreditScheduler.DefaultWeight, spec.Vms[1].Cpu.Shares);
        Assert.Equal(50, spec.Vms[1].RunLimitMilliseconds);
    }

    [Theory]
    [InlineData("""{ "vms": [ { "name": "a", "cpu": { "shares": "many" } } ] }""", "$.vms[0].cpu.shares")]
    [InlineData("""{ "vms": [ { "name": "a", "memroy": {} } ] }""", "memroy")]
    [InlineData("""{ "host": { "cpus": 2.5 }, "vms": [] }""", "$.host.cpus")]
    [InlineData("""{ "vms": [ { "name": "a", "memory": { "max": "lots" } } ] }""", "vms[0].memory.max")]
    [InlineData("""{ "vms": [ { "name": "a", "cpu": { "limit": 140 } } ] }""", "vms[0].cpu.limit")]
    [InlineData("""{ "vms": [ { "name": "a", "technique": "magic" } ] }""", "vms[0].technique")]
    [InlineData("""{ "vms": [ { "cmdline": "" } ] }""", "vms[0].name")]
    [InlineData("""{ "vms": [ { "name": "a", "memory": { "min": "128M", "max": "64M" } } ] }""", "vms[0].memory.min")]
    public void A_malformed_file_is_an_error_naming_the_field(string json, string field)
    {
        var error = Assert.Throws<BadInputException>(() => HostConfiguration.ToSpec(HostConfiguration.ParseFile(json, "HOST.json"), "HOST.json"));
        Assert.Contains(field, error.Message);
        Assert.StartsWith("HOST.json: ", error.Message);
    }

    [Theory]
    [InlineData("vcpus=2,technique=bt", "2 vCPUs refused: several vCPUs under --technique bt", "--technique hw --mmu nested")]
    [InlineData("vcpus=2,technique=hw,mmu=shadow", "2 vCPUs refused: several vCPUs under --technique hw with shadow paging", "vcpus 1")]
    [InlineData("vcpus=17", "17 vCPUs is out of range", "between 1 and 16")]
    [InlineData("vcpus=0", "0 is not a number of vCPUs", "vcpus 1")]
    public void Vcpus_a_technique_cannot_run_are_refused_saying_why(string option, string message, string detail)
    {
        var file = new HostConfigFile { Vms = [HostConfiguration.ParseVmOption($"a=builtin:spin,{option}")] };
        var error = Assert.Throws<BadInputException>(() => HostConfiguration.ToSpec(file, "--vm"));
        Assert.Contains("vms[0].vcpus: " + message, error.Message);
        Assert.Contains(detail, error.Message + " " + error.Advice);
    }

    [Theory]
    [InlineData("native", null)]
    [InlineData("hw", "nested")]
    public void Several_vcpus_are_taken_under_a_technique_that_runs_them(string technique, string? mmu)
    {
        var file = new HostConfigFile { Vms = [HostConfiguration.ParseVmOption($"a=builtin:smp-spin,vcpus=2,technique={technique}{(mmu is null ? "" : ",mmu=" + mmu)}")] };
        var spec = HostConfiguration.ToSpec(file, "--vm");
        Assert.Equal(2, spec.Vms[0].VcpuCount);
    }

    [Fact]
    public void A_vm_option_gives_the_same_fields()
    {
        var file = new HostConfigFile { Vms = [HostConfiguration.ParseVmOption("a=builtin:nestoros,cmdline=compute 1000 ; hello,memory=32M,min=16M,shares=2000,reservation=10,limit=50,technique=pv")] };
        var vm = HostConfiguration.ToSpec(file, "--vm").Vms[0];
        Assert.Equal(("a", "compute 1000 ; hello", Technique.Paravirtual), (vm.Name, vm.CommandLine, vm.Sim.Technique));
        Assert.Equal(new CpuControls(2000, 10, 50), vm.Cpu);
        Assert.Equal((16UL << 20, 32UL << 20), (vm.Memory.MinBytes, vm.Memory.MaxBytes));
        var error = Assert.Throws<BadInputException>(() => HostConfiguration.ParseVmOption("a=builtin:spin,colour=red"));
        Assert.Contains("colour", error.Message);
    }
}
