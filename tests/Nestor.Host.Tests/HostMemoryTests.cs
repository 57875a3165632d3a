using System.Diagnostics;

namespace Nestor.Host.Tests;

/// <summary>The host memory calls, checked against what the host kernel reports (mincore, /proc/self/status,
/// /proc/self/maps).</summary>
public class HostMemoryTests
{
    private const int Page = 4096;

    [Fact]
    public void Anonymous_memory_is_resident_only_once_touched_and_discard_gives_it_back_as_zeros()
    {
        using var memory = HostMemory.MapAnonymous(16 * Page);
        Assert.Equal(16UL * Page, memory.Length);
        Assert.False(memory.IsResident(3 * Page), "NORESERVE anonymous memory is allocated on first touch");
        memory.Slice(3 * Page, Page).Fill(0xA5);
        Assert.True(memory.IsResident(3 * Page));
        Assert.False(memory.IsResident(4 * Page));

        memory.Discard(3 * Page, Page);

        Assert.False(memory.IsResident(3 * Page), "madvise(MADV_DONTNEED) returned the page to the host");
        Assert.True(memory.Slice(3 * Page, Page).IndexOfAnyExcept((byte)0) < 0, "a discarded private page reads as zeros");
    }

    [Fact]
    public void Discarding_many_pages_lowers_the_process_resident_set()
    {
        const int pages = 8192; // 32 MiB, well above the noise of the rest of the process
        using var memory = HostMemory.MapAnonymous((ulong)pages * Page);
        for (int i = 0; i < pages; i++)
        {
            memory.Slice((ulong)i * Page, 1)[0] = 1;
        }
        long touched = ResidentAnonymousBytes();
        memory.Discard(0, memory.Length);
        long discarded = ResidentAnonymousBytes();
        Assert.True(touched - discarded >= (long)memory.Length * 3 / 4,
            $"RssAnon went from {touched} to {discarded} bytes after discarding {memory.Length}");
    }

    [Fact]
    public void Protect_changes_what_the_host_allows()
    {
        using var memory = HostMemory.MapAnonymous(2 * Page);
        memory.Slice(0, 1)[0] = 7;
        memory.Protect(0, Page, HostProtection.Read);
        Assert.Equal("r--p", Permissions(memory.Address));
        Assert.Equal("rw-p", Permissions(memory.Address + Page));
        Assert.Equal(7, memory.Slice(0, 1)[0]); // still readable
        memory.Protect(0, Page, HostProtection.ReadWrite);
        Assert.Equal("rw-p", Permissions(memory.Address));
        memory.Slice(0, 1)[0] = 8; // writable again
        Assert.Equal(8, memory.Slice(0, 1)[0]);
        var e = Assert.Throws<HostCallException>(() => MemoryCalls.Protect(memory.Address + 1, Page, HostProtection.Read));
        Assert.Equal(22, e.ErrorNumber); // EINVAL: not page-aligned
        Assert.Contains("mprotect", e.Message);
    }

    [Fact]
    public void Failed_calls_carry_errno()
    {
        var e = Assert.Throws<HostCallException>(() => MemoryCalls.Discard(1, Page));
        Assert.Equal(22, e.ErrorNumber); // EINVAL: not page-aligned
        Assert.Contains("madvise", e.Operation);
        var mapping = Assert.Throws<HostCallException>(() => HostMemory.MapAnonymous(1UL << 62));
        Assert.Equal(12, mapping.ErrorNumber); // ENOMEM
    }

    [Fact]
    public void Ranges_outside_the_mapping_or_not_whole_pages_are_refused()
    {
        using var memory = HostMemory.MapAnonymous(Page);
        Assert.Throws<ArgumentOutOfRangeException>(() => memory.Slice(Page, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => memory.Discard(0, 2 * Page));
        Assert.Throws<ArgumentException>(() => memory.Discard(0, 100));
        memory.Dispose();
        Assert.Throws<ObjectDisposedException>(() => memory.Address);
    }

    /// <summary>The permissions /proc/self/maps shows for the mapping that holds <paramref name="address"/>.</summary>
    private static string Permissions(nint address)
    {
        foreach (string line in File.ReadLines("/proc/self/maps"))
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            string[] range = fields[0].Split('-');
            ulong start = Convert.ToUInt64(range[0], 16), end = Convert.ToUInt64(range[1], 16);
            if ((ulong)address >= start && (ulong)address < end)
            {
                return fields[1];
            }
        }
        throw new UnreachableException($"0x{address:x} is in no mapping");
    }

    private static long ResidentAnonymousBytes()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("RssAnon:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
            }
        }
        throw new UnreachableException("/proc/self/status has no RssAnon line");
    }
}
