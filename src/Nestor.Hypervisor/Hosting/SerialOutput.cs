using System.Text;

namespace Nestor.Hypervisor.Hosting;

/// <summary>The serial output of one hosted VM: whole lines to the host's console with a <c>[name] </c> prefix (one
/// lock for all VMs, so that lines never interleave mid-line) or to its own file, a bounded copy kept for the report,
/// and a byte limit past which the VM is stopped as a flood: a hostile guest cannot grow the host's output or memory
/// without bound, and the other VMs go on.</summary>
public sealed class SerialOutput : Stream
{
    /// <summary>How much of each VM's output the host keeps for its report (RESULT lines); beyond it only the
    /// console or file gets it.</summary>
    public const int KeptBytes = 1 << 20;

    private readonly string prefix;
    private readonly TextWriter? console;
    private readonly Lock consoleGate;
    private readonly Stream? file;
    private readonly long limit;
    private readonly Action onFlood;
    private readonly MemoryStream kept = new();
    private readonly List<byte> line = [];
    private bool flooded;

    /// <param name="name">The VM's name, for the prefix.</param>
    /// <param name="console">The host's console, or null when <paramref name="file"/> gets the output.</param>
    /// <param name="consoleGate">The one lock of the host's console.</param>
    /// <param name="file">The VM's own serial file, or null.</param>
    /// <param name="limit">The most bytes it may write.</param>
    /// <param name="onFlood">Called once when it writes more.</param>
    public SerialOutput(string name, TextWriter? console, Lock consoleGate, Stream? file, long limit, Action onFlood)
    {
        prefix = $"[{name}] ";
        this.console = console;
        this.consoleGate = consoleGate;
        this.file = file;
        this.limit = limit;
        this.onFlood = onFlood;
    }

    /// <summary>Bytes the guest wrote (counted up to the limit).</summary>
    public long BytesWritten { get; private set; }

    /// <summary>The VM went over its limit.</summary>
    public bool Flooded => flooded;

    /// <summary>What the VM wrote, up to <see cref="KeptBytes"/>, as text.</summary>
    public string Text
    {
        get
        {
            lock (kept)
            {
                return Encoding.UTF8.GetString(kept.GetBuffer(), 0, (int)kept.Length);
            }
        }
    }

    /// <inheritdoc/>
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <inheritdoc/>
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (flooded)
        {
            return;
        }
        if (BytesWritten + buffer.Length > limit)
        {
            buffer = buffer[..(int)Math.Max(0, limit - BytesWritten)];
            flooded = true;
        }
        BytesWritten += buffer.Length;
        lock (kept)
        {
            int room = (int)Math.Max(0, KeptBytes - kept.Length);
            kept.Write(buffer[..Math.Min(room, buffer.Length)]);
        }
        if (file is not null)
        {
            file.Write(buffer);
        }
        else if (console is not null)
        {
            foreach (byte b in buffer)
            {
                if (b == '\n')
                {
                    EmitLine();
                }
                else if (line.Count < 4096)
                {
                    line.Add(b);
                }
            }
        }
        if (flooded)
        {
            onFlood();
        }
    }

    private void EmitLine()
    {
        string text = Encoding.UTF8.GetString([.. line]).TrimEnd('\r');
        line.Clear();
        lock (consoleGate)
        {
            console!.WriteLine(prefix + text);
        }
    }

    /// <inheritdoc/>
    public override void Flush()
    {
        file?.Flush();
        if (console is not null)
        {
            lock (consoleGate)
            {
                console.Flush();
            }
        }
    }

    /// <summary>Writes out a last partial line.</summary>
    public void Complete()
    {
        if (line.Count > 0 && console is not null)
        {
            EmitLine();
        }
        Flush();
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            file?.Dispose();
        }
        base.Dispose(disposing);
    }

    /// <inheritdoc/>
    public override bool CanRead => false;

    /// <inheritdoc/>
    public override bool CanSeek => false;

    /// <inheritdoc/>
    public override bool CanWrite => true;

    /// <inheritdoc/>
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc/>
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <inheritdoc/>
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc/>
    public override void SetLength(long value) => throw new NotSupportedException();
}
