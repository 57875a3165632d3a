using System.Text.Json;
using Nestor.Hypervisor.Hosting;

namespace Nestor.Hypervisor.Tests.Hosting.ControlApi;

/// <summary>Every route of the control API through a real HTTP client over the Unix socket, against real VMs on the
/// software machine (<see cref="Nestor.Tests.Shared.SpinningVmHost"/>): what each answers, what each refuses and
/// with which status.</summary>
public class ControlApiRouteTests
{
    [Fact]
    public void Every_route_answers_with_the_hosts_values()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        var host = api.Host.List();

        var instance = api.GetJson("/");
        Assert.Equal("nestor", instance.GetProperty("app_name").GetString());
        Assert.Equal(host.Count, instance.GetProperty("vm_count").GetInt32());

        var vms = api.GetJson("/vms").GetProperty("vms").EnumerateArray().ToList();
        Assert.Equal(host.Select(v => v.Name), vms.Select(v => v.GetProperty("name").GetString()));
        Assert.All(vms, v => Assert.Equal("Paused", v.GetProperty("state").GetString()));

        var beta = api.GetJson("/vms/beta");
        var expected = api.Host.Get("beta");
        Assert.Equal(expected.Technique, beta.GetProperty("technique").GetString());
        Assert.Equal(expected.VcpuCount, beta.GetProperty("vcpu_count").GetInt32());
        Assert.Equal(expected.Memory.MaxBytes, beta.GetProperty("memory").GetProperty("max_bytes").GetUInt64());
        Assert.Equal(expected.Cpu.Shares, beta.GetProperty("cpu").GetProperty("shares").GetInt32());
        Assert.Equal(JsonValueKind.Null, beta.GetProperty("cpu").GetProperty("limit").ValueKind);

        var counters = api.GetJson("/vms/beta/counters").GetProperty("counters").EnumerateArray()
            .Select(c => (c.GetProperty("name").GetString()!, c.GetProperty("unit").GetString()!)).ToList();
        Assert.Equal(expected.Counters.Select(c => (c.Name, c.Unit)), counters);

        var hostCounters = api.GetJson("/host").GetProperty("counters").EnumerateArray().Select(c => c.GetProperty("name").GetString());
        Assert.Equal(api.Host.HostCounters().Select(c => c.Name), hostCounters);

