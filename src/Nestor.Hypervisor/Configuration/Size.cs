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

    /// <summary>Formats a byte count compactly but exactly: 64 MiB, 1.5 GiB, 4 KiB, 4095 bytes. A unit is used
    /// only when the count is a whole number of hundredths of it, so that no message ever rounds (4095 bytes is not
    /// "4 KiB").</summary>
    public static string Format(ulong bytes)
    {
        string[] units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        for (int u = units.Length; u >= 1; u--)
        {
            UInt128 unit = (UInt128)1 << (10 * u);
            UInt128 hundredths = (UInt128)bytes * 100;
            if (bytes >= unit && hundredths % unit == 0)
            {
                ulong value = (ulong)(hundredths / unit);
                string text = (value / 100).ToString(CultureInfo.InvariantCulture);
                ulong fraction = value % 100;
                if (fraction != 0)
                {
                    text += "." + (fraction % 10 == 0 ? (fraction / 10).ToString(CultureInfo.InvariantCulture) : fraction.ToString("00", CultureInfo.InvariantCulture));
                }
                return $"{text} {units[u - 1]}";
            }
        }
        return bytes == 1 ? "1 byte" : $"{bytes.ToString(CultureInfo.InvariantCulture)} bytes";
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
