using System.Buffers.Binary;
using System.Net.Sockets;

namespace Nestor.Containers.Engine;

/// <summary>What flows over a container's attach socket (<c>STATE/containers/ID/attach.sock</c>, a Unix stream
/// socket its monitor serves). The client first sends one byte saying what its input means, then its input as raw
/// bytes (shutting down its sending side at the end of its input); the monitor sends frames: a type byte, a 4-byte
/// big-endian length and the payload (Docker's attach stream multiplexes stdout and stderr the same way).</summary>
public static class AttachProtocol
{
    /// <summary>Client mode: the end of the client's input closes the container's (<c>run -i</c>, StdinOnce).</summary>
    public const byte InputOnce = (byte)'o';
    /// <summary>Client mode: the client's input goes to the container; its end leaves the container's open (<c>attach</c>).</summary>
    public const byte InputShared = (byte)'a';
    /// <summary>Client mode: output only.</summary>
    public const byte OutputOnly = (byte)'w';

    public const byte Stdout = 1;
    public const byte Stderr = 2;
    /// <summary>The container ended; the payload is its exit status in decimal ASCII. The last frame.</summary>
    public const byte Exit = 3;

    public static byte[] Frame(byte type, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[5 + payload.Length];
        frame[0] = type;
        BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(1), payload.Length);
        payload.CopyTo(frame.AsSpan(5));
        return frame;
    }

    /// <summary>Reads one frame; null at the end of the stream.</summary>
    public static (byte Type, byte[] Payload)? ReadFrame(Stream stream)
    {
        var header = new byte[5];
        if (!ReadExactly(stream, header))
        {
            return null;
        }
        int length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
        var payload = new byte[length];
        return ReadExactly(stream, payload) ? (header[0], payload) : null;
    }

    private static bool ReadExactly(Stream stream, byte[] buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int count;
            try
            {
                count = stream.Read(buffer, done, buffer.Length - done);
            }
            catch (IOException)
            {
                return false;
            }
            if (count == 0)
            {
                return false;
            }
            done += count;
        }
        return true;
    }

    /// <summary>Connects to <paramref name="socketPath"/> in <paramref name="mode"/>; null if nothing listens there.</summary>
    public static Socket? Connect(string socketPath, byte mode)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(socketPath));
            socket.Send([mode]);
            return socket;
        }
        catch (SocketException)
        {
            socket.Dispose();
            return null;
        }
    }
}
