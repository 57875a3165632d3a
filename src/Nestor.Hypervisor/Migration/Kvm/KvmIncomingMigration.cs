using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Persistence;
using Nestor.Kvm;

namespace Nestor.Hypervisor.Migration.Kvm;

/// <summary>The destination of a live migration on the KVM engine (<c>nestor run --engine kvm --incoming
/// tcp:HOST:PORT</c>, QEMU's <c>-incoming</c>): it listens, takes one connection, checks the stream's header (format
/// version, engine kvm) and gives the caller the VM to build (<see cref="Accept"/>); checks that the VM built has the
/// source's configuration, by its fingerprint (<see cref="Check"/>); receives the rounds straight into the VM's RAM
/// and then its state (<see cref="Receive"/>), which it restores (the vCPU's registers into the VM, the KVMS section
/// into the engine). When the VM's next run has loaded that state into a KVM vCPU, just before its first
/// <c>KVM_RUN</c>, the source is told the VM resumed (<c>RSUM</c>, through <see cref="IKvmRunObserver.Started"/>).
/// Anything wrong before that is refused with a message (<c>RFSE</c> or <c>FAIL</c>), and nothing runs here.</summary>
public sealed class KvmIncomingMigration : IKvmRunObserver, IDisposable
{
    private readonly TcpListener listener;
    private TcpClient? client;
    private NetworkStream? network;
    private MigrationHeader? header;
    private bool resumed;
    private long arrived;
    private readonly Stopwatch clock = new();

    private KvmIncomingMigration(TcpListener listener, string address)
    {
        this.listener = listener;
        Address = address;
    }

    /// <summary>Listens on <paramref name="address"/> (<c>tcp:HOST:PORT</c>; port 0 takes a free one).</summary>
    /// <exception cref="BadInputException">A bad address, or one that cannot be listened on.</exception>
    public static KvmIncomingMigration Listen(string address)
    {
        var listener = MigrationStream.Listen(address, out string bound);
        return new KvmIncomingMigration(listener, bound);
    }

    /// <summary>The address listened on.</summary>
    public string Address { get; }

    /// <summary>Rounds and pages received.</summary>
    public int Rounds { get; private set; }

    /// <inheritdoc cref="Rounds"/>
    public long Pages { get; private set; }

    /// <summary>Wall time from the connection to the resume.</summary>
    public TimeSpan Elapsed => clock.Elapsed;

    /// <summary>Waits for the source and reads its header; returns the kernel and the description of the VM to build
    /// (the caller builds it as its own run would, with its serial output and device path, then calls
    /// <see cref="Check"/>).</summary>
    /// <exception cref="MigrationStreamException">The stream is refused (the source is told why).</exception>
    public (KernelImageSource Kernel, KvmMigrationDescription Description) Accept(TimeSpan? timeout = null)
    {
        client = MigrationStream.AcceptSource(listener, timeout, Address, "nestor run --engine kvm --migrate-to " + Address);
        network = client.GetStream();
        clock.Start();
        try
        {
            header = MigrationStream.ReadHeaderFor(network, EngineKind.Kvm, "this destination runs kvm",
                "Migrate a sim VM to nestor host run --incoming, a KVM VM to nestor run --engine kvm --incoming");
            return (header.Kernel, KvmMigrationDescription.Decode(header.Description));
        }
        catch (MigrationStreamException e) when (e.Refusal != MigrationRefusal.Cut)
        {
            TrySend(MigrationStream.Refuse, e.Message);
            throw;
        }
    }

    /// <summary>Checks that <paramref name="vm"/>, built from what <see cref="Accept"/> returned, has the source's
    /// configuration, and accepts the stream.</summary>
    /// <exception cref="MigrationStreamException">It does not (the source is told why).</exception>
    public void Check(Vm vm)
    {
        if (header is null || network is null)
        {
            throw new InvalidOperationException("Accept first");
        }
        string here = SnapshotFile.ConfigurationText(vm, null);
        try
        {
            MigrationStream.CheckConfiguration(header, here);
        }
        catch (MigrationStreamException e)
        {
            TrySend(MigrationStream.Refuse, e.Message);
            throw;
        }
        MigrationStream.WriteSection(network, MigrationStream.Accept, []);
    }

