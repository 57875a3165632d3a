using System.Text;

namespace Nestor.Cli.Output;

/// <summary>A VM's console output written whole lines at a time, each with a prefix: the service VM's lines on the
/// terminal the user VM shares (<c>nestor run --service-vm</c>), which stay apart from the user VM's because the host
/// runs one VM at a time and each line is written only once it is complete.</summary>
internal sealed class LinePrefixStream(Stream inner, string prefix) : Stream
{
    private readonly byte[] prefixBytes = Encoding.UTF8.GetBytes(prefix);
    private readonly MemoryStream line = new();

    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        while (buffer.Length > 0)
        {
            int newline = buffer.IndexOf((byte)'\n');
            if (newline < 0)
            {
                line.Write(buffer);
                return;
            }
            line.Write(buffer[..(newline + 1)]);
            EmitLine();
            buffer = buffer[(newline + 1)..];
        }
    }

    private void EmitLine()
    {
        inner.Write(prefixBytes);
        inner.Write(line.GetBuffer().AsSpan(0, (int)line.Length));
        inner.Flush();
        line.SetLength(0);
    }

    /// <summary>Flushes the lines written so far; a partial line waits for its newline (the UART flushes after each
    /// partial line's delay, which here must not split the line).</summary>
    public override void Flush() => inner.Flush();

    /// <summary>Writes out a last line that has no newline (the VM has ended).</summary>
    public void Finish()
    {
        if (line.Length > 0)
        {
            line.WriteByte((byte)'\n');
            EmitLine();
        }
        inner.Flush();
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
