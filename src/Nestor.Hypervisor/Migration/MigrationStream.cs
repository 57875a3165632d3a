using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Migration;

/// <summary>Why a migration stream was refused (<see cref="MigrationStreamException.Refusal"/>).</summary>
public enum MigrationRefusal
{
    /// <summary>Not a Nestor migration stream, or a section this Nestor does not know.</summary>
    Invalid,
    /// <summary>A stream format newer than this Nestor reads.</summary>
    NewerVersion,
    /// <summary>The source runs another engine than the destination.</summary>
    WrongEngine,
    /// <summary>The VM built from the stream's description does not have the configuration the source declared.</summary>
    WrongConfiguration,
    /// <summary>A section's CRC-64 does not match its bytes.</summary>
    Corrupted,
    /// <summary>The stream ended (the connection was cut, the peer was killed) before its end marker.</summary>
    Cut,
    /// <summary>The peer refused the migration or failed to restore it, and said why.</summary>
    Refused,
}

/// <summary>A migration stream that cannot be taken: which check failed, naming what was expected and found.</summary>
public sealed class MigrationStreamException(string message, MigrationRefusal refusal, string? advice = null)
    : NestorException(message, advice ?? "Migrate between two Nestors of the same version, of a VM the destination can build")
{
    /// <summary>Which kind of refusal this is.</summary>
    public MigrationRefusal Refusal { get; } = refusal;

    public override FailureClass Class => FailureClass.BadInput;
}

/// <summary>What a migration stream's header declares: the VM's engine, technique, memory and configuration (as a
/// snapshot's header does, <see cref="SnapshotFile"/>), and what the destination needs to build the same VM.</summary>
/// <param name="Version">The stream format's version.</param>
/// <param name="Engine">The source's engine (only sim migrates).</param>
/// <param name="Technique">The VMM's technique.</param>
/// <param name="Memory">Shadow or nested paging, null without a VMM.</param>
/// <param name="LargeNestedPages">2 MiB nested pages.</param>
/// <param name="MemoryBytes">Guest RAM.</param>
/// <param name="Fingerprint">SHA-256 of <see cref="Configuration"/>, hex.</param>
/// <param name="Configuration">The source VM's <see cref="SnapshotFile.ConfigurationText"/>.</param>
/// <param name="Description">The hosted VM's settings, one <c>key=value</c> a line (<see cref="MigrationVmDescription"/>).</param>
/// <param name="Kernel">The kernel image the VM booted, bytes included (the destination may not have its file).</param>
public sealed record MigrationHeader(ushort Version, EngineKind Engine, Technique Technique, MemoryVirtualization? Memory,
    bool LargeNestedPages, ulong MemoryBytes, string Fingerprint, string Configuration, string Description, KernelImageSource Kernel);

/// <summary>Nestor's live-migration stream over one TCP connection. Little-endian throughout (docs/migration.md, "The
/// migration stream"):
/// <code>
/// header:  magic "NESTORMG" | u16 version | u16 0 | u32 length of the rest | u8 engine | u8 technique | u8 memory
///          virtualization | u8 2 MiB nested pages | u64 guest RAM | 32 bytes SHA-256 of the configuration text |
///          u32+UTF-8 configuration | u32+UTF-8 VM description | u32+UTF-8 kernel name | u8 kernel format |
///          u64 load address (all ones: none) | u32+kernel bytes | u64 CRC-64 of every header byte before it
/// section: 4-byte ASCII tag | u32 length | the payload | u64 CRC-64 of tag, length and payload
/// </code>
/// Sections from the source: <c>PAGE</c> (u32 round, u32 count, then per page: u64 guest frame, u8 kind, and for kind
/// 0 one byte every byte of the page holds (QEMU's zero-page flag, generalised to any repeated byte), for kind 1 the
/// page's 4,096 bytes), <c>ROUN</c> (a round's end: u32 round, u64 pages, u64 bytes), <c>STAT</c> (the vCPU, devices
/// and VMM: the snapshot's sections without RAM, <see cref="SnapshotWriter"/>), <c>DONE</c> (the end marker: u32
/// rounds, u64 pages), <c>ABRT</c> (the source gives up: UTF-8 reason). From the destination: <c>ACPT</c> (header
/// accepted), <c>RFSE</c> (refused: UTF-8 reason), <c>RSUM</c> (resumed: i64 instructions retired), <c>FAIL</c>
/// (could not restore: UTF-8 reason). The CRC is the snapshot's (<see cref="Crc64"/>, Firecracker's CRC-64/REDIS).
/// A reader refuses, in this order, what is not a Nestor stream, a newer version (before the checksum, whose place a
/// newer format may move), a cut stream, a bad checksum, and a section it does not know.</summary>
public static class MigrationStream
{
    /// <summary>The first eight bytes of a stream.</summary>
    public static ReadOnlySpan<byte> Magic => "NESTORMG"u8;

