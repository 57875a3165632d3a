using System.Globalization;

namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>Go's <c>time.ParseDuration</c> syntax, which Docker's HEALTHCHECK options use: a sequence of decimal
/// numbers, each with a unit (<c>ns</c>, <c>us</c>, <c>µs</c>, <c>ms</c>, <c>s</c>, <c>m</c>, <c>h</c>), such as
/// <c>1m30s</c> or <c>1.5h</c>; a bare <c>0</c> is zero.</summary>
public static class GoDuration
{
    /// <summary>The duration, or null when <paramref name="text"/> is not one (negative durations are refused).</summary>
    public static TimeSpan? TryParse(string text)
    {
        if (text == "0")
        {
            return TimeSpan.Zero;
        }
        if (text.Length == 0)
        {
            return null;
        }
        decimal ticks = 0;
        int position = 0;
        while (position < text.Length)
        {
            int start = position;
            while (position < text.Length && (char.IsAsciiDigit(text[position]) || text[position] == '.'))
            {
                position++;
            }
            if (!decimal.TryParse(text.AsSpan(start, position - start), NumberStyles.AllowDecimalPoint,
                    CultureInfo.InvariantCulture, out decimal number))
            {
                return null;
            }
            int unitStart = position;
            while (position < text.Length && !char.IsAsciiDigit(text[position]) && text[position] != '.')
            {
                position++;
            }
            decimal? unit = text[unitStart..position] switch
            {
                "ns" => 0.01m,
                "us" or "µs" or "μs" => 10m,
                "ms" => TimeSpan.TicksPerMillisecond,
                "s" => TimeSpan.TicksPerSecond,
                "m" => TimeSpan.TicksPerMinute,
                "h" => TimeSpan.TicksPerHour,
                _ => null,
            };
            if (unit is null)
            {
                return null;
            }
            ticks += number * unit.Value;
            if (ticks > TimeSpan.MaxValue.Ticks)
            {
                return null;
            }
        }
        return TimeSpan.FromTicks((long)ticks);
    }
}
