using System.Globalization;
using Microsoft.Win32.SafeHandles;

namespace Nestor.Hypervisor.Memory.Kvm;

/// <summary>What a range of this process's memory costs the host, page by page, from <c>/proc/self/pagemap</c> and,
/// when the process may see page frames (CAP_SYS_ADMIN), <c>/proc/kpageflags</c> and <c>/proc/kpagecount</c>
/// (Documentation/admin-guide/mm/pagemap.rst).</summary>
/// <param name="Pages">Pages in the range.</param>
/// <param name="ResidentPages">Pages present in host memory (pagemap bit 63): the range's share of the RSS.</param>
/// <param name="KsmPages">Present pages that are KSM pages (KPF_KSM), merged with identical pages; null when the
/// page frames are hidden from this process.</param>
/// <param name="ProportionalPages">Σ 1/mapcount over the present pages (the proportional set size, as smaps' Pss):
/// a page merged into one KSM page with nine others counts a tenth; null when the frames are hidden.</param>
public readonly record struct RangeResidency(long Pages, long ResidentPages, long? KsmPages, double? ProportionalPages)
{
    /// <summary>Resident bytes (RSS of the range).</summary>
    public long ResidentBytes => ResidentPages * ResidentMemory.PageBytes;

    /// <summary>Proportional bytes (PSS of the range), or the resident bytes when the frames are hidden.</summary>
    public double ProportionalBytes => (ProportionalPages ?? ResidentPages) * ResidentMemory.PageBytes;

    public static RangeResidency operator +(RangeResidency a, RangeResidency b) => new(a.Pages + b.Pages, a.ResidentPages + b.ResidentPages,
        a.KsmPages is { } x && b.KsmPages is { } y ? x + y : null,
        a.ProportionalPages is { } p && b.ProportionalPages is { } q ? p + q : null);
}

/// <summary>What the kernel's <c>/proc/self/smaps</c> says of the mappings that hold some ranges (Rss, Pss, KSM, in
/// bytes; Documentation/filesystems/proc.rst §1.1). <paramref name="Spills"/> is true when one of those mappings also
/// holds memory outside the ranges (the kernel merges adjacent anonymous mappings with equal flags into one), so the
/// figures include it.</summary>
public readonly record struct MappingResidency(long RssBytes, long PssBytes, long KsmBytes, int Mappings, bool Spills);

/// <summary>Resident memory of guest RAM, measured from <c>/proc</c>: the real figures of the KVM engine's VMs, whose
/// RAM is anonymous memory of this process (issue 15: "the KVM figures come from real resident memory").</summary>
public static class ResidentMemory
{
    /// <summary>The page size of the figures.</summary>
    public const int PageBytes = 4096;

    private const ulong Present = 1UL << 63;
    private const ulong FrameMask = (1UL << 55) - 1;
    private const ulong KpfKsm = 1UL << 21;      // include/uapi/linux/kernel-page-flags.h
    private const ulong KpfZeroPage = 1UL << 24;

    /// <summary>The residency of a VM's RAM, all its regions together.</summary>
    public static RangeResidency Of(GuestMemory memory)
    {
        var total = new RangeResidency(0, 0, 0, 0);
        foreach (var (_, backing) in memory.Regions)
        {
            total += Of(backing.Address, backing.Length);
        }
        return total;
    }

    /// <summary>The residency of [<paramref name="address"/>, +<paramref name="length"/>) of this process (page-aligned).</summary>
    public static RangeResidency Of(nint address, ulong length)
    {
        if (((ulong)address | length) % PageBytes != 0)
        {
            throw new ArgumentException($"0x{address:x}+0x{length:x} is not whole pages");
        }
        long pages = (long)(length / PageBytes);
        var entries = new ulong[pages];
        using (var pagemap = File.OpenHandle("/proc/self/pagemap"))
        {
            ReadExactly(pagemap, System.Runtime.InteropServices.MemoryMarshal.AsBytes(entries.AsSpan()), (long)((ulong)address / PageBytes * 8));
        }
        long resident = 0;
        bool framesVisible = false;
        foreach (ulong e in entries)
        {
            if ((e & Present) != 0)
            {
                resident++;
                framesVisible |= (e & FrameMask) != 0;
            }
        }
        if (!framesVisible || !File.Exists("/proc/kpageflags"))
        {
            // Without CAP_SYS_ADMIN the kernel reports frame 0 for every page (pagemap.rst, "Since Linux 4.2").
            return new RangeResidency(pages, resident, resident == 0 ? 0 : null, resident == 0 ? 0 : null);
        }
        long ksm = 0;
        double proportional = 0;
        using var flags = File.OpenHandle("/proc/kpageflags");
        using var counts = File.OpenHandle("/proc/kpagecount");
        Span<byte> word = stackalloc byte[8];
        foreach (ulong e in entries)
        {
            if ((e & Present) == 0)
            {
                continue;
            }
            long frame = (long)(e & FrameMask);
            ReadExactly(flags, word, frame * 8);
            ulong f = BitConverter.ToUInt64(word);
            if ((f & KpfZeroPage) != 0)
            {
                resident--; // the shared zero page (KSM's use_zero_pages) costs no memory of its own
                continue;
            }
            ReadExactly(counts, word, frame * 8);
            ulong mapcount = BitConverter.ToUInt64(word);
            ksm += (f & KpfKsm) != 0 ? 1 : 0;
            proportional += 1.0 / Math.Max(1UL, mapcount);
        }
        return new RangeResidency(pages, resident, ksm, proportional);
    }

