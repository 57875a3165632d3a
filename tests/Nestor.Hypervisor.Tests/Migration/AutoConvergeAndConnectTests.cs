using System.Net;
using System.Net.Sockets;
using Nestor.Hypervisor.Migration;
using Xunit;

namespace Nestor.Hypervisor.Tests.Migration;

/// <summary>What sim's and KVM's migration sources share (docs/migration.md): auto-converge's throttle decision
/// (QEMU's <c>migration_trigger_throttle</c>: two rounds in a row not shrinking raise the throttle) and the
/// connection to the destination, whose refusal names the destination and the command that starts it.</summary>
public class AutoConvergeAndConnectTests
{
    [Fact]
    public void ThrottleRisesAfterTwoRoundsThatDoNotShrinkThenByTheIncrementUpToTheMaximum()
    {
        var settings = new MigrationSettings("tcp:127.0.0.1:1") { ThrottleInitial = 20, ThrottleIncrement = 30, ThrottleMaximum = 90 };
        int count = 0;
        int throttle = 0;
        // Dirty 600 bytes against 1,000 sent: above half, so the round does not shrink.
        throttle = settings.NextThrottle(throttle, 600, 1000, ref count);
        Assert.Equal((0, 1), (throttle, count));
        throttle = settings.NextThrottle(throttle, 600, 1000, ref count);
        Assert.Equal((20, 0), (throttle, count));
        // A shrinking round (exactly half is not above half) resets the count.
        throttle = settings.NextThrottle(throttle, 600, 1000, ref count);
        throttle = settings.NextThrottle(throttle, 500, 1000, ref count);
        Assert.Equal((20, 0), (throttle, count));
        for (int i = 0; i < 2; i++)
        {
            throttle = settings.NextThrottle(throttle, 900, 1000, ref count);
        }
        Assert.Equal(50, throttle);
        for (int i = 0; i < 6; i++)
        {
            throttle = settings.NextThrottle(throttle, 900, 1000, ref count);
        }
        Assert.Equal(90, throttle);
    }

    [Fact]
    public void MeasuredBandwidthIsTheLastRoundThatMovedBytesForOverAMillisecondAtMostTheLimit()
    {
        var settings = new MigrationSettings("tcp:127.0.0.1:1") { MaxBandwidth = 100_000_000 };
        Assert.Equal(100_000_000, settings.MeasuredBandwidth([]));
        // 1 MB in 20 ms is 50 MB/s; a later round of under a millisecond, or of no bytes, is not a measurement.
        MigrationRound[] rounds = [new(1, 256, 256, 1_000_000, 20, 0), new(2, 1, 1, 4096, 0.5, 0), new(3, 0, 0, 0, 5, 0)];
        Assert.Equal(50_000_000, settings.MeasuredBandwidth(rounds));
        // A loopback link outruns the limit: the limit.
        Assert.Equal(100_000_000, settings.MeasuredBandwidth([new(1, 256, 256, 1_000_000, 2, 0)]));
    }

    [Fact]
    public void WithoutAutoConvergeTheThrottleNeverMoves()
    {
        var settings = new MigrationSettings("tcp:127.0.0.1:1") { AutoConverge = false };
        int count = 0;
        int throttle = 0;
        for (int i = 0; i < 10; i++)
        {
            throttle = settings.NextThrottle(throttle, 1 << 20, 1, ref count);
        }
        Assert.Equal((0, 0), (throttle, count));
    }

    [Fact]
    public void ConnectingToNoDestinationIsACutNamingItAndTheCommandThatStartsIt()
    {
        // A port just freed: nothing listens on it, so the connection is refused at once.
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        var endpoint = (IPEndPoint)probe.LocalEndpoint;
        probe.Stop();
        string destination = $"127.0.0.1:{endpoint.Port}";
        var e = Assert.Throws<MigrationStreamException>(() => MigrationStream.Connect(endpoint, destination, "nestor host run --incoming " + destination));
        Assert.Equal(MigrationRefusal.Cut, e.Refusal);
        Assert.Contains($"cannot connect to {destination}", e.Message);
        Assert.Contains("Start the destination first: nestor host run --incoming " + destination, e.Advice);
    }

    [Fact]
    public void ConnectingToAListeningDestinationGivesAStreamWithTheReadTimeout()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            var endpoint = (IPEndPoint)listener.LocalEndpoint;
            using var client = MigrationStream.Connect(endpoint, endpoint.ToString(), "unused");
            Assert.True(client.Connected);
            Assert.True(client.NoDelay);
            Assert.Equal(120_000, client.GetStream().ReadTimeout);
        }
        finally
        {
            listener.Stop();
        }
    }
}
