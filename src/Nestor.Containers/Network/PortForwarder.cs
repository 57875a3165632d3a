using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace Nestor.Containers.Network;

/// <summary>A user-space forwarder for one published port, Docker's docker-proxy design: it listens on the host's
/// address and port and relays each TCP connection (or each UDP peer's datagrams) to the container's address. It is
/// what serves connections made on the host itself to 127.0.0.1:PORT, which the DNAT rules never see; holding the
/// port also makes a second container that asks for it fail with "already in use".</summary>
internal sealed class PortForwarder : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Socket _listener;
    private readonly IPEndPoint _target;
    private readonly ConcurrentDictionary<Socket, bool> _open = new();
    private readonly ConcurrentDictionary<EndPoint, Socket> _udpPeers = new();
    private readonly Task _loop;

    private PortForwarder(Socket listener, IPEndPoint target, bool udp)
    {
        _listener = listener;
        _target = target;
        _loop = udp ? Task.Run(RelayDatagramsAsync) : Task.Run(AcceptAsync);
    }

    /// <summary>Binds <paramref name="listen"/> and starts relaying to <paramref name="target"/>; a
    /// <see cref="ContainerNetworkException"/> if the port is taken.</summary>
    public static PortForwarder Start(IPEndPoint listen, IPEndPoint target, string protocol)
    {
        bool udp = protocol == "udp";
        var listener = Bind(listen, udp);
        if (!udp)
        {
            listener.Listen(128);
        }
        return new PortForwarder(listener, target, udp);
    }

    /// <summary>Fails with "port N is already in use on ADDRESS" when <paramref name="listen"/> cannot be bound now.</summary>
    public static void CheckFree(IPEndPoint listen, string protocol) => Bind(listen, protocol == "udp").Dispose();

    private static Socket Bind(IPEndPoint listen, bool udp)
    {
        var socket = udp ? new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                         : new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(listen);
            return socket;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            socket.Dispose();
            throw new ContainerNetworkException($"port {listen.Port} is already in use on {listen.Address}",
                $"Publish another host port (-p OTHER:{listen.Port}), or stop what listens on it (ss -ltnup 'sport = :{listen.Port}')", e);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ContainerNetworkException($"cannot listen on {listen}: {e.Message}",
                "A host address given with -p HOSTIP:… must be one of this host's addresses", e);
        }
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            _ = RelayConnectionAsync(client);
        }
    }

    private async Task RelayConnectionAsync(Socket client)
    {
        var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _open[client] = true;
        _open[server] = true;
        try
        {
            await server.ConnectAsync(_target, _stop.Token);
            // Each direction is copied until its end of file, which is passed on as a half-close (shutdown of the
            // sending side), so that a request-then-response protocol sees the same stream ends as without us.
            await Task.WhenAll(PumpAsync(client, server), PumpAsync(server, client));
        }
        catch (Exception)
        {
            // A refused or reset connection ends the relay; the other side sees its socket close.
        }
        finally
        {
            _open.TryRemove(client, out _);
            _open.TryRemove(server, out _);
            client.Dispose();
            server.Dispose();
        }
    }

    private async Task PumpAsync(Socket from, Socket to)
    {
        var buffer = new byte[64 * 1024];
        while (true)
        {
            int count = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
            if (count == 0)
            {
                to.Shutdown(SocketShutdown.Send);
                return;
            }
            await to.SendAsync(buffer.AsMemory(0, count), SocketFlags.None, _stop.Token);
        }
    }

    private async Task RelayDatagramsAsync()
    {
        var buffer = new byte[64 * 1024];
        EndPoint any = new IPEndPoint(IPAddress.Any, 0);
        while (!_stop.IsCancellationRequested)
        {
            SocketReceiveFromResult received;
            try
            {
                received = await _listener.ReceiveFromAsync(buffer, SocketFlags.None, any, _stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }
            var peer = received.RemoteEndPoint;
            if (!_udpPeers.TryGetValue(peer, out var upstream))
            {
                // One socket connected to the container per peer, so that replies can be told apart and sent back.
                upstream = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                upstream.Connect(_target);
                _udpPeers[peer] = upstream;
                _ = RelayRepliesAsync(upstream, peer);
            }
            try
            {
                await upstream.SendAsync(buffer.AsMemory(0, received.ReceivedBytes), SocketFlags.None, _stop.Token);
            }
            catch (SocketException)
            {
                // The container is not listening (ICMP port unreachable): the datagram is lost, as UDP's are.
            }
        }
    }

    private async Task RelayRepliesAsync(Socket upstream, EndPoint peer)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                int count = await upstream.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                await _listener.SendToAsync(buffer.AsMemory(0, count), SocketFlags.None, peer, _stop.Token);
            }
        }
        catch (Exception)
        {
            _udpPeers.TryRemove(peer, out _);
            upstream.Dispose();
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        foreach (var socket in _open.Keys.Concat(_udpPeers.Values))
        {
            socket.Dispose();
        }
        try
        {
            _loop.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
            // Cancelled or failed: the listener is closed either way.
        }
        _stop.Dispose();
    }
}
