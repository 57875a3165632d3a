using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>What this host's KVM offers to find the pages a guest wrote (api.rst §4.8 KVM_GET_DIRTY_LOG, §4.117
/// KVM_CLEAR_DIRTY_LOG, §8.29 KVM_CAP_DIRTY_LOG_RING), as KVM_CHECK_EXTENSION on a VM answers.</summary>
/// <param name="ManualProtectFlags">KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's answer: the flags it may be enabled with (bit 0
/// manual protect: KVM_GET_DIRTY_LOG leaves the pages writable until KVM_CLEAR_DIRTY_LOG; bit 1 initially set: a new
/// slot starts with every bit set); 0 when absent.</param>
/// <param name="RingBytes">KVM_CAP_DIRTY_LOG_RING's answer: the largest dirty ring a vCPU may have, in bytes (16 a
/// <c>struct kvm_dirty_gfn</c>); 0 when absent.</param>
/// <param name="AcquireReleaseRingBytes">The same for KVM_CAP_DIRTY_LOG_RING_ACQ_REL.</param>
public sealed record KvmDirtyLogSupport(int ManualProtectFlags, int RingBytes, int AcquireReleaseRingBytes)
{
    /// <summary>KVM_CLEAR_DIRTY_LOG can be used (manual protect).</summary>
    public bool ManualProtect => (ManualProtectFlags & 1) != 0;

    /// <summary>One line for people.</summary>
    public override string ToString() =>
        $"KVM_GET_DIRTY_LOG bitmaps: yes; KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: {(ManualProtectFlags == 0 ? "no" : $"yes (flags 0x{ManualProtectFlags:x})")}; " +
        $"KVM_CAP_DIRTY_LOG_RING: {(RingBytes == 0 ? "no" : $"yes, up to {RingBytes / 16:N0} entries a vCPU")}; " +
        $"KVM_CAP_DIRTY_LOG_RING_ACQ_REL: {(AcquireReleaseRingBytes == 0 ? "no" : "yes")}";
}

// Dirty-page logging (api.rst §4.8): with KVM_MEM_LOG_DIRTY_PAGES on a slot, KVM write-protects its pages (or, on
// hardware with Intel's page-modification logging, logs the EPT dirty bits it sets) and sets bit n of the slot's
// bitmap when the guest writes page n. KVM_GET_DIRTY_LOG copies the bitmap out and, unless manual protect is
// enabled, clears it and write-protects those pages again in the same call, so each read returns the pages written
// since the previous one.
public sealed partial class KvmVm
{
    private const uint ReadOnlyFlag = 2;       // KVM_MEM_READONLY
    private const uint LogDirtyPagesFlag = 1;  // KVM_MEM_LOG_DIRTY_PAGES

    private readonly Dictionary<uint, KvmMemorySlot> slots = [];
    private readonly Dictionary<uint, ulong[]> dirtyBitmaps = [];

    /// <summary>The memory slots made so far, by number.</summary>
    public IReadOnlyDictionary<uint, KvmMemorySlot> MemorySlots => slots;

    /// <summary>True once <see cref="EnableManualDirtyLogProtect"/> succeeded: <see cref="GetDirtyLog"/> then leaves
    /// the pages it reports writable until <see cref="ClearDirtyLog"/>.</summary>
    public bool ManualDirtyLogProtect { get; private set; }

    /// <summary>The dirty-logging capabilities of this VM.</summary>
    public KvmDirtyLogSupport DirtyLogSupport => new(CheckCapability(KvmCapability.ManualDirtyLogProtect2),
        CheckCapability(KvmCapability.DirtyLogRing), CheckCapability(KvmCapability.DirtyLogRingAcquireRelease));

    /// <summary>Switches dirty logging of <paramref name="slot"/> on or off while the VM runs (the same
    /// KVM_SET_USER_MEMORY_REGION with only the flag changed, api.rst §4.35). Switched on, its log starts empty:
    /// pages written before are not in it.</summary>
    /// <exception cref="InvalidOperationException">No such slot.</exception>
    public void SetDirtyLogging(uint slot, bool logDirtyPages)
    {
        if (!slots.TryGetValue(slot, out var s))
        {
            throw new InvalidOperationException($"there is no memory slot {slot}");
        }
        if (s.LogDirtyPages != logDirtyPages)
        {
            SetUserMemoryRegion(slot, s.GuestPhysicalAddress, s.Size, s.HostAddress, s.ReadOnly, logDirtyPages);
        }
    }

    private void RememberSlot(uint slot, ulong guestPhysicalAddress, ulong size, nint hostAddress, bool readOnly, bool logDirtyPages)
    {
        slots[slot] = new KvmMemorySlot(slot, guestPhysicalAddress, size, hostAddress, readOnly, logDirtyPages);
        if (logDirtyPages)
        {
            // One bit a page, in 64-bit words (KVM copies ALIGN(npages, BITS_PER_LONG) / 8 bytes). Made once per slot
            // and reused, so that reading the log allocates nothing.
            long words = (long)((size / 4096 + 63) / 64);
            if (!dirtyBitmaps.TryGetValue(slot, out var existing) || existing.Length != words)
            {
                dirtyBitmaps[slot] = new ulong[words];
            }
        }
    }

