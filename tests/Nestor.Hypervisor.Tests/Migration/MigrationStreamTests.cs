using System.Buffers.Binary;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Migration;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Techniques;
using Xunit;

namespace Nestor.Hypervisor.Tests.Migration;

/// <summary>The migration stream (docs/migration.md, "The migration stream"): its header and sections round-trip,
/// and a receiver refuses a stream that is not one, of a newer version, cut short, with a bad CRC-64 or an unknown
/// section, each with a message saying which.</summary>
public class MigrationStreamTests
{
    private static MigrationHeader Header(string configuration = "memory=67108864\n") => new(MigrationStream.FormatVersion, EngineKind.Sim,
        Technique.HardwareAssist, MemoryVirtualization.Nested, false, 64UL << 20, MigrationStream.FingerprintOf(configuration), configuration,
        "name=web\n", new KernelImageSource("nestoros", [1, 2, 3, 4, 5], KernelFormat.Elf));

    [Fact]
    public void A_header_round_trips_with_its_kernel_and_configuration()
    {
        var header = Header();
        var read = MigrationStream.ReadHeader(new MemoryStream(MigrationStream.EncodeHeader(header)));
        Assert.Equal(header.Technique, read.Technique);
        Assert.Equal(header.Memory, read.Memory);
        Assert.Equal(header.MemoryBytes, read.MemoryBytes);
        Assert.Equal(header.Fingerprint, read.Fingerprint);
        Assert.Equal(header.Configuration, read.Configuration);
        Assert.Equal(header.Description, read.Description);
        Assert.Equal(header.Kernel.Contents, read.Kernel.Contents);
        Assert.Null(read.Kernel.LoadAddress);
    }