    /// <summary>The newest stream version this Nestor writes and reads.</summary>
    public const ushort FormatVersion = 1;

    /// <summary>Pages one <c>PAGE</c> section carries at most (a section is then at most about 1 MiB).</summary>
    public const int PagesPerSection = 256;

    /// <summary>The longest section payload a reader takes: a larger length is a corrupt one.</summary>
    public const int MaximumSection = 64 << 20;

    public const string Page = "PAGE", RoundEnd = "ROUN", State = "STAT", Done = "DONE", Abort = "ABRT";
    public const string Accept = "ACPT", Refuse = "RFSE", Resumed = "RSUM", Failed = "FAIL";

    /// <summary>Post-copy's sections: <c>POST</c> (source, before <c>STAT</c>: u64 pages to follow, then one bit per
    /// page of RAM in the order of its regions, set for each page still at the source), <c>PREQ</c> (destination: u64
    /// guest frame the guest faulted on), <c>PEND</c> (source: every page sent; u64 pushed, u64 demanded, u64
    /// pre-paged), <c>PACK</c> (destination: every page arrived; u64 demand faults, u64 pages received, i64 total and
    /// i64 longest fault wait in microseconds).</summary>
    public const string PostCopy = "POST", PageRequest = "PREQ", PostCopyEnd = "PEND", PostCopyAck = "PACK";

    /// <summary>Page kinds of a <c>PAGE</c> entry.</summary>
    public const byte FilledPage = 0, RawPage = 1;

    private static readonly string[] KnownTags = [Page, RoundEnd, State, Done, Abort, Accept, Refuse, Resumed, Failed, PostCopy, PageRequest, PostCopyEnd, PostCopyAck];