    /// <summary>The bitmap of the pages of <paramref name="slot"/> written since the previous call (or since logging
    /// started): bit <c>n % 64</c> of word <c>n / 64</c> is the slot's page n (KVM_GET_DIRTY_LOG). Without manual
    /// protect the read also clears the log and write-protects those pages again. The span is a buffer of the slot's
    /// that the next call for the same slot overwrites.</summary>
    /// <exception cref="InvalidOperationException">The slot does not log dirty pages.</exception>
    public unsafe ReadOnlySpan<ulong> GetDirtyLog(uint slot)
    {
        if (!slots.TryGetValue(slot, out var s) || !s.LogDirtyPages || !dirtyBitmaps.TryGetValue(slot, out var bitmap))
        {
            throw new InvalidOperationException($"memory slot {slot} does not log dirty pages: make it with logDirtyPages: true first");
        }
        fixed (ulong* bits = bitmap)
        {
            // struct kvm_dirty_log: u32 slot, u32 padding, then the bitmap's address.
            ulong* log = stackalloc ulong[2];
            log[0] = slot;
            log[1] = (ulong)bits;
            vm.Call(Ioctl.GetDirtyLog, log, "KVM_GET_DIRTY_LOG");
        }
        return bitmap;
    }

    /// <summary>Enables KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with manual protect only (api.rst §7.18): KVM_GET_DIRTY_LOG
    /// then only reads the log, and <see cref="ClearDirtyLog"/> re-protects the pages, so that a migration can send
    /// a page before the guest is made to fault on it again (QEMU does this in chunks to shorten the time the VM
    /// runs with its pages write-protected).</summary>
    /// <exception cref="KvmException">The host does not offer it.</exception>
    public unsafe void EnableManualDirtyLogProtect()
    {
        // struct kvm_enable_cap: u32 cap, u32 flags, u64 args[4], u8 pad[64].
        var cap = stackalloc byte[104];
        new Span<byte>(cap, 104).Clear();
        *(uint*)cap = (uint)KvmCapability.ManualDirtyLogProtect2;
        *(ulong*)(cap + 8) = 1; // KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
        vm.Call(Ioctl.EnableCapability, cap, "KVM_ENABLE_CAP (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)");
        ManualDirtyLogProtect = true;
    }

    /// <summary>Clears the bits <paramref name="bitmap"/> sets in <paramref name="slot"/>'s log, for the whole slot,
    /// and write-protects those pages again (KVM_CLEAR_DIRTY_LOG, api.rst §4.117; with manual protect only).</summary>
    public unsafe void ClearDirtyLog(uint slot, ReadOnlySpan<ulong> bitmap)
    {
        if (!ManualDirtyLogProtect)
        {
            throw new InvalidOperationException("KVM_CLEAR_DIRTY_LOG needs manual protect: call EnableManualDirtyLogProtect first");
        }
        if (!slots.TryGetValue(slot, out var s) || !s.LogDirtyPages)
        {
            throw new InvalidOperationException($"memory slot {slot} does not log dirty pages");
        }
        ulong pages = s.Size / 4096;
        if ((ulong)bitmap.Length * 64 < pages)
        {
            throw new ArgumentException($"a bitmap of {bitmap.Length} words does not cover slot {slot}'s {pages} pages", nameof(bitmap));
        }
        fixed (ulong* bits = bitmap)
        {
            // struct kvm_clear_dirty_log: u32 slot, u32 num_pages, u64 first_page, then the bitmap's address. A range
            // that ends at the slot's end may have any length (§4.117); this one is the whole slot.
            ulong* clear = stackalloc ulong[3];
            clear[0] = slot | (pages << 32);
            clear[1] = 0;
            clear[2] = (ulong)bits;
            vm.Call(Ioctl.ClearDirtyLog, clear, "KVM_CLEAR_DIRTY_LOG");
        }
    }
}

/// <summary>One memory slot of a <see cref="KvmVm"/>.</summary>
/// <param name="Slot">Its number.</param>
/// <param name="GuestPhysicalAddress">Where it starts in guest-physical memory.</param>
/// <param name="Size">Its length in bytes.</param>
/// <param name="HostAddress">The host memory it maps.</param>
/// <param name="ReadOnly">Guest writes to it are MMIO exits.</param>
/// <param name="LogDirtyPages">Whether KVM logs writes to it.</param>
public sealed record KvmMemorySlot(uint Slot, ulong GuestPhysicalAddress, ulong Size, nint HostAddress, bool ReadOnly, bool LogDirtyPages)
{
    /// <summary>Its 4 KiB pages.</summary>
    public long Pages => (long)(Size / 4096);
}
