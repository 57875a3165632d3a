using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Memory.Kvm;
using Nestor.Machine.Addresses;

namespace Nestor.Kvm.Tests;

/// <summary>A test that needs the host's KSM to be switchable (root, CONFIG_KSM, a writable /sys): skipped with the
/// probe's reason on a host without it, so that it never passes silently.</summary>
public sealed class RequiresKsmFactAttribute : FactAttribute
{
    public RequiresKsmFactAttribute()
    {
        var probe = SamePageMerging.Probe();
        if (!probe.Writable)
        {
            Skip = $"the host's KSM cannot be switched on: {probe.Reason}";
        }
    }
}

/// <summary>Guest RAM of real KVM VMs (ring-0 pattern guests, which this host's nested KVM runs), measured from
/// /proc: resident once written, released by the balloon's madvise, merged by KSM across identical VMs.</summary>
[Collection(KsmCollection.Name)]
public class GuestMemoryOnKvmTests
{
    private static readonly KvmOvercommitSettings Settings = new(MemoryBytes: 3UL << 20); // small: this host's nested KVM takes tens of ms a page

    [Fact]
    public void A_kvm_vms_written_memory_is_measured_resident_and_a_fresh_vm_holds_almost_none()
    {
        RequiresKvm.Check();
        var plan = PatternPlan.For(Settings.MemoryBytes, identical: 0.5, zero: 0.25, balloonFraction: 0);
        using var vm = new PatternVm(plan, seed: 7, Settings, merge: false);
        var fresh = ResidentMemory.Of(vm.Vm.Memory);
        Assert.Equal((long)(Settings.MemoryBytes / 4096), fresh.Pages);
        Assert.True(fresh.ResidentPages < 64, $"a VM that has not run holds {fresh.ResidentPages} pages (its boot data and kernel only)");
        vm.Start();
        vm.WaitFor(PatternGuest.Filled);
        var filled = ResidentMemory.Of(vm.Vm.Memory);
        // Every page the guest wrote is resident, zeros included (a written zero page is a page), and little else.
        Assert.InRange(filled.ResidentPages, plan.FilledPages, plan.FilledPages + 64);
        Assert.Equal(filled.ResidentBytes, vm.Vm.Memory.Regions.Sum(r => (long)r.Backing.ResidentBytes()));
        var smaps = ResidentMemory.Mappings([vm.Vm.Memory]);
        Assert.True(smaps.RssBytes >= filled.ResidentBytes, $"smaps says {smaps.RssBytes} bytes resident, pagemap {filled.ResidentBytes}");
        vm.Continue();
        vm.WaitFor(PatternGuest.Verified);
        vm.Continue();
        vm.Finish();
    }

    [Fact]
    public void Inflating_releases_the_pages_with_madvise_the_rss_drops_and_deflated_pages_read_zero()
    {
        RequiresKvm.Check();
        var plan = PatternPlan.For(Settings.MemoryBytes, identical: 0, zero: 0, balloonFraction: 0.5);
        using var vm = new PatternVm(plan, seed: 3, Settings, merge: false);
        vm.Start();
        vm.WaitFor(PatternGuest.Filled);
        vm.Continue();
        vm.WaitFor(PatternGuest.Verified);
        var before = ResidentMemory.Of(vm.Vm.Memory);
        vm.Continue();
        vm.WaitFor(PatternGuest.Inflated);
        var inflated = ResidentMemory.Of(vm.Vm.Memory);
        Assert.Equal(plan.BalloonPages, vm.Balloon.PagesInflated);
        Assert.Equal(plan.BalloonPages, before.ResidentPages - inflated.ResidentPages);
        Assert.Equal(plan.BalloonPages * 4096, vm.Balloon.BytesReturnedToHost);
        vm.Continue();
        vm.WaitFor(PatternGuest.Deflated); // the guest checked the deflated pages read zero before saying so
        var deflated = ResidentMemory.Of(vm.Vm.Memory);
        Assert.True(deflated.ResidentPages <= inflated.ResidentPages + 1, "reading zero pages back must not make them resident");
        vm.Continue();
        Assert.Equal(PatternGuest.Success, vm.Finish().GuestStatus);
        Assert.Equal(0, vm.Balloon.InflatedPages);
        Assert.Equal(0, vm.Balloon.RefusedPages);
    }

