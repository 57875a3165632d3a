using System.CommandLine;
using System.Globalization;
using Nestor.Hypervisor.Errors;
using Nestor.Machine.Paging;

namespace Nestor.Cli.Commands;

/// <summary>The MMU's cache options shared by <c>run</c>, <c>bench</c> and <c>walk</c>: the TLBs, the page-walk cache
/// (the guest dimension's, under nested paging), and nested paging's nested TLB and nested page-walk cache — each
/// switchable (0) and sized (Bhargava et al., ASPLOS 2008, compare these designs).</summary>
internal sealed class MmuOptions
{
    private readonly Option<string?> tlb = new("--tlb") { Description = "Each TLB (instruction and data): ENTRIES[:WAYS], default 64:4" };
    private readonly Option<int?> walkCache = TypedOptions.Integer("--pwc", "Page-walk-cache entries per level (guest dimension under nested paging); 0 = none; default 16",
        0, MaximumWalkCacheEntries, $"a number of entries from 0 to {MaximumWalkCacheEntries}", "16");
    private readonly Option<string?> nestedTlb = new("--nested-tlb") { Description = "Nested TLB (guest-physical to host-physical): ENTRIES[:WAYS] or 0 for none; default 32:4" };
    private readonly Option<int?> nestedWalkCache = TypedOptions.Integer("--nested-pwc", "Nested page-walk-cache entries per level; 0 = none; default 16",
        0, MaximumWalkCacheEntries, $"a number of entries from 0 to {MaximumWalkCacheEntries}", "16");

    /// <summary>The largest page-walk cache per level, and the largest TLB, that the options accept: far beyond
    /// any real design, small enough that the model's tables stay small.</summary>
    private const int MaximumWalkCacheEntries = 4096, MaximumTlbEntries = 65536;

    public IEnumerable<Option> All => [tlb, walkCache, nestedTlb, nestedWalkCache];

    public MmuConfiguration Parse(ParseResult parse)
    {
        var d = MmuConfiguration.Default;
        var tlbShape = Tlb(parse.GetValue(tlb), "--tlb") ?? d.DataTlb;
        int pwc = parse.GetValue(walkCache) ?? d.WalkCacheEntriesPerLevel;
        string? nested = parse.GetValue(nestedTlb);
        var nestedShape = nested is "0" ? null : Tlb(nested, "--nested-tlb") ?? d.NestedPaging.NestedTlb;
        int nestedPwc = parse.GetValue(nestedWalkCache) ?? d.NestedPaging.NestedWalkCacheEntriesPerLevel;
        return new MmuConfiguration(tlbShape, tlbShape, pwc) { NestedPaging = new NestedPagingConfiguration(nestedShape, nestedPwc) };
    }

    private static TlbConfiguration? Tlb(string? text, string option)
    {
        if (text is null)
        {
            return null;
        }
        var parts = text.Split(':');
        if (parts.Length > 2 || !ulong.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out ulong count))
        {
            throw new BadInputException($"{option} {text} is not ENTRIES[:WAYS]", $"Give e.g. {option} 64:4 (64 entries, 4-way)");
        }
        if (count is < 1 or > MaximumTlbEntries)
        {
            // The shape is right; the number is not: say the limit rather than repeat the syntax.
            throw new BadInputException($"{option} {text}: a TLB has 1 to {MaximumTlbEntries} entries, not {count}",
                $"Give at most {MaximumTlbEntries} entries, e.g. {option} 64:4 (64 entries, 4-way)");
        }
        int entries = (int)count;
        int ways = entries;
        if (parts.Length == 2 && (!int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out ways) || ways < 1 || entries % ways != 0))
        {
            throw new BadInputException($"{option} {text}: the ways must divide the entries", $"Give e.g. {option} 64:4");
        }
        return new TlbConfiguration(entries, ways);
    }
}
