using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary>One request as the server read it: the method, the target (origin form, RFC 9112 §3.2.1), whether the
/// connection stays open after the answer, and the body (empty when there was none).</summary>
internal sealed record HttpRequest(string Method, string Target, bool KeepAlive, byte[] Body);

/// <summary>A request that cannot be served as sent: the status to answer with and why. The connection is closed
/// after the answer, since the server can no longer tell where the next request would begin.</summary>
internal sealed class HttpProtocolException(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}

/// <summary>One connection of the control API's server: a small, strict HTTP/1.1 reader and writer (RFC 9112) over a
/// connected stream socket. Strict because whatever it accepts it must then reason about: CRLF line ends only, no
/// whitespace before a header's colon nor folded lines (§5.1, §5.2), exactly one Host in HTTP/1.1 (§3.2), bodies only
/// by Content-Length (§6.3; Transfer-Encoding is refused), and everything bounded by <see cref="ControlApiOptions"/>:
/// the head's size and field count, the body's size, the time a request may take.</summary>
internal sealed class HttpConnection(Socket socket, ControlApiOptions options)
{
    private static readonly byte[] HeadEnd = "\r\n\r\n"u8.ToArray();

    // The head of the request being read; after a request, the bytes of the next one already received (pipelining)
    // are moved to its start.
    private readonly byte[] head = new byte[options.MaxHeadBytes];
    private int filled;

