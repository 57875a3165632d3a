using System.Globalization;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Configuration;

/// <summary>Parses and prints byte sizes written the way users write them: <c>64M</c>, <c>1G</c>, <c>512K</c>,
/// <c>65536</c> (binary multiples: K = 1024).</summary>
public static class Size
{
    /// <summary>Parses <paramref name="text"/>; <paramref name="what"/> names the value in error messages.</summary>
    /// <exception cref="BadInputException">The text is not a size.</exception>
    public static ulong Parse(string text, string what)
    {
        string t = text.Trim();
        if (t.EndsWith("iB", StringComparison.OrdinalIgnoreCase))
        {
            t = t[..^2];
        }
        else if (t.EndsWith('B') || t.EndsWith('b'))
        {
            t = t[..^1];
        }
        ulong multiplier = 1;
        if (t.Length > 0)
        {
            switch (char.ToUpperInvariant(t[^1]))
            {
                case 'K': multiplier = 1UL << 10; t = t[..^1]; break;
                case 'M': multiplier = 1UL << 20; t = t[..^1]; break;
                case 'G': multiplier = 1UL << 30; t = t[..^1]; break;
                case 'T': multiplier = 1UL << 40; t = t[..^1]; break;
            }
        }
        if (!ulong.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out ulong value) ||
            value > ulong.MaxValue / multiplier)
        {
            throw new BadInputException($"{what} '{text}' is not a size",
                "Write a number of bytes with an optional K, M or G suffix, e.g. 64M");
        }
        return value * multiplier;
    }

    /// <summary>Formats a byte count compactly: 64 MiB, 1.5 GiB, 4 KiB, 100 B.</summary>
    public static string Format(ulong bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1)
        {
            v /= 1024;
            u++;
        }
        return u == 0 ? $"{bytes} B" : v.ToString(v % 1 == 0 ? "0" : "0.##", CultureInfo.InvariantCulture) + " " + units[u];
    }
}

/// <summary>Parses addresses written as hex (<c>0x100000</c>) or decimal.</summary>
public static class AddressText
{
    /// <exception cref="BadInputException">The text is not an address.</exception>
    public static ulong Parse(string text, string what)
    {
        string t = text.Trim().Replace("_", "");
        bool ok = t.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.TryParse(t.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong v)
            : ulong.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out v);
        if (!ok)
        {
            throw new BadInputException($"{what} '{text}' is not an address", "Write it in hex (0x100000) or decimal");
        }
        return v;
    }
}