    [RequiresKsmFact]
    public void Ksm_merges_the_identical_pages_of_two_vms_and_their_content_survives()
    {
        RequiresKvm.Check();
        var plan = PatternPlan.For(Settings.MemoryBytes, identical: 0.75, zero: 0, balloonFraction: 0);
        var vms = new List<PatternVm>();
        string runBefore = File.ReadAllText("/sys/kernel/mm/ksm/run").Trim();
        try
        {
            using var ksm = SamePageMerging.Start(pagesToScan: 4000, sleepMilliseconds: 10);
            for (int i = 0; i < 2; i++)
            {
                vms.Add(new PatternVm(plan, (ulong)i + 1, Settings, merge: true));
                vms[i].Start();
            }
            vms.ForEach(v => v.WaitFor(PatternGuest.Filled));
            var counters = ksm.WaitUntilSettled(TimeSpan.FromMinutes(2), out bool settled);
            Assert.True(settled, $"KSM did not settle in 2 minutes: {counters}");
            var a = ResidentMemory.Of(vms[0].Vm.Memory);
            var b = ResidentMemory.Of(vms[1].Vm.Memory);
            Assert.NotNull(a.KsmPages);
            // Each identical page of one VM is merged with its twin in the other: at least those are KSM pages, and
            // the two VMs hold them once (PSS about half a page each).
            Assert.True(a.KsmPages >= plan.IdenticalPages && b.KsmPages >= plan.IdenticalPages,
                $"KSM pages {a.KsmPages} and {b.KsmPages}, expected at least the {plan.IdenticalPages} identical pages each");
            double saved = a.ResidentPages + b.ResidentPages - (a.ProportionalPages!.Value + b.ProportionalPages!.Value);
            Assert.True(saved >= plan.IdenticalPages, $"saved {saved} pages, expected at least {plan.IdenticalPages}");
            Assert.True(counters.PagesSharing >= plan.IdenticalPages, $"pages_sharing {counters.PagesSharing}");
            var smaps = ResidentMemory.Mappings(vms.Select(v => v.Vm.Memory));
            Assert.True(smaps.KsmBytes >= 2 * plan.IdenticalPages * 4096L, $"smaps KSM {smaps.KsmBytes} bytes");
            // The guests check every word they wrote after the merge.
            vms.ForEach(v => v.Continue());
            vms.ForEach(v => v.WaitFor(PatternGuest.Verified));
            vms.ForEach(v => v.Continue());
            vms.ForEach(v => Assert.Equal(PatternGuest.Success, v.Finish().GuestStatus));
        }
        finally
        {
            vms.ForEach(v => v.Dispose());
        }
        Assert.Equal(runBefore, File.ReadAllText("/sys/kernel/mm/ksm/run").Trim()); // the host's setting is back
    }