    /// <summary>Sums smaps' Rss, Pss and KSM over the mappings of this process that overlap the VMs' RAM.</summary>
    public static MappingResidency Mappings(IEnumerable<GuestMemory> memories)
    {
        var ranges = memories.SelectMany(m => m.Regions).Select(r => ((ulong)r.Backing.Address, (ulong)r.Backing.Address + r.Backing.Length)).ToList();
        using var reader = new StreamReader("/proc/self/smaps");
        return Mappings(reader, ranges);
    }

    /// <summary>Sums smaps' Rss, Pss and KSM over the mappings in <paramref name="smaps"/> that overlap one of
    /// <paramref name="ranges"/> ([start, end) host addresses).</summary>
    public static MappingResidency Mappings(TextReader smaps, IReadOnlyList<(ulong Start, ulong End)> ranges)
    {
        long rss = 0, pss = 0, ksm = 0;
        int mappings = 0;
        bool spills = false, inside = false;
        while (smaps.ReadLine() is { } line)
        {
            int dash = line.IndexOf('-');
            int space = line.IndexOf(' ');
            if (dash > 0 && space > dash && IsHex(line.AsSpan(0, dash)))
            {
                ulong start = ulong.Parse(line.AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                ulong end = ulong.Parse(line.AsSpan(dash + 1, space - dash - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                var overlapping = ranges.Where(r => r.Start < end && start < r.End).ToList();
                inside = overlapping.Count > 0;
                if (inside)
                {
                    mappings++;
                    spills |= Uncovered(start, end, overlapping);
                }
                continue;
            }
            if (!inside)
            {
                continue;
            }
            if (Field(line, "Rss:") is { } r)
            {
                rss += r;
            }
            else if (Field(line, "Pss:") is { } p)
            {
                pss += p;
            }
            else if (Field(line, "KSM:") is { } k)
            {
                ksm += k;
            }
        }
        return new MappingResidency(rss, pss, ksm, mappings, spills);
    }

    /// <summary>The resident set of this whole process (VmRSS of /proc/self/status), in bytes.</summary>
    public static long ProcessResidentBytes()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (Field(line, "VmRSS:") is { } bytes)
            {
                return bytes;
            }
        }
        throw new InvalidOperationException("/proc/self/status has no VmRSS line");
    }

    // True when part of [start, end) lies in none of the ranges.
    private static bool Uncovered(ulong start, ulong end, List<(ulong Start, ulong End)> ranges)
    {
        ulong at = start;
        foreach (var r in ranges.OrderBy(r => r.Start))
        {
            if (r.Start > at)
            {
                return true;
            }
            at = Math.Max(at, r.End);
            if (at >= end)
            {
                return false;
            }
        }
        return at < end;
    }

    // "Name:   123 kB" in bytes.
    private static long? Field(string line, string name)
    {
        if (!line.StartsWith(name, StringComparison.Ordinal))
        {
            return null;
        }
        var rest = line.AsSpan(name.Length).Trim();
        int unit = rest.IndexOf(' ');
        var number = unit < 0 ? rest : rest[..unit];
        long value = long.Parse(number, NumberStyles.Integer, CultureInfo.InvariantCulture);
        return unit >= 0 && rest[(unit + 1)..].Trim().SequenceEqual("kB") ? value * 1024 : value;
    }

    private static bool IsHex(ReadOnlySpan<char> text)
    {
        foreach (char c in text)
        {
            if (!char.IsAsciiHexDigit(c))
            {
                return false;
            }
        }
        return text.Length > 0;
    }

    private static void ReadExactly(SafeFileHandle handle, Span<byte> destination, long offset)
    {
        while (destination.Length > 0)
        {
            int n = RandomAccess.Read(handle, destination, offset);
            if (n <= 0)
            {
                throw new IOException($"short read at offset {offset} of a /proc page file");
            }
            destination = destination[n..];
            offset += n;
        }
    }
}
