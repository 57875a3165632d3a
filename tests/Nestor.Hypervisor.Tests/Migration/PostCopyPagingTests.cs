using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests.Migration;

/// <summary>The P2M's side of post-copy without a network: a page still at the source is away until it arrives, and
/// every way to touch it (the guest's first access through <c>Touch</c>, a device's DMA read, a VMM read or write of
/// guest RAM) fetches it first; a page that is here is never asked for; a source that is lost makes the touch fail
/// saying so, and never hands out the zeros the page's home holds.</summary>
public sealed class PostCopyPagingTests : IDisposable
{
    private readonly Host host = Host.ForGuestMemory(32UL << 20);
    private readonly GuestMemory memory = new(16UL << 20);

    public void Dispose()
    {
        host.Dispose();
        memory.Dispose();
    }

    // A source in the test: Fetch writes the page's bytes (its frame number in every byte) into its home.
    private sealed class FakeSource(GuestMemory memory, params ulong[] frames) : IRemotePages
    {
        private readonly HashSet<ulong> awaited = [.. frames];

        public List<ulong> Fetched { get; } = [];

        public bool SourceLost { get; set; }

        public long Awaited => awaited.Count;

        public bool IsAwaited(ulong guestFrame) => awaited.Contains(guestFrame);

        public void Fetch(ulong guestFrame)
        {
            if (SourceLost)
            {
                throw new PostCopySourceLostException($"post-copy source lost: {awaited.Count} pages never arrived");
            }
            Fetched.Add(guestFrame);
            memory.Home(new GuestPhysical(guestFrame << 12), 4096).Fill((byte)guestFrame);
            awaited.Remove(guestFrame);
        }
    }

    [Fact]
    public void The_guests_first_touch_of_an_awaited_page_fetches_it_before_mapping_it_and_a_page_here_is_not_asked_for()
    {
        var source = new FakeSource(memory, 0x20, 0x21);
        GuestPhysicalMap.AwaitPages(memory, source);
        using var map = new GuestPhysicalMap(memory, host.FramePool);

        ulong host21 = map.Touch(0x21UL << 12, write: false);
        Assert.Equal([0x21UL], source.Fetched);
        Assert.Equal((byte)0x21, host.FramePool.Contents(host21)[100]);
        map.Touch(0x30UL << 12, write: true); // here already: not asked for
        map.Touch(0x21UL << 12, write: true); // arrived: not asked again
        Assert.Equal([0x21UL], source.Fetched);
        Assert.True(GuestPhysicalMap.AwaitsPages(memory));
    }

    [Fact]
    public void A_vmm_read_a_vmm_write_and_a_device_read_of_awaited_pages_fetch_them_first()
    {
        var source = new FakeSource(memory, 0x40, 0x41, 0x42);
        GuestPhysicalMap.AwaitPages(memory, source);
        using var map = new GuestPhysicalMap(memory, host.FramePool);

        var read = new byte[16];
        memory.Read(new GuestPhysical((0x40UL << 12) + 8), read);
        Assert.All(read, b => Assert.Equal((byte)0x40, b));
        memory.Span(new GuestPhysical(0x41UL << 12), 8).Fill(7); // a write: the page's other bytes must be the source's
        Assert.Equal((byte)0x41, memory.Home(new GuestPhysical((0x41UL << 12) + 100), 1)[0]);
        map.DeviceRead(0x42UL << 12, 4096);
        Assert.Equal([0x40UL, 0x41UL, 0x42UL], source.Fetched);
        Assert.False(GuestPhysicalMap.AwaitsPages(memory));
    }

    [Fact]
    public void A_touch_of_an_awaited_page_after_the_source_is_lost_fails_saying_so()
    {
        var source = new FakeSource(memory, 0x50) { SourceLost = true };
        GuestPhysicalMap.AwaitPages(memory, source);
        using var map = new GuestPhysicalMap(memory, host.FramePool);

        var e = Assert.Throws<PostCopySourceLostException>(() => map.Touch(0x50UL << 12, write: false));
        Assert.Contains("post-copy source lost: 1 pages never arrived", e.Message);
        Assert.False(map.TryHostPhysical(0x50UL << 12, out _)); // not mapped to its (zero) home
    }
}