    /// <summary>Reads the next request; null when the client closed the connection or stayed idle past
    /// <see cref="ControlApiOptions.IdleTimeout"/> between requests (nothing to answer then).</summary>
    /// <exception cref="HttpProtocolException">The request is malformed, too large or too slow.</exception>
    public HttpRequest? ReadRequest()
    {
        if (filled == 0)
        {
            int first = Receive(head, options.IdleTimeout);
            if (first <= 0)
            {
                return null;
            }
            filled = first;
        }
        long deadline = Stopwatch.GetTimestamp() + (long)(options.RequestTimeout.TotalSeconds * Stopwatch.Frequency);
        int end;
        while ((end = head.AsSpan(0, filled).IndexOf(HeadEnd)) < 0)
        {
            if (filled == head.Length)
            {
                throw new HttpProtocolException(431, $"the request line and headers are longer than {options.MaxHeadBytes} bytes");
            }
            int n = Receive(head.AsSpan(filled), Remaining(deadline));
            if (n == 0)
            {
                return null; // the client went away in the middle of a request: nobody to answer
            }
            if (n < 0)
            {
                throw new HttpProtocolException(408, $"the request did not arrive within {options.RequestTimeout.TotalSeconds:0.###} s");
            }
            filled += n;
        }

        var (method, target, version, fields) = ParseHead(head.AsSpan(0, end + 2));
        int bodyStart = end + HeadEnd.Length;
        bool keepAlive = version == "HTTP/1.1";
        int? declaredLength = null;
        bool expectContinue = false;
        string? host = null;
        foreach (var (name, value) in fields)
        {
            switch (name.ToLowerInvariant())
            {
                case "host":
                    if (host is not null)
                    {
                        throw new HttpProtocolException(400, "the request has more than one Host header");
                    }
                    host = value;
                    break;
                case "content-length":
                    int length = ParseContentLength(value);
                    if (declaredLength is { } earlier && length != earlier)
                    {
                        throw new HttpProtocolException(400, "the request has Content-Length headers that disagree");
                    }
                    declaredLength = length;
                    break;
                case "transfer-encoding":
                    throw new HttpProtocolException(400, "Transfer-Encoding is not supported: send the body with a Content-Length");
                case "connection":
                    foreach (var option in value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
                    {
                        if (option.Equals("close", StringComparison.OrdinalIgnoreCase))
                        {
                            keepAlive = false;
                        }
                        else if (option.Equals("keep-alive", StringComparison.OrdinalIgnoreCase))
                        {
                            keepAlive = true;
                        }
                    }
                    break;
                case "expect":
                    expectContinue = value.Equals("100-continue", StringComparison.OrdinalIgnoreCase)
                        ? true
                        : throw new HttpProtocolException(417, $"the expectation '{value}' is not supported");
                    break;
            }
        }
        if (version == "HTTP/1.1" && host is null)
        {
            throw new HttpProtocolException(400, "an HTTP/1.1 request must have a Host header (RFC 9112 §3.2)");
        }
        int contentLength = declaredLength ?? 0;
        if (contentLength > options.MaxBodyBytes)
        {
            throw new HttpProtocolException(413, $"the body of {contentLength} bytes is larger than the {options.MaxBodyBytes} bytes allowed");
        }

        byte[] body = contentLength == 0 ? [] : new byte[contentLength];
        int buffered = Math.Min(contentLength, filled - bodyStart);
        head.AsSpan(bodyStart, buffered).CopyTo(body);
        int consumed = bodyStart + buffered;
        head.AsSpan(consumed, filled - consumed).CopyTo(head);
        filled -= consumed;
        if (expectContinue && buffered < contentLength)
        {
            Send("HTTP/1.1 100 Continue\r\n\r\n"u8);
        }
        for (int got = buffered; got < contentLength;)
        {
            int n = Receive(body.AsSpan(got), Remaining(deadline));
            if (n == 0)
            {
                return null;
            }
            if (n < 0)
            {
                throw new HttpProtocolException(408, $"the body did not arrive within {options.RequestTimeout.TotalSeconds:0.###} s");
            }
            got += n;
        }
        return new HttpRequest(method, target, keepAlive, body);
    }

    /// <summary>Writes one response: JSON when <paramref name="body"/> is given, with <c>Allow</c> for a 405
    /// (RFC 9110 §15.5.6) and <c>Connection: close</c> when the connection ends after it.</summary>
    public void WriteResponse(int status, byte[]? body, bool close, string? allow = null)
    {
        var text = new StringBuilder();
        text.Append("HTTP/1.1 ").Append(status).Append(' ').Append(ReasonPhrase(status)).Append("\r\n");
        text.Append("Server: nestor\r\n");
        if (body is not null)
        {
            text.Append("Content-Type: application/json\r\n");
        }
        if (status != 204)
        {
            text.Append("Content-Length: ").Append(body?.Length ?? 0).Append("\r\n");
        }
        if (allow is not null)
        {
            text.Append("Allow: ").Append(allow).Append("\r\n");
        }
        if (close)
        {
            text.Append("Connection: close\r\n");
        }
        text.Append("\r\n");
        byte[] headBytes = Encoding.ASCII.GetBytes(text.ToString());
        byte[] message = new byte[headBytes.Length + (body?.Length ?? 0)];
        headBytes.CopyTo(message, 0);
        body?.CopyTo(message, headBytes.Length);
        Send(message);
    }

    /// <summary>Closes after an error answer without losing it: half-close, then read and drop what the client still
    /// sends, up to a bound of bytes and time, so that the client (still writing a body the server refused) reads the
    /// answer instead of a reset (RFC 9112 §9.6, "lingering close").</summary>
    public void LingerAndClose()
    {
        try
        {
            socket.Shutdown(SocketShutdown.Send);
            long deadline = Stopwatch.GetTimestamp() + Stopwatch.Frequency; // one second at most
            int budget = 2 * options.MaxBodyBytes + options.MaxHeadBytes;
            while (budget > 0)
            {
                int n = Receive(head, Remaining(deadline));
                if (n <= 0)
                {
                    break;
                }
                budget -= n;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>The standard reason phrases (RFC 9110 §15) of the statuses the server sends.</summary>
    public static string ReasonPhrase(int status) => status switch
    {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    };

    private void Send(ReadOnlySpan<byte> bytes)
    {
        // A client that never reads its answers must not hold the thread forever: the send times out.
        socket.SendTimeout = (int)Math.Max(1, options.RequestTimeout.TotalMilliseconds);
        while (!bytes.IsEmpty)
        {
            int n = socket.Send(bytes);
            bytes = bytes[n..];
        }
    }

    /// <summary>Bytes received, 0 at the end of the stream (or a reset), -1 when <paramref name="timeout"/> passed
    /// first.</summary>
    private int Receive(Span<byte> into, TimeSpan timeout)
    {
        if (timeout <= TimeSpan.Zero)
        {
            return -1;
        }
        socket.ReceiveTimeout = (int)Math.Clamp(timeout.TotalMilliseconds, 1, int.MaxValue);
        try
        {
            return socket.Receive(into);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
        {
            return -1;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.Shutdown)
        {
            return 0;
        }
    }

    private static TimeSpan Remaining(long deadline) =>
        TimeSpan.FromSeconds((double)(deadline - Stopwatch.GetTimestamp()) / Stopwatch.Frequency);

    /// <summary>The request line and header fields of a head that ends with its last field's CRLF.</summary>
    private (string Method, string Target, string Version, List<(string Name, string Value)> Fields) ParseHead(ReadOnlySpan<byte> bytes)
    {
        // A server should ignore empty lines before the request line (RFC 9112 §2.2).
        while (bytes.StartsWith("\r\n"u8))
        {
            bytes = bytes[2..];
        }
        var lines = new List<string>();
        while (!bytes.IsEmpty)
        {
            int lf = bytes.IndexOf((byte)'\n');
            if (lf <= 0 || bytes[lf - 1] != '\r')
            {
                throw new HttpProtocolException(400, "a line of the request head does not end with CRLF");
            }
            var line = bytes[..(lf - 1)];
            foreach (byte b in line)
            {
                // Control characters other than HTAB are not allowed in the head (RFC 9110 §5.5); bytes above 0x7F
                // (obs-text) are refused too: nothing Nestor serves needs them.
                if ((b < 0x20 && b != '\t') || b >= 0x7F)
                {
                    throw new HttpProtocolException(400, $"the request head has a byte 0x{b:x2} that is not allowed there");
                }
            }
            lines.Add(Encoding.ASCII.GetString(line));
            bytes = bytes[(lf + 1)..];
        }
        if (lines.Count == 0)
        {
            throw new HttpProtocolException(400, "the request has no request line");
        }
        if (lines.Count - 1 > options.MaxHeaderCount)
        {
            throw new HttpProtocolException(431, $"the request has {lines.Count - 1} header fields, more than the {options.MaxHeaderCount} allowed");
        }
        var parts = lines[0].Split(' ');
        if (parts.Length != 3 || parts[0].Length == 0 || !parts[0].All(IsTokenChar) || !parts[1].StartsWith('/'))
        {
            throw new HttpProtocolException(400, $"'{Shorten(lines[0])}' is not a request line (METHOD /path HTTP/1.1)");
        }
        string version = parts[2];
        if (version is not ("HTTP/1.1" or "HTTP/1.0"))
        {
            throw version.StartsWith("HTTP/", StringComparison.Ordinal) && version.Length == 8 && char.IsAsciiDigit(version[5]) && version[6] == '.' && char.IsAsciiDigit(version[7])
                ? new HttpProtocolException(505, $"{version} is not supported: use HTTP/1.1")
                : new HttpProtocolException(400, $"'{Shorten(version)}' is not an HTTP version");
        }
        var fields = new List<(string, string)>(lines.Count - 1);
        for (int i = 1; i < lines.Count; i++)
        {
            string line = lines[i];
            int colon = line.IndexOf(':');
            if (line.Length > 0 && line[0] is ' ' or '\t')
            {
                throw new HttpProtocolException(400, "the request has a folded header line (obsolete line folding is refused, RFC 9112 §5.2)");
            }
            if (colon <= 0 || line.AsSpan(0, colon).ContainsAnyExcept(TokenChars))
            {
                throw new HttpProtocolException(400, $"'{Shorten(line)}' is not a header field (Name: value, no space before the colon)");
            }
            fields.Add((line[..colon], line[(colon + 1)..].Trim(' ', '\t')));
        }
        return (parts[0], parts[1], version, fields);
    }

    private static int ParseContentLength(string value)
    {
        if (value.Length is 0 or > 9 || !value.All(char.IsAsciiDigit))
        {
            // Nine digits at most: anything longer is far beyond the body limit, and this keeps the number an int.
            throw value.Length > 9 && value.All(char.IsAsciiDigit)
                ? new HttpProtocolException(413, $"the body of {Shorten(value)} bytes is larger than allowed")
                : new HttpProtocolException(400, $"Content-Length '{Shorten(value)}' is not a number of bytes");
        }
        return int.Parse(value, System.Globalization.CultureInfo.InvariantCulture);
    }

    // tchar of RFC 9110 §5.6.2.
    private static readonly System.Buffers.SearchValues<char> TokenChars =
        System.Buffers.SearchValues.Create("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");

    private static bool IsTokenChar(char c) => TokenChars.Contains(c);

    private static string Shorten(string text) => text.Length <= 80 ? text : text[..80] + "...";
}