        Assert.Equal(expected.Cpu.Shares, api.GetJson("/vms/beta/cpu").GetProperty("shares").GetInt32());
        var (_, _, response) = api.Send("GET", "/vms");
        Assert.Equal("application/json", response.Content.Headers.ContentType!.MediaType);
    }

    [Fact]
    public void Pause_stops_the_guest_resume_runs_it_on_and_stop_ends_it()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: true, names: "spinner");
        long Instructions() => (long)api.GetJson("/vms/spinner/counters").GetProperty("counters").EnumerateArray()
            .Single(c => c.GetProperty("name").GetString() == "instructions_retired").GetProperty("value").GetUInt64();
        Thread.Sleep(300);

        Assert.Equal(204, api.Send("PATCH", "/vms/spinner", """{"state":"Paused"}""").Status);
        Assert.Equal("Paused", api.GetJson("/vms/spinner").GetProperty("state").GetString());
        long paused = Instructions();
        Assert.True(paused > 0, "the guest ran before it was paused");
        Thread.Sleep(300);
        Assert.Equal(paused, Instructions()); // paused: not one more instruction

        var again = api.Send("PATCH", "/vms/spinner", """{"state":"Paused"}""");
        Assert.Equal(409, again.Status);
        Assert.Contains("Paused", ControlApiHarness.FaultOf(again.Body));

        Assert.Equal(204, api.Send("PATCH", "/vms/spinner", """{"state":"Resumed"}""").Status);
        Assert.Equal("Running", api.GetJson("/vms/spinner").GetProperty("state").GetString());
        Thread.Sleep(300);
        Assert.Equal(204, api.Send("PATCH", "/vms/spinner", """{"state":"Paused"}""").Status);
        long resumed = Instructions();
        Assert.True(resumed > paused, $"the guest went on after resume ({paused} then {resumed})");
        Assert.Equal(409, api.Send("PATCH", "/vms/spinner", """{"state":"Paused"}""").Status);

        Assert.Equal(204, api.Send("PUT", "/vms/spinner/actions", """{"action_type":"Stop"}""").Status);
        var stopped = api.GetJson("/vms/spinner");
        Assert.Equal("Stopped", stopped.GetProperty("state").GetString());
        Assert.Equal("stopped by the operator", stopped.GetProperty("outcome").GetString());
        Assert.Equal(409, api.Send("PATCH", "/vms/spinner", """{"state":"Resumed"}""").Status);
        Assert.Equal(409, api.Send("PUT", "/vms/spinner/actions", """{"action_type":"Stop"}""").Status);
        Assert.Equal(resumed, Instructions());
    }

    [Fact]
    public void Cpu_controls_are_replaced_by_put_changed_by_patch_and_refused_when_out_of_range()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        Assert.Equal(204, api.Send("PUT", "/vms/alpha/cpu", """{"shares":2000,"reservation":10,"limit":50}""").Status);
        Assert.Equal(new CpuControls(2000, 10, 50), api.Host.Get("alpha").Cpu);
        Assert.Equal(50, api.GetJson("/vms/alpha/cpu").GetProperty("limit").GetDouble());

        Assert.Equal(204, api.Send("PATCH", "/vms/alpha/cpu", """{"shares":500}""").Status);
        Assert.Equal(new CpuControls(500, 10, 50), api.Host.Get("alpha").Cpu);
        Assert.Equal(204, api.Send("PATCH", "/vms/alpha/cpu", """{"limit":null}""").Status);
        Assert.Equal(new CpuControls(500, 10, null), api.Host.Get("alpha").Cpu);
        Assert.Equal(204, api.Send("PUT", "/vms/alpha/cpu", """{"shares":300}""").Status);
        Assert.Equal(new CpuControls(300, 0, null), api.Host.Get("alpha").Cpu); // PUT: what is not given is none
        int reachedHost = api.Spinning.Calls["SetCpu"];

        // Refused by the host (its message comes back) ...
        var zero = api.Send("PUT", "/vms/alpha/cpu", """{"shares":0}""");
        Assert.Equal(400, zero.Status);
        Assert.Contains("shares 0 is below 1", ControlApiHarness.FaultOf(zero.Body));
        Assert.Equal(400, api.Send("PATCH", "/vms/alpha/cpu", """{"reservation":60,"limit":40}""").Status);
        Assert.Equal(reachedHost + 2, api.Spinning.Calls["SetCpu"]);
        // ... and by the API before the host sees it.
        foreach (string body in new[] { """{"reservation":5}""", """{"shares":"many"}""", """{"shares":1,"weight":2}""", "{", "null", "[1]", "" })
        {
            var answer = api.Send("PUT", "/vms/alpha/cpu", body);
            Assert.True(answer.Status == 400, $"{body}: {answer.Status} {answer.Body}");
            Assert.NotEmpty(ControlApiHarness.FaultOf(answer.Body));
        }
        Assert.Equal(reachedHost + 2, api.Spinning.Calls["SetCpu"]);
        Assert.Equal(new CpuControls(300, 0, null), api.Host.Get("alpha").Cpu);
    }

    [Theory]
    [InlineData("GET", "/nowhere", null, 404)]
    [InlineData("GET", "/vms/nobody", null, 404)]
    [InlineData("PATCH", "/vms/nobody", """{"state":"Paused"}""", 404)]
    [InlineData("GET", "/vms/nobody/counters", null, 404)]
    [InlineData("PUT", "/vms/nobody/actions", """{"action_type":"Stop"}""", 404)]
    [InlineData("GET", "/vms/", null, 404)]
    [InlineData("GET", "/vms//cpu", null, 404)]
    [InlineData("GET", "/vms/alpha/balloon", null, 409)] // the route is there; this host has no balloons
    [InlineData("GET", "/vms?name=alpha", null, 400)]
    [InlineData("PATCH", "/vms/alpha", """{"state":"Running"}""", 400)]
    [InlineData("PATCH", "/vms/alpha", """{"status":"Paused"}""", 400)]
    [InlineData("PUT", "/vms/alpha/actions", """{"action_type":"Reboot"}""", 400)]
    [InlineData("DELETE", "/vms/alpha", null, 405)]
    [InlineData("POST", "/", "{}", 405)]
    [InlineData("PUT", "/vms", "{}", 405)]
    [InlineData("GET", "/vms/alpha/actions", null, 405)]
    public void Unknown_paths_vms_and_methods_and_bad_values_get_their_status_and_a_fault_message(string method, string path, string? body, int status)
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        var answer = api.Send(method, path, body);
        Assert.True(answer.Status == status, $"{method} {path}: {answer.Status} {answer.Body}");
        Assert.NotEmpty(ControlApiHarness.FaultOf(answer.Body));
        if (status == 405)
        {
            Assert.NotEmpty(answer.Response.Content.Headers.Allow);
            Assert.DoesNotContain(method, answer.Response.Content.Headers.Allow);
        }
        Assert.Equal(HostedVmState.Paused, api.Host.Get("alpha").State); // nothing happened to the VM
    }

    [Fact]
    public void A_vm_name_is_percent_decoded_from_the_path()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false, names: "web server");
        Assert.Equal("web server", api.GetJson("/vms/web%20server").GetProperty("name").GetString());
    }
}
