using System.Globalization;
using System.Text;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting.ControlApi;

namespace Nestor.Cli.Commands.Host;

/// <summary>What <c>nestor host ctl</c> and <c>nestor host top</c> share: errors as the other commands print them,
/// plain tables, and counters in their units.</summary>
internal static class HostApiCli
{
    /// <summary>Runs <paramref name="body"/>, printing a Nestor error (a missing socket, a refusal by the host) as
    /// the other commands do, with its exit status.</summary>
    public static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (NestorException e)
        {
            return CommandErrors.Report(e);
        }
    }

    /// <summary>A table with a header row, columns padded to their widest cell; the last column is not padded.</summary>
    public static string Table(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        var all = new List<IReadOnlyList<string>> { header };
        all.AddRange(rows);
        var widths = new int[header.Count];
        foreach (var row in all)
        {
            for (int i = 0; i < row.Count; i++)
            {
                widths[i] = Math.Max(widths[i], row[i].Length);
            }
        }
        var text = new StringBuilder();
        foreach (var row in all)
        {
            for (int i = 0; i < row.Count; i++)
            {
                text.Append(i == row.Count - 1 ? row[i] : row[i].PadRight(widths[i] + 2));
            }
            text.Append('\n');
        }
        return text.ToString();
    }

    /// <summary>A percentage as the API carries it, or <c>-</c> for none.</summary>
    public static string Percent(double? value) => value is { } v ? v.ToString("0.##", CultureInfo.InvariantCulture) + "%" : "-";

    /// <summary>A counter's value in its unit, scaled for reading: bytes in KiB/MiB/GiB, microseconds and nanoseconds
    /// in ms or s; other units as they are.</summary>
    public static string Quantity(ulong value, string unit) => unit switch
    {
        "bytes" => Bytes(value),
        "us" => Duration(value / 1e6),
        "ns" => Duration(value / 1e9),
        "ms" => Duration(value / 1e3),
        "" => value.ToString(CultureInfo.InvariantCulture),
        _ => $"{value.ToString(CultureInfo.InvariantCulture)} {unit}",
    };

    /// <summary>Bytes in the largest binary unit that keeps the number at least 1.</summary>
    public static string Bytes(double bytes) => bytes switch
    {
        >= 1L << 30 => (bytes / (1L << 30)).ToString("0.0", CultureInfo.InvariantCulture) + " GiB",
        >= 1L << 20 => (bytes / (1L << 20)).ToString("0.0", CultureInfo.InvariantCulture) + " MiB",
        >= 1L << 10 => (bytes / (1L << 10)).ToString("0.0", CultureInfo.InvariantCulture) + " KiB",
        _ => bytes.ToString("0", CultureInfo.InvariantCulture) + " B",
    };

    /// <summary>Seconds as ms below one second, s above.</summary>
    public static string Duration(double seconds) => seconds < 1
        ? (seconds * 1e3).ToString("0.0", CultureInfo.InvariantCulture) + " ms"
        : seconds.ToString("0.00", CultureInfo.InvariantCulture) + " s";

    /// <summary>The counter named <paramref name="name"/>, or null.</summary>
    public static CounterDocument? Find(IReadOnlyList<CounterDocument> counters, string name)
    {
        foreach (var counter in counters)
        {
            if (counter.Name == name)
            {
                return counter;
            }
        }
        return null;
    }
}