    /// <summary>Receives the rounds into <paramref name="vm"/>'s RAM (zeroed first: the source sends only the pages
    /// its host has), then its state, restored into the VM and <paramref name="engine"/>; the VM's next run on it
    /// continues the source's. Call <see cref="Check"/> first.</summary>
    /// <exception cref="MigrationStreamException">Cut, corrupted, or the source gave up.</exception>
    /// <exception cref="SnapshotFormatException">The state does not restore into this VM (the source is told).</exception>
    public void Receive(Vm vm, KvmEngine engine)
    {
        if (network is null)
        {
            throw new InvalidOperationException("Accept first");
        }
        // The stream's page numbering (RamImage's, and its PAGE parser), the pages going straight into the VM's RAM;
        // the image's own buffer is never written, so it costs address space, not memory.
        var image = new RamImage(vm.Memory);
        RamImage.PageAt target = i => RamImage.Live(vm.Memory, image, i);
        foreach (var (_, backing) in vm.Memory.Regions)
        {
            backing.Slice(0, checked((int)backing.Length)).Clear(); // the loaded kernel too: it comes in the stream
        }
        byte[]? state = null;
        while (true)
        {
            var (tag, payload) = MigrationStream.ReadSection(network);
            if (tag == MigrationStream.Page)
            {
                Pages += image.Apply(payload, target);
            }
            else if (tag == MigrationStream.RoundEnd)
            {
                Rounds++;
            }
            else if (tag == MigrationStream.State)
            {
                state = payload;
            }
            else if (tag == MigrationStream.Done)
            {
                if (state is null)
                {
                    throw new MigrationStreamException("the migration stream ended without the VM's state", MigrationRefusal.Invalid);
                }
                arrived = Stopwatch.GetTimestamp();
                break;
            }
            else if (tag == MigrationStream.Abort)
            {
                throw new MigrationStreamException($"the source gave the migration up: {Encoding.UTF8.GetString(payload)}", MigrationRefusal.Refused,
                    "Nothing was started here; the source VM runs on there");
            }
            else
            {
                throw new MigrationStreamException($"the source sent section '{tag}' inside a migration", MigrationRefusal.Invalid);
            }
        }
        try
        {
            // As a KVM snapshot is restored (SnapshotFile.Restore): the VM's sections, then the KVMS section into a
            // fresh value, so that a refused section leaves the engine's as it was.
            var extended = new State.KvmVcpuExtendedState();
            var reader = new SnapshotReader(state);
            foreach (var part in vm.SnapshotParts.Where(p => p != vm.Memory).Append(extended))
            {
                reader.ReadSection(part);
            }
            if (!reader.AtEnd)
            {
                throw new SnapshotFormatException("the migrated state has sections after the last this VM and engine restore");
            }
            engine.ExtendedStateOf(vm).CopyFrom(extended);
        }
        catch (NestorException e)
        {
            TrySend(MigrationStream.Failed, e.Message);
            throw;
        }
        engine.Observer = this;
    }

    void IKvmRunObserver.Started(KvmVm kvm, KvmVcpu vcpu)
    {
        if (resumed || network is null)
        {
            return;
        }
        resumed = true;
        // The vCPU holds the source's state and KVM_RUN is next: the source may end now.
        var answer = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(answer, 0); // KVM does not count retired instructions
        try
        {
            MigrationStream.WriteSection(network, MigrationStream.Resumed, answer);
            network.Flush();
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // The source is gone after sending everything: it runs its VM on (it never heard the answer), and so
            // does this side. Said by the caller, which sees Resumed false.
            resumed = false;
        }
        clock.Stop();
        Resumed = resumed;
        ResumeMilliseconds = Stopwatch.GetElapsedTime(arrived).TotalMilliseconds;
    }

    /// <summary>From the stream's end marker to the answer: restoring the state and making the KVM VM, vCPU and memory
    /// slots (the destination's part of the downtime).</summary>
    public double ResumeMilliseconds { get; private set; }

    /// <summary>True once the source was told the VM resumed here.</summary>
    public bool Resumed { get; private set; }

    void IKvmRunObserver.Interrupted()
    {
    }

    void IKvmRunObserver.Stopped(KvmVm kvm)
    {
    }

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

    public void Dispose()
    {
        client?.Dispose();
        listener.Dispose();
    }
}