    [Fact]
    public void A_newer_version_is_refused_before_its_checksum_is_read()
    {
        byte[] bytes = MigrationStream.EncodeHeader(Header(), version: 2);
        bytes[^1] ^= 0xFF; // a newer format may have moved the CRC: the version is what the message names
        var e = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadHeader(new MemoryStream(bytes)));
        Assert.Equal(MigrationRefusal.NewerVersion, e.Refusal);
        Assert.Equal("the migration stream's format version is 2, newer than this Nestor reads (1)", e.Message);
    }

    [Fact]
    public void Something_else_on_the_port_is_not_a_migration_stream()
    {
        var e = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadHeader(new MemoryStream("GET / HTTP/1.1\r\n\r\n"u8.ToArray())));
        Assert.Equal(MigrationRefusal.Invalid, e.Refusal);
        Assert.Contains("NESTORMG", e.Message);
    }

    [Fact]
    public void A_header_cut_short_or_corrupted_is_refused_saying_which()
    {
        byte[] bytes = MigrationStream.EncodeHeader(Header());
        var cut = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadHeader(new MemoryStream(bytes[..(bytes.Length - 3)])));
        Assert.Equal(MigrationRefusal.Cut, cut.Refusal);
        Assert.Contains("cut inside its header", cut.Message);
        bytes[40] ^= 1;
        var bad = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadHeader(new MemoryStream(bytes)));
        Assert.Equal(MigrationRefusal.Corrupted, bad.Refusal);
        Assert.Contains("CRC-64", bad.Message);
    }

    [Fact]
    public void Sections_round_trip_and_a_flipped_bit_a_cut_or_an_unknown_tag_is_refused()
    {
        var stream = new MemoryStream();
        byte[] payload = [.. Enumerable.Range(0, 5000).Select(i => (byte)i)];
        MigrationStream.WriteSection(stream, MigrationStream.State, payload);
        MigrationStream.WriteSection(stream, MigrationStream.Done, new byte[12]);
        byte[] bytes = stream.ToArray();

        var input = new MemoryStream(bytes);
        var (tag, read) = MigrationStream.ReadSection(input);
        Assert.Equal("STAT", tag);
        Assert.Equal(payload, read);
        Assert.Equal("DONE", MigrationStream.ReadSection(input).Tag);
        var ended = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadSection(input));
        Assert.Equal(MigrationRefusal.Cut, ended.Refusal);
        Assert.Contains("before its end marker", ended.Message);

        var cut = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadSection(new MemoryStream(bytes[..1000])));
        Assert.Equal(MigrationRefusal.Cut, cut.Refusal);
        Assert.Contains("cut inside section 'STAT'", cut.Message);

        byte[] flipped = (byte[])bytes.Clone();
        flipped[100] ^= 0x10;
        var corrupt = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadSection(new MemoryStream(flipped)));
        Assert.Equal(MigrationRefusal.Corrupted, corrupt.Refusal);
        Assert.Contains("section 'STAT' of the migration stream is corrupted", corrupt.Message);

        byte[] unknown = (byte[])bytes.Clone();
        "XXXX"u8.CopyTo(unknown);
        Assert.Equal(MigrationRefusal.Invalid, Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadSection(new MemoryStream(unknown))).Refusal);
    }

    [Fact]
    public void A_refusal_from_the_peer_is_thrown_as_what_it_says()
    {
        var stream = new MemoryStream();
        MigrationStream.WriteSection(stream, MigrationStream.Refuse, "the migration stream's format version is 2"u8);
        stream.Position = 0;
        var e = Assert.Throws<MigrationStreamException>(() => MigrationStream.Expect(stream, MigrationStream.Accept, "destination"));
        Assert.Equal(MigrationRefusal.Refused, e.Refusal);
        Assert.Equal("the destination refused the migration: the migration stream's format version is 2", e.Message);
    }

    [Fact]
    public void Page_sections_carry_filled_pages_as_one_byte_and_the_others_whole()
    {
        using var memory = new Memory.GuestMemory(8UL << 20);
        var image = new RamImage(memory);
        Assert.Equal(2048, image.Pages);
        var payload = new byte[8 + 9 + 1 + 9 + 4096];
        BinaryPrimitives.WriteInt32LittleEndian(payload.AsSpan(4), 2);
        BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(8), 5);
        payload[16] = MigrationStream.FilledPage;
        payload[17] = 0xAB;
        BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(18), 7);
        payload[26] = MigrationStream.RawPage;
        for (int i = 0; i < 4096; i++)
        {
            payload[27 + i] = (byte)(i * 7);
        }
        Assert.Equal(2, image.Apply(payload));
        Assert.True(MigrationStream.IsFilled(image.Page(image.IndexOf(5)), out byte value));
        Assert.Equal(0xAB, value);
        Assert.Equal(unchecked((byte)(100 * 7)), image.Page(image.IndexOf(7))[100]);
        Assert.False(image.Page(image.IndexOf(6)).ContainsAnyExcept((byte)0));

        BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(8), 1UL << 40); // not RAM
        Assert.Contains("not RAM", Assert.Throws<MigrationStreamException>(() => image.Apply(payload)).Message);
    }

    [Fact]
    public void A_hosted_vm_description_builds_the_same_spec()
    {
        var kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf);
        var spec = new HostedVmSpec("web", kernel, "migtouch 64 5", new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
            new MemoryControls(32UL << 20, 64UL << 20, 640), new CpuControls(2000, 12.5, 80))
        { SerialLimitBytes = 1 << 20 };
        var back = MigrationVmDescription.Decode(MigrationVmDescription.Encode(spec), kernel);
        Assert.Equal(spec, back);
    }

    [Fact]
    public void The_rate_limited_writer_keeps_to_its_bandwidth()
    {
        var writer = new RateLimitedWriter(Stream.Null, 1 << 20); // 1 MiB/s
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var chunk = new byte[64 << 10];
        for (int i = 0; i < 4; i++)
        {
            writer.WriteSection(MigrationStream.Page, chunk); // 256 KiB in all: a quarter of a second at 1 MiB/s
        }
        Assert.InRange(clock.Elapsed.TotalMilliseconds, 240, 2000);
        Assert.Equal(4 * (chunk.Length + 16), writer.Written);
    }

    [Fact]
    public void ADestinationRefusesASourceOfAnotherEngineAndAVmBuiltWithAnotherConfiguration()
    {
        var header = Header();
        var e = Assert.Throws<MigrationStreamException>(() => MigrationStream.ReadHeaderFor(new MemoryStream(MigrationStream.EncodeHeader(header)),
            EngineKind.Kvm, "this destination runs kvm", "advice"));
        Assert.Equal(MigrationRefusal.WrongEngine, e.Refusal);
        Assert.Equal("the source runs engine sim, and this destination runs kvm", e.Message);
        Assert.Equal(header.Fingerprint, MigrationStream.ReadHeaderFor(new MemoryStream(MigrationStream.EncodeHeader(header)), EngineKind.Sim, "", "").Fingerprint);

        MigrationStream.CheckConfiguration(header, "memory=67108864\n");
        var wrong = Assert.Throws<MigrationStreamException>(() => MigrationStream.CheckConfiguration(header, "memory=134217728\n"));
        Assert.Equal(MigrationRefusal.WrongConfiguration, wrong.Refusal);
        Assert.StartsWith("wrong configuration: the source's VM has fingerprint " + header.Fingerprint[..16], wrong.Message);
        // Same fingerprint claimed, other text: still refused (the text is compared too).
        var forged = header with { Configuration = "memory=1\n" };
        Assert.Throws<MigrationStreamException>(() => MigrationStream.CheckConfiguration(forged, "memory=67108864\n"));
    }
}
