using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Migration;

/// <summary>The destination side of a live migration (<c>nestor host run --incoming tcp:HOST:PORT</c>, QEMU's
/// <c>-incoming</c>): it listens, takes one connection, checks the stream's header (format version, engine, and that
/// the VM it builds from the description has the configuration the source declared, by its fingerprint), receives the
/// pre-copy rounds into a <see cref="RamImage"/>, then the stop-and-copy's pages and the VM's state. Only then is the
/// VM built on the host (<see cref="Install"/>, called as the host powers it on): RAM installed, the vCPU, devices and
/// VMM restored from the snapshot sections, and the source told it resumed (<c>RSUM</c>). Anything wrong before
/// that is refused with a message (<c>RFSE</c> or <c>FAIL</c> to the source, which then runs its VM on) and nothing
/// runs here.</summary>
public sealed class IncomingMigration : IDisposable
{
    private readonly TcpListener listener;
    private readonly string address;
    private TcpClient? client;
    private NetworkStream? network;
    private MigrationHeader? header;
    private RamImage? image;
    private byte[]? state;
    private bool receivedIntoVm;
    private byte[]? postCopyMap; // post-copy: the pages still at the source (MigrationStream.PostCopy)
    private readonly Lock writeGate = new();
    private readonly Stopwatch clock = new();

    private IncomingMigration(TcpListener listener, string address)
    {
        this.listener = listener;
        this.address = address;
    }

    /// <summary>Listens on <paramref name="address"/> (<c>tcp:HOST:PORT</c>; port 0 takes a free one, named by
    /// <see cref="Address"/>).</summary>
    /// <exception cref="BadInputException">A bad address, or one that cannot be listened on.</exception>
    public static IncomingMigration Listen(string address)
    {
        var listener = MigrationStream.Listen(address, out string bound);
        return new IncomingMigration(listener, bound);
    }

    /// <summary>The address listened on.</summary>
    public string Address => address;

    /// <summary>Rounds received, pages received.</summary>
    public int Rounds { get; private set; }

    /// <inheritdoc cref="Rounds"/>
    public long Pages { get; private set; }

    /// <summary>Waits for the source, checks its header and answers it; returns the VM to build.</summary>
    /// <exception cref="MigrationStreamException">The stream is refused (the source is told why).</exception>
    public HostedVmSpec Accept(TimeSpan? timeout = null)
    {
        client = MigrationStream.AcceptSource(listener, timeout, address, $"nestor migrate VM {address}");
        network = client.GetStream();
        clock.Start();
        try
        {
            header = MigrationStream.ReadHeaderFor(network, EngineKind.Sim, "this host runs sim only", "Migrate a VM of nestor host run (the software machine)");
            var spec = MigrationVmDescription.Decode(header.Description, header.Kernel);
            // The VM the description builds must be the one the source runs: its configuration text, fingerprinted.
            using (var probe = Vm.Create(ConfigOf(spec, Stream.Null)))
            {
                string here = SnapshotFile.ConfigurationText(probe, spec.Sim);
                MigrationStream.CheckConfiguration(header, here);
                image = new RamImage(probe.Memory);
            }
            MigrationStream.WriteSection(network, MigrationStream.Accept, []);
            return spec;
        }
        catch (MigrationStreamException e) when (e.Refusal != MigrationRefusal.Cut)
        {
            TrySend(MigrationStream.Refuse, e.Message);
            throw;
        }
    }

    /// <summary>Receives the pre-copy rounds, the stop-and-copy and the state, up to the end marker, the pages straight
    /// into <paramref name="into"/>'s RAM (built as the source's, before the first page arrives, as QEMU's
    /// <c>-incoming</c> builds the VM first: so the downtime does not pay for building it), or into the image when
    /// null.</summary>
    /// <exception cref="MigrationStreamException">Cut, corrupted, or the source gave up.</exception>
    public void Receive(Vm? into = null)
    {
        if (network is null || image is null)
        {
            throw new InvalidOperationException("Accept first");
        }
        var layout = image;
        RamImage.PageAt target = into is null ? layout.Page : index => RamImage.Live(into.Memory, layout, index);
        if (into is not null)
        {
            // The source sends only the pages that are not all zeros: the fresh VM's RAM (its loaded kernel) is
            // cleared first, so that it starts all zeros as the source assumes.
            for (long i = 0; i < layout.Pages; i++)
            {
                var live = RamImage.Live(into.Memory, layout, i);
                if (live.ContainsAnyExcept((byte)0))
                {
                    live.Clear();
                }
            }
            receivedIntoVm = true;
        }
        while (true)
        {
            var (tag, payload) = MigrationStream.ReadSection(network);
            switch (tag)
            {
                case MigrationStream.Page:
                    Pages += image.Apply(payload, target);
                    break;
                case MigrationStream.RoundEnd:
                    Rounds++;
                    break;
                case MigrationStream.State:
                    state = payload;
                    break;
                case MigrationStream.PostCopy:
                    if (payload.Length != 8 + (image.Pages + 7) / 8)
                    {
                        throw new MigrationStreamException($"the post-copy map has {payload.Length:N0} bytes, and this VM's {image.Pages:N0} pages need {8 + (image.Pages + 7) / 8:N0}",
                            MigrationRefusal.Invalid);
                    }
                    postCopyMap = payload;
                    break;
                case MigrationStream.Done:
                    if (state is null)
                    {
                        throw new MigrationStreamException("the migration stream ended without the VM's state", MigrationRefusal.Invalid);
                    }
                    return;
                case MigrationStream.Abort:
                    throw new MigrationStreamException($"the source gave the migration up: {Encoding.UTF8.GetString(payload)}", MigrationRefusal.Refused,
                        "Nothing was started here; the source VM runs on there");
                default:
                    throw new MigrationStreamException($"the source sent section '{tag}' inside a migration", MigrationRefusal.Invalid);
            }
        }
    }

