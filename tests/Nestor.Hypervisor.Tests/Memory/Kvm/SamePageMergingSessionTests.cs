using Nestor.Hypervisor.Memory.Kvm;

namespace Nestor.Hypervisor.Tests;

/// <summary>A KSM session over a directory shaped as /sys/kernel/mm/ksm (files the kernel's names, values the host's):
/// what it restores when it ends, and when the process before it was killed before it could.</summary>
public sealed class SamePageMergingSessionTests : IDisposable
{
    private readonly string directory = Directory.CreateTempSubdirectory("nestor-ksm-").FullName;

    public SamePageMergingSessionTests()
    {
        Write("run", "0");
        Write("pages_to_scan", "100");
        Write("sleep_millisecs", "20");
        foreach (string counter in new[] { "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans" })
        {
            Write(counter, "0");
        }
    }

    [Fact]
    public void A_session_restores_the_hosts_settings_when_it_ends()
    {
        using (var session = SamePageMerging.Start(2000, 10, directory))
        {
            Assert.Equal("1", Read("run"));
            Assert.Equal("2000", Read("pages_to_scan"));
            Assert.False(session.Recovered);
        }
        Assert.Equal("0", Read("run"));
        Assert.Equal("100", Read("pages_to_scan"));
        Assert.Equal("20", Read("sleep_millisecs"));
    }

    /// <summary>The bench killed with SIGKILL left KSM running at its own rate; the next session takes the settings
    /// the killed one recorded, not the ones it finds, and puts the host back as it was before either.</summary>
    [Fact]
    public void The_session_after_a_killed_one_restores_the_settings_from_before_it()
    {
        var killed = SamePageMerging.Start(5000, 1, directory);
        killed.Abandon();
        Assert.Equal("1", Read("run"));
        Assert.Equal("5000", Read("pages_to_scan"));

        using (var next = SamePageMerging.Start(2000, 10, directory))
        {
            Assert.True(next.Recovered);
        }
        Assert.Equal("0", Read("run"));
        Assert.Equal("100", Read("pages_to_scan"));
        Assert.Equal("20", Read("sleep_millisecs"));

        // And once restored, nothing is left to recover.
        using var after = SamePageMerging.Start(2000, 10, directory);
        Assert.False(after.Recovered);
    }

    private void Write(string name, string value) => File.WriteAllText(Path.Combine(directory, name), value);

    private string Read(string name) => File.ReadAllText(Path.Combine(directory, name)).Trim();

    public void Dispose()
    {
        Directory.Delete(directory, recursive: true);
        File.Delete(directory + ".nestor-lock");
    }
}