    /// <summary>The destination's listening socket on <paramref name="address"/> (<c>tcp:HOST:PORT</c>; port 0 takes a
    /// free one), for sim's and KVM's destinations alike: one connection is waited for, so a backlog of one;
    /// <paramref name="bound"/> is the address as bound, with the port the kernel chose.</summary>
    /// <exception cref="BadInputException">A bad address, or one that cannot be listened on.</exception>
    public static TcpListener Listen(string address, out string bound)
    {
        var endpoint = MigrationSettings.ParseAddress(address, "--incoming");
        var listener = new TcpListener(endpoint);
        try
        {
            listener.Start(1);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new BadInputException($"cannot listen on {address}: {e.Message}", "Give a free port of an address of this machine, e.g. tcp:127.0.0.1:4444");
        }
        var local = (IPEndPoint)listener.LocalEndpoint;
        bound = $"tcp:{(local.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{local.Address}]" : local.Address)}:{local.Port}";
        return listener;
    }

    /// <summary>Opens the source's connection to <paramref name="destination"/> (already parsed as
    /// <paramref name="endpoint"/>), for sim's and KVM's sources alike: Nagle off (a section is written whole and
    /// the destination's answers are small), 10 s to connect, then 120 s for any read. An unreachable destination is
    /// a <see cref="MigrationRefusal.Cut"/> whose hint is <paramref name="startDestination"/>, the command that
    /// starts the destination this source expects.</summary>
    public static TcpClient Connect(IPEndPoint endpoint, string destination, string startDestination)
    {
        var client = new TcpClient(endpoint.AddressFamily) { NoDelay = true };
        try
        {
            if (!client.ConnectAsync(endpoint).Wait(TimeSpan.FromSeconds(10)))
            {
                throw new MigrationStreamException($"cannot connect to {destination}: no answer within 10 s", MigrationRefusal.Cut);
            }
            client.GetStream().ReadTimeout = 120_000;
            return client;
        }
        catch (AggregateException e) when (e.InnerException is SocketException s)
        {
            client.Dispose();
            throw new MigrationStreamException($"cannot connect to {destination}: {s.Message}", MigrationRefusal.Cut,
                "Start the destination first: " + startDestination);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>The destination's side of <see cref="Connect"/>, for sim's and KVM's alike: waits up to
    /// <paramref name="timeout"/> (none: for ever) for a source on <paramref name="listener"/>, then Nagle off and
    /// 120 s for any read. No source in time is a <see cref="MigrationRefusal.Cut"/> whose hint is
    /// <paramref name="startSource"/>, the command that starts the migration at the source.</summary>
    public static TcpClient AcceptSource(TcpListener listener, TimeSpan? timeout, string address, string startSource)
    {
        var accept = listener.AcceptTcpClientAsync();
        if (!accept.Wait(timeout ?? Timeout.InfiniteTimeSpan))
        {
            throw new MigrationStreamException($"no source connected to {address} within {timeout!.Value.TotalSeconds:0} s", MigrationRefusal.Cut,
                "Start the migration with " + startSource);
        }
        var client = accept.Result;
        client.NoDelay = true;
        client.GetStream().ReadTimeout = 120_000;
        return client;
    }

    /// <summary>Reads the header (<see cref="ReadHeader"/>) and refuses a source of another engine than
    /// <paramref name="engine"/>, the one this destination runs (<paramref name="here"/> says so in the message,
    /// <paramref name="advice"/> what to do).</summary>
    public static MigrationHeader ReadHeaderFor(Stream input, EngineKind engine, string here, string advice)
    {
        var header = ReadHeader(input);
        if (header.Engine != engine)
        {
            throw new MigrationStreamException($"the source runs engine {header.Engine.ToString().ToLowerInvariant()}, and {here}",
                MigrationRefusal.WrongEngine, advice);
        }
        return header;
    }

    /// <summary>Refuses a VM built here whose configuration text (<paramref name="here"/>,
    /// <see cref="SnapshotFile.ConfigurationText"/>) is not the source's: the fingerprint and the text must both match.</summary>
    public static void CheckConfiguration(MigrationHeader header, string here)
    {
        string fingerprint = FingerprintOf(here);
        if (fingerprint != header.Fingerprint || here != header.Configuration)
        {
            throw new MigrationStreamException($"wrong configuration: the source's VM has fingerprint {header.Fingerprint[..16]}…, and the one built here {fingerprint[..16]}…",
                MigrationRefusal.WrongConfiguration, "Migrate between two Nestors of the same version");
        }
    }

    /// <summary>The header's bytes. <paramref name="version"/> other than <see cref="FormatVersion"/> is for the
    /// refusal tests only (a destination must refuse a newer stream).</summary>
    public static byte[] EncodeHeader(MigrationHeader header, ushort? version = null)
    {
        using var stream = new MemoryStream();
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write(Magic);
        w.Write(version ?? header.Version);
        w.Write((ushort)0);
        w.Write(0u); // the length, backpatched
        w.Write((byte)header.Engine);
        w.Write((byte)header.Technique);
        w.Write(header.Memory switch { MemoryVirtualization.Shadow => (byte)1, MemoryVirtualization.Nested => (byte)2, _ => (byte)0 });
        w.Write(header.LargeNestedPages);
        w.Write(header.MemoryBytes);
        w.Write(Convert.FromHexString(header.Fingerprint));
        WriteText(w, header.Configuration);
        WriteText(w, header.Description);
        WriteText(w, header.Kernel.Name);
        w.Write((byte)header.Kernel.Format);
        w.Write(header.Kernel.LoadAddress?.Value ?? ulong.MaxValue);
        w.Write(header.Kernel.Contents.Length);
        w.Write(header.Kernel.Contents);
        w.Flush();
        var bytes = new byte[stream.Length + 8];
        stream.ToArray().CopyTo(bytes, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(12), (uint)(bytes.Length - 16));
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(bytes.Length - 8), Crc64.Compute(bytes.AsSpan(0, bytes.Length - 8)));
        return bytes;
    }

    /// <summary>Reads and verifies a header from <paramref name="input"/>.</summary>
    /// <exception cref="MigrationStreamException">Not a stream, newer, cut, corrupted.</exception>
    public static MigrationHeader ReadHeader(Stream input)
    {
        var prefix = new byte[16];
        int got = ReadFully(input, prefix);
        if (got >= Magic.Length && !prefix.AsSpan(0, Magic.Length).SequenceEqual(Magic) || got < Magic.Length && !Magic.StartsWith(prefix.AsSpan(0, got)))
        {
            throw new MigrationStreamException("the incoming connection is not a Nestor migration stream (it does not start with \"NESTORMG\")",
                MigrationRefusal.Invalid, "Connect to the destination with nestor migrate, not another client");
        }
        ushort version = got >= 10 ? BinaryPrimitives.ReadUInt16LittleEndian(prefix.AsSpan(8)) : (ushort)0;
        if (version > FormatVersion)
        {
            throw new MigrationStreamException($"the migration stream's format version is {version}, newer than this Nestor reads ({FormatVersion})",
                MigrationRefusal.NewerVersion, "Migrate to a Nestor as new as the source's");
        }
        if (got < prefix.Length)
        {
            throw Cut($"the migration stream was cut inside its header ({got} of its first {prefix.Length} bytes)");
        }
        uint rest = BinaryPrimitives.ReadUInt32LittleEndian(prefix.AsSpan(12));
        if (rest > MaximumSection)
        {
            throw new MigrationStreamException($"the migration stream's header declares {rest:N0} bytes, more than a header can hold",
                MigrationRefusal.Corrupted, "The stream was damaged on the way: migrate again");
        }
        var all = new byte[16 + rest];
        prefix.CopyTo(all, 0);
        got = ReadFully(input, all.AsSpan(16));
        if (got < rest)
        {
            throw Cut($"the migration stream was cut inside its header ({16 + got:N0} of {all.Length:N0} bytes)");
        }
        ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(all.AsSpan(all.Length - 8));
        ulong computed = Crc64.Compute(all.AsSpan(0, all.Length - 8));
        if (stored != computed)
        {
            throw new MigrationStreamException($"the migration stream's header is corrupted: its CRC-64 is 0x{stored:x16} and its bytes give 0x{computed:x16}",
                MigrationRefusal.Corrupted, "The stream was damaged on the way: migrate again");
        }
        try
        {
            using var r = new BinaryReader(new MemoryStream(all, 16, all.Length - 24), Encoding.UTF8);
            var engine = (EngineKind)r.ReadByte();
            var technique = (Technique)r.ReadByte();
            MemoryVirtualization? memory = r.ReadByte() switch { 0 => null, 1 => MemoryVirtualization.Shadow, 2 => MemoryVirtualization.Nested, var m => throw Bad($"memory virtualization {m}") };
            bool large = r.ReadBoolean();
            if (!Enum.IsDefined(engine) || !Enum.IsDefined(technique))
            {
                throw Bad($"engine {(byte)engine} or technique {(byte)technique}");
            }
            ulong memoryBytes = r.ReadUInt64();
            string fingerprint = Convert.ToHexStringLower(r.ReadBytes(32));
            string configuration = ReadText(r);
            string description = ReadText(r);
            string kernelName = ReadText(r);
            var format = (KernelFormat)r.ReadByte();
            ulong load = r.ReadUInt64();
            int length = r.ReadInt32();
            if (length < 0 || length > r.BaseStream.Length - r.BaseStream.Position)
            {
                throw Bad($"a kernel of {length} bytes");
            }
            var kernel = new KernelImageSource(kernelName, r.ReadBytes(length), format, load == ulong.MaxValue ? null : new GuestPhysical(load));
            return new MigrationHeader(version, engine, technique, memory, large, memoryBytes, fingerprint, configuration, description, kernel);
        }
        catch (EndOfStreamException)
        {
            throw Bad("a header that ends before its fields");
        }
    }

    /// <summary>The configuration text's fingerprint as the header carries it.</summary>
    public static string FingerprintOf(string configuration) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(configuration)));

    /// <summary>Writes one section: tag, length, payload, CRC-64.</summary>
    public static void WriteSection(Stream output, string tag, ReadOnlySpan<byte> payload)
    {
        var head = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(head, SnapshotWriter.TagValue(tag));
        BinaryPrimitives.WriteUInt32LittleEndian(head.AsSpan(4), (uint)payload.Length);
        ulong crc = Crc64.Compute(payload, Crc64.Compute(head));
        var tail = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(tail, crc);
        output.Write(head);
        output.Write(payload);
        output.Write(tail);
    }

    /// <summary>Reads one section, verified.</summary>
    /// <exception cref="MigrationStreamException">Cut, corrupted, or of an unknown tag.</exception>
    public static (string Tag, byte[] Payload) ReadSection(Stream input)
    {
        var head = new byte[8];
        int got = ReadFully(input, head);
        if (got == 0)
        {
            throw Cut("the migration stream ended before its end marker (the peer closed the connection or was killed)");
        }
        if (got < head.Length)
        {
            throw Cut($"the migration stream was cut inside a section header ({got} of 8 bytes)");
        }
        string tag = TagText(head);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(4));
        if (!KnownTags.Contains(tag))
        {
            throw new MigrationStreamException($"the migration stream holds a section '{tag}' this Nestor does not know", MigrationRefusal.Invalid,
                "The stream was damaged on the way, or written by another program: migrate again with nestor migrate");
        }
        if (length > MaximumSection)
        {
            throw new MigrationStreamException($"section '{tag}' declares {length:N0} bytes, more than a section can hold (a corrupt length)",
                MigrationRefusal.Corrupted, "The stream was damaged on the way: migrate again");
        }
        var payload = new byte[length];
        var tail = new byte[8];
        got = ReadFully(input, payload);
        if (got < payload.Length || ReadFully(input, tail) < tail.Length)
        {
            throw Cut($"the migration stream was cut inside section '{tag}' ({got:N0} of its {length:N0} bytes arrived)");
        }
        ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(tail);
        ulong computed = Crc64.Compute(payload, Crc64.Compute(head));
        if (stored != computed)
        {
            throw new MigrationStreamException($"section '{tag}' of the migration stream is corrupted: its CRC-64 is 0x{stored:x16} and its bytes give 0x{computed:x16}",
                MigrationRefusal.Corrupted, "The stream was damaged on the way: migrate again");
        }
        return (tag, payload);
    }

    /// <summary>Reads a section that must have tag <paramref name="expected"/>; a refusal or failure the peer sent
    /// instead is thrown as what it says.</summary>
    public static byte[] Expect(Stream input, string expected, string peer)
    {
        var (tag, payload) = ReadSection(input);
        if (tag == expected)
        {
            return payload;
        }
        if (tag is Refuse or Failed or Abort)
        {
            throw new MigrationStreamException($"the {peer} {(tag == Refuse ? "refused the migration" : tag == Failed ? "failed to resume the VM" : "gave the migration up")}: {Encoding.UTF8.GetString(payload)}",
                MigrationRefusal.Refused, null);
        }
        throw new MigrationStreamException($"the {peer} sent section '{tag}' where '{expected}' belongs", MigrationRefusal.Invalid, null);
    }

    /// <summary>Whether every byte of a page is <paramref name="value"/>'s (the page travels as one byte).</summary>
    public static bool IsFilled(ReadOnlySpan<byte> page, out byte value)
    {
        value = page[0];
        return !page.ContainsAnyExcept(value);
    }

    private static int ReadFully(Stream input, Span<byte> buffer)
    {
        int total = 0;
        try
        {
            while (total < buffer.Length)
            {
                int n = input.Read(buffer[total..]);
                if (n == 0)
                {
                    break;
                }
                total += n;
            }
        }
        catch (IOException)
        {
            // A reset connection: what arrived is all there is.
        }
        return total;
    }

    private static MigrationStreamException Cut(string message) =>
        new(message, MigrationRefusal.Cut, "The other side ended or the connection broke: the source VM runs on; migrate again");

    private static MigrationStreamException Bad(string what) =>
        new($"the migration stream's header holds {what}, which this Nestor does not write", MigrationRefusal.Invalid);

    private static string TagText(ReadOnlySpan<byte> head)
    {
        Span<char> text = stackalloc char[4];
        for (int i = 0; i < 4; i++)
        {
            text[i] = head[i] is >= (byte)' ' and <= (byte)'~' ? (char)head[i] : '?';
        }
        return new string(text);
    }

    private static void WriteText(BinaryWriter w, string text) => BinaryText.Write(w, text);

    private static string ReadText(BinaryReader r) => BinaryText.Read(r, Bad);
}

