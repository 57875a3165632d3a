using System.Text;

namespace Nestor.Containers.Build;

/// <summary>Where a build reports its steps: podman's plain lines (<c>STEP 2/5: RUN …</c>, the command's output,
/// <c>--> CACHED</c> or <c>--> ID</c>), or the same with each step's time and colours on a terminal.</summary>
public interface IBuildProgress
{
    /// <summary>A step begins: <paramref name="number"/> of <paramref name="total"/>, the instruction as written.</summary>
    void Step(int number, int total, string instruction);

    /// <summary>The step's result came from the cache: <paramref name="imageId"/> is the state after it.</summary>
    void Cached(string imageId);

    /// <summary>The step ran and produced <paramref name="imageId"/> in <paramref name="elapsed"/>.</summary>
    void Produced(string imageId, TimeSpan elapsed);

    /// <summary>Output of a RUN step's command (standard output or error).</summary>
    void Output(ReadOnlySpan<byte> bytes, bool isError);

    /// <summary>A line of its own: COMMIT, a warning, the final id.</summary>
    void Message(string text);
}

/// <summary>Plain lines, as <c>podman build</c> prints them when its output is not a terminal: the command's output
/// goes to <paramref name="output"/> as it comes.</summary>
public sealed class PlainBuildProgress(TextWriter writer, Stream output) : IBuildProgress
{
    /// <summary>The short id podman prints (11 hex digits).</summary>
    public static string ShortId(string imageId) => Images.Digest.Hex(imageId)[..11];

    /// <inheritdoc/>
    public void Step(int number, int total, string instruction)
    {
        writer.WriteLine($"STEP {number}/{total}: {instruction}");
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Cached(string imageId)
    {
        writer.WriteLine("--> CACHED");
        writer.WriteLine("--> " + ShortId(imageId));
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Produced(string imageId, TimeSpan elapsed)
    {
        writer.WriteLine("--> " + ShortId(imageId));
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Output(ReadOnlySpan<byte> bytes, bool isError)
    {
        writer.Flush();
        output.Write(bytes);
        output.Flush();
    }

    /// <inheritdoc/>
    public void Message(string text)
    {
        writer.WriteLine(text);
        writer.Flush();
    }
}

/// <summary>On a terminal: each step in bold, its command's output indented and dim, its result with the time it took
/// (ECMA-48 SGR sequences: 1 bold, 2 faint, 32 green, 0 reset).</summary>
public sealed class TerminalBuildProgress(TextWriter writer) : IBuildProgress
{
    private bool atLineStart = true;

    /// <inheritdoc/>
    public void Step(int number, int total, string instruction)
    {
        EndLine();
        writer.WriteLine($"\u001b[1m[{number}/{total}] {instruction}\u001b[0m");
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Cached(string imageId)
    {
        EndLine();
        writer.WriteLine($"  \u001b[32mCACHED\u001b[0m {PlainBuildProgress.ShortId(imageId)}");
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Produced(string imageId, TimeSpan elapsed)
    {
        EndLine();
        writer.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"  \u001b[32mDONE\u001b[0m {PlainBuildProgress.ShortId(imageId)} {elapsed.TotalSeconds:F1}s"));
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Output(ReadOnlySpan<byte> bytes, bool isError)
    {
        var text = new StringBuilder();
        foreach (char c in Encoding.UTF8.GetString(bytes))
        {
            if (atLineStart)
            {
                text.Append("\u001b[2m  | ");
                atLineStart = false;
            }
            if (c == '\n')
            {
                text.Append("\u001b[0m\n");
                atLineStart = true;
            }
            else
            {
                text.Append(c);
            }
        }
        writer.Write(text.ToString());
        writer.Flush();
    }

    /// <inheritdoc/>
    public void Message(string text)
    {
        EndLine();
        writer.WriteLine(text);
        writer.Flush();
    }

    private void EndLine()
    {
        if (!atLineStart)
        {
            writer.Write("\u001b[0m\n");
            atLineStart = true;
        }
    }
}
