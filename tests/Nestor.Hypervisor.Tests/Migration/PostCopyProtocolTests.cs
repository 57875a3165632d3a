using System.Net;
using System.Net.Sockets;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Migration;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests.Migration;

/// <summary>Post-copy's two sides over a real loopback TCP connection, without a guest (whose timing would decide
/// whether it faults before the push reaches a page): the source pushes pages in order at a slow link rate, the
/// destination faults on a page far ahead of the push, and the source answers with that page first, then the pages of
/// the pre-paging window around it; every page arrives once with the source's bytes; and a source that goes away
/// mid-way makes a waiting fault fail saying how many pages never arrived.</summary>
public sealed class PostCopyProtocolTests : IDisposable
{
    private const int Page = 4096;
    private readonly GuestMemory memory = new(16UL << 20);
    private readonly TcpListener listener = new(IPAddress.Loopback, 0);
    private readonly List<IDisposable> owned = [];

    public PostCopyProtocolTests() => listener.Start();

    public void Dispose()
    {
        foreach (var item in owned)
        {
            item.Dispose();
        }
        listener.Dispose();
        memory.Dispose();
    }

    // The source's copy of RAM: pages 0..count-1 pending, each filled with a pattern of its index (not one repeated
    // byte, so that it travels whole), and the destination's map of them.
    private (RamImage Image, bool[] Pending, byte[] Bitmap) Source(int count)
    {
        var image = new RamImage(memory);
        var pending = new bool[image.Pages];
        var bitmap = new byte[8 + (image.Pages + 7) / 8];
        for (int i = 0; i < count; i++)
        {
            var page = image.Page(i);
            for (int b = 0; b < Page; b++)
            {
                page[b] = (byte)(i * 7 + b);
            }
            pending[i] = true;
            bitmap[8 + (i >> 3)] |= (byte)(1 << (i & 7));
        }
        return (image, pending, bitmap);
    }

    private (NetworkStream Source, NetworkStream Destination) Connect()
    {
        var client = new TcpClient();
        client.Connect((IPEndPoint)listener.LocalEndpoint);
        var server = listener.AcceptTcpClient();
        owned.Add(client);
        owned.Add(server);
        return (client.GetStream(), server.GetStream());
    }

    private PostCopyDestination Destination(RamImage layout, Stream network, byte[] bitmap) =>
        new(memory, layout, network, new Lock(), bitmap.AsSpan(8), (ulong)(memory.Regions.Max(r => r.Region.End.Value) / Page));

    [Fact]
    public void A_fault_far_ahead_of_the_push_is_answered_first_with_its_page_then_its_window_and_every_page_arrives_once()
    {
        const int Count = 256;
        var (image, pending, bitmap) = Source(Count);
        var (sourceEnd, destinationEnd) = Connect();
        var destination = Destination(new RamImage(memory), destinationEnd, bitmap);
        // 128 KiB/s: the push alone would take 6 s to reach page 200.
        var source = new PostCopySource(image, pending, new RateLimitedWriter(sourceEnd, 128 << 10), sourceEnd, window: 4, round: 1);
        (long Faults, long Received, long WaitMicros, long LongestMicros) result = default;
        var serving = new Thread(() => result = source.Run()) { IsBackground = true };
        serving.Start();
        destination.Start();

        ulong frame = image.GuestFrame(200);
        Assert.True(destination.IsAwaited(frame));
        destination.Fetch(frame);
        Assert.False(destination.IsAwaited(frame));
        Assert.True(image.Page(200).SequenceEqual(memory.Home(new GuestPhysical(frame * Page), Page)), "the demanded page holds the source's bytes");

        Assert.True(serving.Join(TimeSpan.FromSeconds(60)), "the source sent every page and had them acknowledged");
        Assert.Equal(1, source.Demanded);
        Assert.Equal(8, source.Prepaged); // 196..199 and 201..204
        Assert.Equal(Count, source.Pushed + source.Demanded + source.Prepaged);
        Assert.Equal(Count, result.Received);
        Assert.Equal(1, result.Faults);
        Assert.Equal(0, destination.Awaited);
        for (int i = 0; i < Count; i++)
        {
            Assert.True(image.Page(i).SequenceEqual(memory.Home(new GuestPhysical(image.GuestFrame(i) * Page), Page)), $"page {i} arrived with the source's bytes");
        }
        Assert.True(destination.WaitOver(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void A_source_that_goes_away_mid_way_makes_a_waiting_fault_fail_saying_how_many_pages_never_arrived()
    {
        var (image, _, bitmap) = Source(64);
        var (sourceEnd, destinationEnd) = Connect();
        string? lost = null;
        var destination = new PostCopyDestination(memory, new RamImage(memory), destinationEnd, new Lock(), bitmap.AsSpan(8),
            (ulong)(memory.Regions.Max(r => r.Region.End.Value) / Page))
        {
            Lost = why => lost = why,
        };
        destination.Start();
        Exception? failed = null;
        var waiting = new Thread(() =>
        {
            try
            {
                destination.Fetch(image.GuestFrame(10));
            }
            catch (Exception e)
            {
                failed = e;
            }
        })
        { IsBackground = true };
        waiting.Start();
        Thread.Sleep(200); // the fault waits: the source reads its request and sends nothing
        sourceEnd.Socket.Close();
        Assert.True(waiting.Join(TimeSpan.FromSeconds(10)), "the waiting fault ended");
        Assert.IsType<PostCopySourceLostException>(failed);
        Assert.True(destination.WaitOver(TimeSpan.FromSeconds(5)));
        Assert.Matches(@"^post-copy source lost: 64 pages never arrived \(", lost);
        var e = Assert.Throws<PostCopySourceLostException>(() => destination.Fetch(image.GuestFrame(11)));
        Assert.Contains("64 pages never arrived", e.Message);
        Assert.True(memory.Home(new GuestPhysical(image.GuestFrame(10) * Page), Page).IndexOfAnyExcept((byte)0) < 0, "nothing half-arrived is marked here");
    }
}