/// <summary>Writes sections at most <see cref="BytesPerSecond"/> (QEMU's <c>max-bandwidth</c>) as a token bucket with
/// no burst: each section is due when the link would be free after the previous ones, and the writer sleeps until
/// then, so idle time (waiting for a round's dirty pages) earns no credit for a later burst.</summary>
public sealed class RateLimitedWriter(Stream inner, long bytesPerSecond)
{
    private readonly Stopwatch clock = Stopwatch.StartNew();
    private double linkFreeAt; // seconds on clock

    /// <summary>The limit.</summary>
    public long BytesPerSecond { get; } = bytesPerSecond;

    /// <summary>Bytes written so far, section framing included.</summary>
    public long Written { get; private set; }

    /// <summary>The underlying stream.</summary>
    public Stream Inner => inner;

    /// <summary>Writes one section (<see cref="MigrationStream.WriteSection"/>) within the limit.</summary>
    public void WriteSection(string tag, ReadOnlySpan<byte> payload)
    {
        MigrationStream.WriteSection(inner, tag, payload);
        long bytes = payload.Length + 16;
        Written += bytes;
        double now = clock.Elapsed.TotalSeconds;
        linkFreeAt = Math.Max(linkFreeAt, now) + (double)bytes / BytesPerSecond;
        if (linkFreeAt - now > 0.0005)
        {
            Thread.Sleep(TimeSpan.FromSeconds(linkFreeAt - now));
        }
    }
}
