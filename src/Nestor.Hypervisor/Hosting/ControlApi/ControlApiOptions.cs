namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary>The bounds a client cannot push the control API's server past: a hostile or broken client on the socket
/// may not grow the host's memory or threads without bound, nor hold a connection forever.</summary>
public sealed record ControlApiOptions
{
    /// <summary>The request line and headers together, in bytes (a larger head is answered 431 and the connection
    /// closed). 8 KiB, the common limit of HTTP servers (RFC 9112 §3 recommends at least 8,000 octets for the
    /// request line).</summary>
    public int MaxHeadBytes { get; init; } = 8 * 1024;

    /// <summary>How many header fields a request may have.</summary>
    public int MaxHeaderCount { get; init; } = 64;

    /// <summary>The largest body, in bytes (a larger Content-Length is answered 413 before any of it is read).
    /// 51,200 bytes: Firecracker's default <c>--http-api-max-payload-size</c>.</summary>
    public int MaxBodyBytes { get; init; } = 51_200;

    /// <summary>How many connections are served at once; one more is answered 503 and closed.</summary>
    public int MaxConnections { get; init; } = 16;

    /// <summary>How long a request may take from its first byte to its last (a slow client is answered 408 and
    /// closed), and how long a response may wait for the client to take it.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a kept-alive connection may wait for its next request before it is closed.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
}