    /// <summary>Called by the host as it powers the VM on (<see cref="VirtualMachineHost.VmCreated"/>): RAM from the
    /// image, then the state; then the source is told the VM resumed here.</summary>
    public void Install(HostedVm hosted)
    {
        if (image is null || state is null || hosted.Vm is not { } vm || hosted.Engine is not { } engine)
        {
            return;
        }
        try
        {
            for (long i = 0; i < image.Pages && !receivedIntoVm; i++)
            {
                var live = RamImage.Live(vm.Memory, image, i);
                var page = image.Page(i);
                if (page.ContainsAnyExcept((byte)0) || live.ContainsAnyExcept((byte)0))
                {
                    page.CopyTo(live);
                }
            }
            var reader = new SnapshotReader(state);
            foreach (var part in vm.SnapshotParts.Where(p => p != vm.Memory).Append(engine))
            {
                reader.ReadSection(part);
            }
            if (!reader.AtEnd)
            {
                throw new SnapshotFormatException("the migrated state has sections after the last this VM and engine restore");
            }
        }
        catch (NestorException e)
        {
            TrySend(MigrationStream.Failed, e.Message);
            throw;
        }
        if (postCopyMap is { } map)
        {
            if (!receivedIntoVm)
            {
                throw new InvalidOperationException("post-copy receives into the VM: call Receive with it");
            }
            // Post-copy (Hines and Gopalan, VEE'09): the VM runs from now on, and each page still at the source is away
            // until it arrives: its P2M fetches it at its first touch (Paging/GuestPhysicalMap.PostCopy.cs).
            var lostCallback = PostCopyLost;
            PostCopy = new PostCopyDestination(vm.Memory, image, network!, writeGate, map.AsSpan(8), (ulong)((vm.Memory.Regions.Max(r => r.Region.End.Value) + 4095) / 4096))
            {
                Completed = done => PostCopyCompleted?.Invoke(done),
                Lost = why =>
                {
                    // The VM is lost (its memory exists in halves and one is gone): it ends now, saying so, rather than
                    // when it next touches a page that never arrived.
                    hosted.StopCause ??= why;
                    hosted.Control.Stop(Exits.VmOutcomeKind.Terminated);
                    lostCallback?.Invoke(why);
                },
            };
            Paging.GuestPhysicalMap.AwaitPages(vm.Memory, PostCopy);
        }
        var resumed = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(resumed, vm.Vcpus[0].State.InstructionsRetired);
        lock (writeGate)
        {
            MigrationStream.WriteSection(network!, MigrationStream.Resumed, resumed);
            network!.Flush();
        }
        clock.Stop();
        InstructionsAtResume = vm.Vcpus[0].State.InstructionsRetired;
        PostCopy?.Start();
    }

    /// <summary>Post-copy's destination side, once the VM resumed by post-copy (null for pre-copy).</summary>
    internal PostCopyDestination? PostCopy { get; private set; }

    /// <summary>Called when the last post-copy page arrived.</summary>
    internal Action<PostCopyDestination>? PostCopyCompleted { get; set; }

    /// <summary>Called when the source was lost during post-copy, with the VM's outcome.</summary>
    internal Action<string>? PostCopyLost { get; set; }

    /// <summary>The vCPU's instructions retired when it resumed here.</summary>
    public long InstructionsAtResume { get; private set; }

    /// <summary>Wall time from the connection to the resume.</summary>
    public TimeSpan Elapsed => clock.Elapsed;

    /// <summary>The VM configuration the host builds for <paramref name="spec"/> (as <see cref="VirtualMachineHost"/>
    /// powers it on): what the source's configuration text is compared with.</summary>
    private static VmConfig ConfigOf(HostedVmSpec spec, Stream serial) => new()
    {
        Engine = EngineKind.Sim,
        Sim = spec.Sim,
        Kernel = spec.Kernel,
        MemoryBytes = spec.Memory.MaxBytes,
        CommandLine = spec.CommandLine,
        SerialOutput = serial,
        Multiboot = spec.Multiboot,
        Balloon = spec.Balloon,
    };

    private void TrySend(string tag, string text)
    {
        try
        {
            if (network is not null)
            {
                MigrationStream.WriteSection(network, tag, Encoding.UTF8.GetBytes(text));
                network.Flush();
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // The source is gone: it sees the connection closed, which it takes as a failure too.
        }
    }

    /// <summary>After the host's run, before its VMs are disposed: a guest that ended before touching its last pages
    /// still has them coming; they are taken into its RAM, so that the source ends its migration as completed rather
    /// than seeing the connection cut (which it must take as the VM lost).</summary>
    public void AwaitPostCopy() => PostCopy?.WaitOver(TimeSpan.FromMinutes(5));

    public void Dispose()
    {
        AwaitPostCopy();
        client?.Dispose();
        listener.Dispose();
    }
}
