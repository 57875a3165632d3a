using Nestor.Hypervisor.Devices;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Memory.Kvm;

/// <summary>A paravirtual balloon on I/O ports, for ring-0 guests on this host's nested KVM, which cannot take the
/// interrupts and exceptions a full driver stack needs (docs/overcommit.md, "On KVM"). It is the balloon's mechanism
/// (Waldspurger, OSDI 2002, §3.2; virtio 1.2 §5.5.6) without the virtqueues: the guest names a range of its own pages
/// and inflates it, and the VMM gives those pages back to the host at once with <c>madvise(MADV_DONTNEED)</c>
/// (<see cref="KvmMemoryAdvice.Release"/>), so the process's resident set drops; deflating returns them to the guest,
/// whose next touch refills each with a zero page (it must not rely on their content, §5.5.6.1). Registers, each a
/// 32-bit OUT or IN:
/// <list type="bullet">
/// <item><c>0x5D0</c> PFN: the first 4 KiB page frame of the range (address >> 12, as virtio-balloon's PFNs).</item>
/// <item><c>0x5D4</c> COUNT: the number of pages.</item>
/// <item><c>0x5D8</c> COMMAND: write 1 to inflate [PFN, PFN + COUNT), 2 to deflate it; a read returns how many
/// pages the last command accepted (a page outside RAM, inflated twice or deflated while not inflated is refused and
/// counted in <see cref="RefusedPages"/>).</item>
/// <item><c>0x5DC</c> PHASE: the guest says it reached step <c>v</c> of its work; <see cref="PhaseReached"/> runs on
/// the vCPU's thread before the guest continues, so the host can measure memory between the guest's steps.</item>
/// </list></summary>
public sealed class BalloonPort : IPortDevice
{
    /// <summary>The first of its four registers.</summary>
    public const ushort BasePort = 0x5D0;

    /// <summary>Ports it claims.</summary>
    public const int PortCount = 16;

    /// <summary>Register offsets from <see cref="BasePort"/>.</summary>
    public const ushort PfnRegister = 0, CountRegister = 4, CommandRegister = 8, PhaseRegister = 12;

    /// <summary>Commands.</summary>
    public const uint Inflate = 1, Deflate = 2;

    private const int PageBytes = 4096;

    private readonly GuestMemory memory;
    private readonly bool[] inflated;
    private uint pfn, count, accepted;

    public BalloonPort(GuestMemory memory)
    {
        this.memory = memory;
        inflated = new bool[memory.Regions.Max(r => r.Region.End.Value) / PageBytes];
    }

    /// <summary>Claims the ports on <paramref name="vm"/>'s bus.</summary>
    public static BalloonPort Attach(Vm vm)
    {
        var port = new BalloonPort(vm.Memory);
        vm.Bus.Claim(port, BasePort, PortCount);
        return port;
    }

    public string Name => "balloon-port";

    /// <summary>Runs when the guest writes the PHASE register, with the value written.</summary>
    public Action<uint>? PhaseReached { get; set; }

    /// <summary>The last phase the guest reported.</summary>
    public uint? Phase { get; private set; }

    /// <summary>Pages in the balloon now.</summary>
    public long InflatedPages { get; private set; }

    /// <summary>Pages inflated so far.</summary>
    public long PagesInflated { get; private set; }

    /// <summary>Pages deflated so far.</summary>
    public long PagesDeflated { get; private set; }

    /// <summary>Bytes of inflated pages that were resident when they were released (mincore just before the
    /// <c>madvise</c>): the memory the balloon gave back to the host.</summary>
    public long BytesReturnedToHost { get; private set; }

    /// <summary>Pages refused by a command.</summary>
    public long RefusedPages { get; private set; }

    public uint Read(ushort port, int size) => (ushort)(port - BasePort) switch
    {
        PfnRegister => pfn,
        CountRegister => count,
        CommandRegister => accepted,
        _ => 0,
    };

    public void Write(ushort port, int size, uint value)
    {
        switch ((ushort)(port - BasePort))
        {
            case PfnRegister:
                pfn = value;
                break;
            case CountRegister:
                count = value;
                break;
            case CommandRegister when value is Inflate or Deflate:
                accepted = Apply(value == Inflate);
                break;
            case CommandRegister:
                accepted = 0;
                RefusedPages += count;
                break;
            case PhaseRegister:
                Phase = value;
                PhaseReached?.Invoke(value);
                break;
        }
    }

    // Per page, so that a partly bad range still does what it can; accepted inflations are released in runs, one
    // madvise per contiguous run.
    private uint Apply(bool inflate)
    {
        uint done = 0;
        long runStart = -1;
        for (ulong frame = pfn; frame < (ulong)pfn + count; frame++)
        {
            bool ok = frame < (ulong)inflated.Length && inflated[frame] != inflate
                && memory.IsRam(new GuestPhysical(frame * PageBytes), PageBytes);
            if (ok && inflate && runStart >= 0 && !memory.IsRam(new GuestPhysical((ulong)runStart * PageBytes), (frame - (ulong)runStart + 1) * PageBytes))
            {
                ReleaseRun(runStart, (long)frame); // the run would cross into another region
                runStart = -1;
            }
            if (!ok)
            {
                RefusedPages++;
                if (runStart >= 0)
                {
                    ReleaseRun(runStart, (long)frame);
                    runStart = -1;
                }
                continue;
            }
            inflated[frame] = inflate;
            done++;
            if (inflate && runStart < 0)
            {
                runStart = (long)frame;
            }
        }
        if (runStart >= 0)
        {
            ReleaseRun(runStart, (long)((ulong)pfn + count));
        }
        if (inflate)
        {
            InflatedPages += done;
            PagesInflated += done;
        }
        else
        {
            InflatedPages -= done;
            PagesDeflated += done;
        }
        return done;
    }

    private void ReleaseRun(long first, long end) =>
        BytesReturnedToHost += KvmMemoryAdvice.Release(memory, new GuestPhysical((ulong)first * PageBytes), end - first) * PageBytes;
}
