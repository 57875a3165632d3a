namespace Nestor.Integration.Tests;

/// <summary><c>nestor run --balloon</c> (issue 15, docs/overcommit.md): the built command boots NestorOS with a
/// virtio-balloon whose first target the guest inflates to, runs the user-process balloon, and reports the device's
/// counters; bad targets are refused with advice.</summary>
public class BalloonCliTests
{
    [Fact]
    public void Nestor_run_with_a_balloon_inflates_to_the_target_and_reports_the_counters()
    {
        var r = NestorProcess.Run(TimeSpan.FromSeconds(300), "run", "--balloon", "--balloon-target", "8M", "--cmdline", "balloon 256 ; hello");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("virtio-balloon in slot 0: target 2048 pages, 2048 inflated", r.Stdout + r.Stderr);
        Assert.Contains("RESULT balloon present=1 pages=256 pinned=256 unpinned=256 actual_before=2048 actual_pinned=2304 actual_after=2048 zeroed=256", r.Stdout);
        // 2048 + 256 pages inflated, every one resident when discarded: 9216 KiB.
        Assert.Contains("balloon: target 2048 pages, actual 2048, inflated now 2048, inflated 2304 and deflated 256 in all, 9216 KiB returned to the host, 0 PFNs refused", r.Stderr);
    }

    [Theory]
    [InlineData("--balloon-target", "8M", "Add --balloon")]
    [InlineData("--balloon --balloon-target", "6K", "multiple of 4K")]
    [InlineData("--balloon --balloon-target", "1G", "at most")]
    public void Bad_balloon_options_are_refused_with_advice(string options, string value, string advice)
    {
        var r = NestorProcess.Run([.. "run".Split(' '), .. options.Split(' '), value, "--cmdline", "hello"]);
        Assert.Equal(120, r.ExitCode);
        Assert.Contains(advice, r.Stderr);
    }
}
