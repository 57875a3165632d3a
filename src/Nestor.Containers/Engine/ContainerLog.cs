using System.Text;
using System.Text.Json;

namespace Nestor.Containers.Engine;

/// <summary>One line of a container's output as Docker's json-file log driver stores it.</summary>
public sealed record LogEntry(string Stream, string Text, DateTimeOffset Time);

/// <summary>A container's log in Docker's json-file format: one JSON object per line,
/// <c>{"log":"text\n","stream":"stdout","time":"2026-12-01T12:00:00.123456789Z"}</c>. The writer appends and flushes
/// each line as it comes, so a monitor killed with SIGKILL loses nothing it had received; a line longer than the
/// buffer, or unfinished when the stream ends, is written as it is (without its newline), as Docker splits long lines.</summary>
public sealed class ContainerLogWriter : IDisposable
{
    private readonly FileStream file;
    private readonly Lock gate = new();
    private readonly Dictionary<string, List<byte>> pending = [];

    public ContainerLogWriter(string path)
    {
        file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite | FileShare.Delete);
    }

    /// <summary>Adds output of <paramref name="stream"/> (<c>stdout</c> or <c>stderr</c>); complete lines are written
    /// at once, a partial line waits for its end (or <see cref="Flush"/>).</summary>
    public void Append(string stream, ReadOnlySpan<byte> data)
    {
        lock (gate)
        {
            if (!pending.TryGetValue(stream, out var buffer))
            {
                pending[stream] = buffer = [];
            }
            foreach (byte value in data)
            {
                buffer.Add(value);
                if (value == (byte)'\n' || buffer.Count >= 16 * 1024)
                {
                    WriteEntry(stream, buffer);
                }
            }
            file.Flush();
        }
    }

    /// <summary>Writes the partial lines (the stream ended).</summary>
    public void Flush()
    {
        lock (gate)
        {
            foreach (var (stream, buffer) in pending)
            {
                if (buffer.Count > 0)
                {
                    WriteEntry(stream, buffer);
                }
            }
            file.Flush();
        }
    }

    private void WriteEntry(string stream, List<byte> buffer)
    {
        var output = new MemoryStream();
        using (var json = new Utf8JsonWriter(output))
        {
            json.WriteStartObject();
            json.WriteString("log", Encoding.UTF8.GetString([.. buffer]));
            json.WriteString("stream", stream);
            json.WriteString("time", DateTimeOffset.UtcNow.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteEndObject();
        }
        output.WriteByte((byte)'\n');
        file.Write(output.GetBuffer(), 0, (int)output.Length);
        buffer.Clear();
    }

    public void Dispose()
    {
        Flush();
        file.Dispose();
    }
}

/// <summary>Reads a json-file log.</summary>
public static class ContainerLogReader
{
    /// <summary>The entries of the log at <paramref name="path"/>, skipping a torn last line.</summary>
    public static List<LogEntry> Read(string path)
    {
        var entries = new List<LogEntry>();
        if (!File.Exists(path))
        {
            return entries;
        }
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        while (reader.ReadLine() is { } line)
        {
            if (Parse(line) is { } entry)
            {
                entries.Add(entry);
            }
        }
        return entries;
    }

    public static LogEntry? Parse(string line)
    {
        try
        {
            using var document = JsonDocument.Parse(line);
            var root = document.RootElement;
            return new LogEntry(root.GetProperty("stream").GetString() ?? "stdout", root.GetProperty("log").GetString() ?? "",
                DateTimeOffset.Parse(root.GetProperty("time").GetString() ?? "", System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (Exception exception) when (exception is JsonException or KeyNotFoundException or FormatException or InvalidOperationException)
        {
            return null;
        }
    }
}