    [Fact]
    public void A_ksm_session_restores_the_hosts_settings_also_when_what_ran_failed()
    {
        string directory = Directory.CreateTempSubdirectory("nestor-ksm-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(directory, "run"), "0\n");
            File.WriteAllText(Path.Combine(directory, "pages_to_scan"), "100\n");
            File.WriteAllText(Path.Combine(directory, "sleep_millisecs"), "20\n");
            foreach (string counter in new[] { "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans" })
            {
                File.WriteAllText(Path.Combine(directory, counter), "7\n");
            }
            Action failingRun = () =>
            {
                using var session = SamePageMerging.Start(4000, 10, directory);
                Assert.Equal("1", File.ReadAllText(Path.Combine(directory, "run")));
                Assert.Equal("4000", File.ReadAllText(Path.Combine(directory, "pages_to_scan")));
                Assert.Equal(new KsmCounters(7, 7, 7, 7, 7, 0), session.Read());
                throw new InvalidOperationException("what ran failed");
            };
            Assert.Throws<InvalidOperationException>(failingRun);
            Assert.Equal("0", File.ReadAllText(Path.Combine(directory, "run")));
            Assert.Equal("100", File.ReadAllText(Path.Combine(directory, "pages_to_scan")));
            Assert.Equal("20", File.ReadAllText(Path.Combine(directory, "sleep_millisecs")));
            var missing = SamePageMerging.Probe(Path.Combine(directory, "none"));
            Assert.False(missing.Available);
            Assert.Contains("CONFIG_KSM", missing.Reason);
            var e = Assert.Throws<Nestor.Hypervisor.Errors.HostUnsupportedException>(() => SamePageMerging.Start(1, 1, Path.Combine(directory, "none")));
            Assert.Contains("cannot be switched on", e.Message);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void Smaps_figures_are_summed_over_the_mappings_of_the_ranges_and_a_spill_is_flagged()
    {
        const string smaps = """
            7f0000000000-7f0000400000 rw-p 00000000 00:00 0
            Size:               4096 kB
            Rss:                 800 kB
            Pss:                 500 kB
            KSM:                 600 kB
            7f0000400000-7f0000800000 rw-p 00000000 00:00 0
            Size:               4096 kB
            Rss:                 100 kB
            Pss:                 100 kB
            KSM:                   0 kB
            7f0000800000-7f0000900000 rw-p 00000000 00:00 0
            Rss:                  40 kB
            Pss:                  40 kB
            """;
        var inside = ResidentMemory.Mappings(new StringReader(smaps), [(0x7f0000000000UL, 0x7f0000800000UL)]);
        Assert.Equal(new MappingResidency(900 * 1024, 600 * 1024, 600 * 1024, 2, Spills: false), inside);
        var spilling = ResidentMemory.Mappings(new StringReader(smaps), [(0x7f0000000000UL, 0x7f0000200000UL)]);
        Assert.Equal(new MappingResidency(800 * 1024, 500 * 1024, 600 * 1024, 1, Spills: true), spilling);
    }

    [Fact]
    public void The_port_balloon_refuses_pages_outside_ram_and_twice_inflated_ones()
    {
        using var memory = new GuestMemory(4UL << 20);
        var balloon = new BalloonPort(memory);
        memory.Write(new GuestPhysical(0x200000), new byte[4096 * 2].Select(_ => (byte)0xAB).ToArray());
        Write(balloon, BalloonPort.PfnRegister, 0x200);
        Write(balloon, BalloonPort.CountRegister, 2);
        Write(balloon, BalloonPort.CommandRegister, BalloonPort.Inflate);
        Assert.Equal(2u, balloon.Read(BalloonPort.BasePort + BalloonPort.CommandRegister, 4));
        Assert.Equal(2 * 4096, balloon.BytesReturnedToHost);
        Assert.True(memory.Span(new GuestPhysical(0x200000), 8192).IndexOfAnyExcept((byte)0) < 0, "a released page reads zero");
        // Again: both refused. Beyond RAM (4 MiB is frame 0x400): refused.
        Write(balloon, BalloonPort.CommandRegister, BalloonPort.Inflate);
        Assert.Equal(0u, balloon.Read(BalloonPort.BasePort + BalloonPort.CommandRegister, 4));
        Write(balloon, BalloonPort.PfnRegister, 0x3FF);
        Write(balloon, BalloonPort.CountRegister, 3);
        Write(balloon, BalloonPort.CommandRegister, BalloonPort.Inflate);
        Assert.Equal(1u, balloon.Read(BalloonPort.BasePort + BalloonPort.CommandRegister, 4));
        Assert.Equal(4, balloon.RefusedPages);
        Assert.Equal(3, balloon.InflatedPages);
        // Deflating a page not inflated is refused; deflating the first two works.
        Write(balloon, BalloonPort.PfnRegister, 0x1FF);
        Write(balloon, BalloonPort.CountRegister, 3);
        Write(balloon, BalloonPort.CommandRegister, BalloonPort.Deflate);
        Assert.Equal(2u, balloon.Read(BalloonPort.BasePort + BalloonPort.CommandRegister, 4));
        Assert.Equal(1, balloon.InflatedPages);
        Assert.Equal(5, balloon.RefusedPages);
    }

    private static void Write(BalloonPort port, ushort register, uint value) => port.Write((ushort)(BalloonPort.BasePort + register), 4, value);
}

/// <summary>The KSM tests touch a host-wide setting: one at a time within the run.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class KsmCollection
{
    public const string Name = "host KSM";
}
