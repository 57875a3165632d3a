using System.Buffers.Binary;
using Nestor.Machine.Addresses;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.ServiceVm;

/// <summary>The <c>struct grant_copy</c> that GRANT_COPY reads from the caller's memory, 24 bytes: u32 the grant
/// reference, u32 flags (bit 0 <see cref="ToGrantedFrame"/>), u64 the caller's guest-physical buffer, u32 the offset
/// in the granted frame, u32 the length (the range stays inside the frame).</summary>
public static class GrantCopy
{
    /// <summary>Size of the descriptor.</summary>
    public const int Size = 24;

    /// <summary>Flags bit 0: copy from the caller's buffer into the granted frame (a write through the grant); clear,
    /// from the granted frame into the caller's buffer.</summary>
    public const uint ToGrantedFrame = 1;
}

/// <summary>One VM's side of the split driver, Xen's "domain": its id, its peer, the grant table it owns, its event
/// channels' pending bits, and the handling of <see cref="SplitDriverHypercall"/>s it makes. The VMM checks every
/// grant against the owner's table, so the service VM reaches only what the user VM granted it.</summary>
public sealed class SplitDriverDomain
{
    /// <summary>CPUID 0x40000001 EAX bit announcing the split-driver hypercalls.</summary>
    public const uint CpuidBit = 1u << 1;

    /// <summary>The result of a refused hypercall.</summary>
    public const ulong Refused = ulong.MaxValue;

    /// <summary>Event channels per domain (bits of the pending mask).</summary>
    public const int Channels = 64;

    private readonly long[] refusedGrants = new long[Enum.GetValues<GrantRefusal>().Length];
    private readonly byte[] copyBuffer = new byte[4096];

    /// <param name="vm">The VM the domain is.</param>
    /// <param name="id">Its domain id (0 the service VM, as Xen's dom0).</param>
    public SplitDriverDomain(Vm vm, ushort id)
    {
        Vm = vm;
        Id = id;
        Grants = new GrantTable(vm);
    }

    /// <summary>The VM.</summary>
    public Vm Vm { get; }

    /// <summary>The domain id grant entries name.</summary>
    public ushort Id { get; }

    /// <summary>The other domain: the one it notifies and whose grants it may use.</summary>
    public SplitDriverDomain? Peer { get; set; }

    /// <summary>The table in which this domain grants its frames.</summary>
    public GrantTable Grants { get; }

    /// <summary>This domain's pending event channels (bit n = channel n).</summary>
    public ulong Pending { get; internal set; }

    /// <summary>Set by EVENT_NOTIFY: the host ends the domain's turn when it next halts, and delivers the event.</summary>
    public bool NotifiedPeer { get; internal set; }

    /// <summary>Called at EVENT_NOTIFY: the host ends the caller's turn there (a guest with a timer never halts for
    /// good, so its halt cannot be the only end of a turn).</summary>
    public Action? EndTurn { get; set; }

    /// <summary>EVENT_NOTIFY hypercalls: each one a VM exit.</summary>
    public long Notifies { get; private set; }

    /// <summary>Split-driver hypercalls made, refused ones included.</summary>
    public long Hypercalls { get; private set; }

    /// <summary>GRANT_COPY operations done.</summary>
    public long GrantCopies { get; private set; }

    /// <summary>Bytes moved by GRANT_COPY.</summary>
    public long GrantCopyBytes { get; private set; }

    /// <summary>Grants refused to this domain (as the grantee), by cause.</summary>
    public long RefusedGrants(GrantRefusal cause) => refusedGrants[(int)cause];

    /// <summary>All grants refused to this domain.</summary>
    public long RefusedGrantsTotal => refusedGrants.Sum();

    /// <summary>Hypercalls refused for their arguments (a descriptor outside the caller's RAM, a bad channel, a bad
    /// table), grants refused not included.</summary>
    public long RefusedArguments { get; private set; }

    /// <summary>Whether <paramref name="number"/> is one of the split driver's hypercalls.</summary>
    public static bool IsSplitDriverCall(ulong number) =>
        number >= (ulong)SplitDriverHypercall.GrantTableSetup && number <= (ulong)SplitDriverHypercall.EventTake;

    /// <summary>Carries out a split-driver hypercall made by this domain's vCPU; the result for RAX.</summary>
    public ulong Call(Cpu cpu, SplitDriverHypercall number, ulong a, ulong b)
    {
        _ = cpu;
        Hypercalls++;
        switch (number)
        {
            case SplitDriverHypercall.GrantTableSetup:
                return Grants.Setup(a, b) ? 0 : RefuseArguments();
            case SplitDriverHypercall.GrantCopy:
                return Copy(a);
            case SplitDriverHypercall.EventNotify:
                if (a >= Channels || Peer is null)
                {
                    return RefuseArguments();
                }
                Notifies++;
                Peer.Pending |= 1UL << (int)a;
                NotifiedPeer = true;
                EndTurn?.Invoke();
                return 0;
            case SplitDriverHypercall.EventTake:
                {
                    ulong pending = Pending;
                    Pending = 0;
                    return pending;
                }
            default:
                return RefuseArguments();
        }
    }

    private ulong RefuseArguments()
    {
        RefusedArguments++;
        return Refused;
    }

    /// <summary>GRANT_COPY: the descriptor from the caller's RAM, the grant checked in the peer's table, then the
    /// copy through the VMM's buffer (one frame at most, so the host's work per hypercall is bounded).</summary>
    private ulong Copy(ulong descriptor)
    {
        if (Peer is null || !Vm.Memory.IsRam(new GuestPhysical(descriptor), GrantCopy.Size))
        {
            return RefuseArguments();
        }
        var d = Vm.Memory.Span(new GuestPhysical(descriptor), GrantCopy.Size);
        uint reference = BinaryPrimitives.ReadUInt32LittleEndian(d);
        bool toGranted = (BinaryPrimitives.ReadUInt32LittleEndian(d[4..]) & GrantCopy.ToGrantedFrame) != 0;
        ulong local = BinaryPrimitives.ReadUInt64LittleEndian(d[8..]);
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(d[16..]);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(d[20..]);
        var refusal = Peer.Grants.Check(reference, Id, toGranted, offset, length, out ulong granted);
        if (refusal != GrantRefusal.None)
        {
            refusedGrants[(int)refusal]++;
            return Refused;
        }
        if (!Vm.Memory.IsRam(new GuestPhysical(local), length))
        {
            return RefuseArguments();
        }
        var buffer = copyBuffer.AsSpan(0, (int)length);
        // The caller runs: its memory is written through its DMA path, which makes a shared frame private first and
        // drops what the CPU decoded from it. The peer is descheduled (the host runs one VM at a time).
        bool done = toGranted
            ? Vm.Dma.TryRead(new GuestPhysical(local), buffer) && Peer.Vm.Dma.TryWrite(new GuestPhysical(granted), buffer)
            : Peer.Vm.Dma.TryRead(new GuestPhysical(granted), buffer) && Vm.Dma.TryWrite(new GuestPhysical(local), buffer);
        if (!done)
        {
            return RefuseArguments();
        }
        GrantCopies++;
        GrantCopyBytes += length;
        return 0;
    }
}
