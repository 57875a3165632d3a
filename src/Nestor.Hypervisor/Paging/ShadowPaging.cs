using Nestor.Machine.Addresses;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Architecture;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Paging;

/// <summary>Shadow paging: the VMM's page tables that map guest-virtual addresses straight to host-physical ones, which
/// the hardware walks in place of the guest's (Adams &amp; Agesen, ASPLOS 2006, §2.4; the design of KVM's shadow MMU).
/// <list type="bullet">
/// <item>Shadows are filled lazily: a page fault the guest's own tables would not raise is a <i>hidden</i> fault — the
/// VMM walks the guest's tables in software (setting their accessed and dirty bits as the hardware would), builds the
/// missing shadow entries and resumes the guest, which never knows. A fault the guest's tables do raise is a <i>true</i>
/// fault, reflected into the guest with the guest's error code.</item>
/// <item>Every guest page that holds a shadowed guest page table is write-protected in the shadows; the guest's write to
/// one traps (a <i>trace</i> fault), the VMM emulates the writing instruction and then brings the shadow entries
/// derived from the changed guest entries up to date (it clears them; the next access refills them).</item>
/// <item>A guest page is mapped writable only once its guest dirty bit is set, so the first write to a clean page traps
/// and the VMM sets the guest's D bit.</item>
/// <item>A guest page written three times in a row without being used as a page table in between, and no longer
/// linked from any shadow entry, is taken to be one no more (the kernel freed it and reuses it as data): its shadows
/// are dropped and it is writable again — after KVM's "write flooding" heuristic. Otherwise reusing a page-table frame
/// as data would trap on every store.</item>
/// <item>CR3 loads switch to the shadow of the new guest top-level table (kept while write protection keeps it
/// coherent); INVLPG drops the shadow entry; CR0/CR4 writes that change paging drop all shadows.</item>
/// </list></summary>
public sealed class ShadowPaging
{
    private const ulong Present = 1, Writable = 1 << 1, User = 1 << 2, Accessed = 1 << 5, Dirty = 1 << 6, Global = 1 << 8,
        ExecuteDisable = 1UL << 63;
    private const ulong UpperEntryBits = Present | Writable | User | Accessed;
    private const TranslationRights AllRights = TranslationRights.Writable | TranslationRights.User | TranslationRights.Executable;

    private readonly GuestPhysicalMap physicalMap;
    private readonly HostFramePool pool;
    private readonly PhysicalMemory host;
    private readonly PageWalker guestWalker;
    private readonly Dictionary<ShadowKey, ShadowPageTable> tables = [];
    private readonly Dictionary<ulong, ShadowedFrame> byGuestFrame = [];
    private readonly Dictionary<ulong, List<(ShadowPageTable Table, int Index)>> leafMappings = [];
    private ShadowPageTable? root;

    public ShadowPaging(GuestPhysicalMap physicalMap, HostFramePool pool, GuestMemory guest)
    {
        this.physicalMap = physicalMap;
        this.pool = pool;
        host = pool.Memory;
        // The guest's tables are read through the P2M (guest-physical to host frame), not from the VM's RAM: a page
        // table shared copy-on-write or paged out by the host has its bytes elsewhere, and an accessed/dirty-bit
        // update is a write that breaks its sharing first (PageWalker, SDM Vol. 3C §29.3.3.2).
        guestWalker = new PageWalker(host, new PageWalkCache(0), SoftwareWalks, physicalMap.GuestTables);
    }

    /// <summary>The VM's devices: the pages of an assigned device's registers are mapped into the assigned window
    /// (reached without exits), other device pages into the device window.</summary>
    public Devices.DeviceBus? Devices { get; init; }

    /// <summary>The VMM's own walks of guest page tables (in software, on hidden and true faults).</summary>
    public MmuCounters SoftwareWalks { get; } = new();

    /// <summary>Page faults the VMM resolved by filling shadow entries, without the guest knowing.</summary>
    public long HiddenFaults { get; private set; }

    /// <summary>Page faults reflected into the guest.</summary>
    public long TrueFaults { get; private set; }

    /// <summary>Guest writes to its own page tables (trace faults), emulated.</summary>
    public long PageTableWrites { get; private set; }

    /// <summary>Page-table writes that came through a binary translator's callout instead of trapping.</summary>
    public long CalloutWrites { get; private set; }

    /// <summary>Other writes the VMM had to emulate (a supervisor write to a read-only page with CR0.WP = 0).</summary>
    public long OtherEmulatedWrites { get; private set; }

    /// <summary>Guest CR3 loads.</summary>
    public long AddressSpaceSwitches { get; private set; }

    /// <summary>Shadow tables built, and alive now.</summary>
    public long TablesCreated { get; private set; }
    public int TablesAlive => tables.Count;

    /// <summary>Guest pages no longer shadowed because they were written repeatedly without being used as page tables.</summary>
    public long Unshadowed { get; private set; }

    /// <summary>Times every shadow was dropped (paging controls changed, or the VMM ran short of table memory).</summary>
    public long Resets { get; private set; }

    /// <summary>Installs the shadow of the guest's current address space (VM entry, or after a reset).</summary>
    public void Activate(Cpu cpu)
    {
        RequirePagingOn(cpu.Cr0);
        root = TableFor(new ShadowKey(cpu.Cr3 & PageWalker.AddressMask, 0, AllRights, false));
        cpu.Mmu.SetShadowRoot(new HostPhysical(root.HostPhysical));
        cpu.Mmu.FlushAll(includingGlobal: true);
    }

    /// <summary>The host-physical root of the shadow of the guest top-level table at <paramref name="guestCr3"/>, if the
    /// VMM has one.</summary>
    public ulong? RootFor(ulong guestCr3) =>
        tables.TryGetValue(new ShadowKey(guestCr3 & PageWalker.AddressMask, 0, AllRights, false), out var table) ? table.HostPhysical : null;

    /// <summary>MOV to CR3 (the exit comes before the load): switch to the shadow of <paramref name="guestCr3"/>.</summary>
    public void SwitchAddressSpace(Cpu cpu, ulong guestCr3)
    {
        AddressSpaceSwitches++;
        root = TableFor(new ShadowKey(guestCr3 & PageWalker.AddressMask, 0, AllRights, false));
        cpu.Mmu.SetShadowRoot(new HostPhysical(root.HostPhysical));
        FlushIfWriteProtected(cpu);
    }

    /// <summary>MOV to CR0 or CR4 (before it happens): a change of what the paging structures mean drops every shadow.</summary>
    public void ControlRegisterWrite(Cpu cpu, int controlRegister, ulong value)
    {
        const ulong cr0Bits = Cr0.Paging | Cr0.WriteProtect;
        const ulong cr4Bits = Cr4.PageGlobalEnable | Cr4.SupervisorExecutionPrevention | Cr4.SupervisorAccessPrevention |
                              Cr4.ProcessContextIdentifiers;
        bool changes = controlRegister == 0 ? ((cpu.Cr0 ^ value) & cr0Bits) != 0 : ((cpu.Cr4 ^ value) & cr4Bits) != 0;
        if (controlRegister == 0)
        {
            RequirePagingOn(value);
        }
        if (changes)
        {
            Reset(cpu);
        }
    }

    /// <summary>INVLPG: the shadow entry for <paramref name="linear"/> in the current address space goes.</summary>
    public void Invalidate(ulong linear)
    {
        var table = root;
        for (int level = 0; table is not null; level++)
        {
            int index = (int)((linear >> (39 - 9 * level)) & 511);
            if (level == 3)
            {
                Clear(table, index);
                return;
            }
            table = table.Children[index];
        }
    }

    /// <summary>A page fault in the shadows (the exception bitmap sends #PF to the VMM): hidden, true, or a write the
    /// VMM must emulate.</summary>
    public VmExitAction PageFault(Cpu cpu, ref VmExit exit)
    {
        if (pool.FreeTableFrames < 64)
        {
            Reset(cpu); // out of table memory: start over, as KVM zaps all shadow pages when it runs out
        }
        ulong linear = exit.GuestLinear;
        var error = (PageFaultError)exit.ErrorCode;
        bool user = (error & PageFaultError.User) != 0;
        var resolution = Resolve(cpu, linear, KindOf(error), user, out var guestFault);
        FlushIfWriteProtected(cpu);
        switch (resolution)
        {
            case Resolution.GuestFault:
                return Reflect(ref exit, guestFault, linear);
            case Resolution.Filled:
                HiddenFaults++;
                return VmExitAction.Resume;
            default:
                return Emulate(cpu, ref exit, linear);
        }
    }

    /// <summary>A callout from translated code for an instruction that writes guest page tables (binary translation's
    /// adaptive step): the VMM checks the write against the guest's tables, performs it and updates the shadows, with
    /// no page fault and no trap. An instruction whose target is not a shadowed page table just runs.</summary>
    public VmExitAction WriteCallout(Cpu cpu, ref VmExit exit)
    {
        if (cpu.DestinationAddress() is not { } linear)
        {
            return VmExitAction.Complete;
        }
        bool user = cpu.PrivilegeLevel == 3;
        var resolution = Resolve(cpu, linear, AccessKind.Write, user, out var guestFault);
        FlushIfWriteProtected(cpu);
        switch (resolution)
        {
            case Resolution.GuestFault:
                return Reflect(ref exit, guestFault, linear);
            case Resolution.Filled:
                return VmExitAction.Complete;
            default:
                CalloutWrites++;
                exit.ErrorCode = (uint)(PageFaultError.Present | PageFaultError.Write | (user ? PageFaultError.User : 0));
                return Emulate(cpu, ref exit, linear, counted: true);
        }
    }

    /// <summary>Paravirtual page-table updates (a batched hypercall): the VMM writes each guest page-table entry
    /// itself — no write-protection trap — and clears the shadow entries derived from it, then flushes the TLB once.
    /// Returns how many it applied; an entry address outside guest RAM or not 8-byte aligned stops the batch there.</summary>
    public int ApplyGuestWrites(Cpu cpu, IReadOnlyList<(ulong EntryAddress, ulong Value)> updates)
    {
        int applied = 0;
        foreach (var (address, value) in updates)
        {
            if ((address & 7) != 0 || !physicalMap.IsRam(address))
            {
                break;
            }
            var page = physicalMap.GuestPage(address, write: true);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(page[(int)(address & 0xFFF)..], value);
            if (byGuestFrame.TryGetValue(address >> 12, out var shadowed))
            {
                foreach (var shadow in shadowed.Tables)
                {
                    Clear(shadow, (int)((address & 0xFFF) >> 3));
                }
            }
            applied++;
        }
        ParavirtualUpdates += applied;
        if (applied > 0)
        {
            cpu.Mmu.FlushAll(includingGlobal: true);
        }
        return applied;
    }

    /// <summary>A paravirtual guest says the page at <paramref name="guestPhysical"/> is no longer a page table (Xen's
    /// unpin): its shadows go and it is writable again, so that reusing it does not trap. False when it had no
    /// shadow, or is the top-level table in use.</summary>
    public bool Release(Cpu cpu, ulong guestPhysical)
    {
        ulong frame = guestPhysical >> 12;
        if (!byGuestFrame.TryGetValue(frame, out var shadowed) || shadowed.Tables.Contains(root!))
        {
            return false;
        }
        Unshadow(cpu, frame, shadowed);
        Released++;
        return true;
    }

    /// <summary>Pages a paravirtual guest released from page-table use.</summary>
    public long Released { get; private set; }

    /// <summary>Page-table entries written by paravirtual hypercalls.</summary>
    public long ParavirtualUpdates { get; private set; }

    private enum Resolution { Filled, GuestFault, EmulateWrite }

    /// <summary>The access a page fault's error code describes.</summary>
    private static AccessKind KindOf(PageFaultError error) =>
        (error & PageFaultError.Write) != 0 ? AccessKind.Write
        : (error & PageFaultError.InstructionFetch) != 0 ? AccessKind.Execute : AccessKind.Read;

    /// <summary>A true fault: the guest's own tables refuse the access, so the guest gets the page fault they give.</summary>
    private VmExitAction Reflect(ref VmExit exit, PageFaultError guestFault, ulong linear)
    {
        TrueFaults++;
        exit.Vector = ExceptionVector.PageFault;
        exit.ErrorCode = (uint)guestFault;
        exit.HasErrorCode = true;
        exit.GuestLinear = linear;
        return VmExitAction.Inject;
    }

    /// <summary>Walks the guest's tables for the access; fills the shadow path when they allow it.</summary>
    private Resolution Resolve(Cpu cpu, ulong linear, AccessKind kind, bool user, out PageFaultError guestFault)
    {
        var controls = cpu.Mmu.Controls;
        bool alignmentCheck = (cpu.Rflags & FlagBits.AlignmentCheck) != 0;
        guestFault = PageFaultError.None;
        if (guestWalker.Walk(new GuestVirtual(linear), kind, user, alignmentCheck, controls, out var walk) is { } fault)
        {
            guestFault = fault;
            return Resolution.GuestFault;
        }
        var steps = new List<WalkStep>(4);
        guestWalker.Walk(new GuestVirtual(linear), kind, user, alignmentCheck, controls, out _, steps);
        ulong guestPhysical = walk.PhysicalPage | (linear & ((1UL << walk.PageShift) - 1));
        bool protectedFrame = byGuestFrame.ContainsKey(guestPhysical >> 12);
        Fill(linear, steps, walk, guestPhysical, controls, kind == AccessKind.Write);
        // The guest may write here, but the shadow must stay read-only: a page of guest page tables, or a read-only page
        // that CR0.WP = 0 lets the kernel write.
        return kind == AccessKind.Write && (protectedFrame || (walk.Rights & TranslationRights.Writable) == 0)
            ? Resolution.EmulateWrite
            : Resolution.Filled;
    }

    /// <summary>Builds the shadow path for <paramref name="linear"/> from the guest entries the walk read.</summary>
    private void Fill(ulong linear, List<WalkStep> steps, in WalkResult walk, ulong guestPhysical, in PagingControls controls, bool write)
    {
        var table = root!;
        var rights = AllRights;
        int leafLevel = steps.Count - 1;
        for (int level = 0; level <= leafLevel; level++)
        {
            ulong entry = steps[level].Entry;
            rights = PageWalker.CombineRights(rights, entry, controls);
            int index = (int)((linear >> (39 - 9 * level)) & 511);
            if (level < leafLevel)
            {
                table = Link(table, index, new ShadowKey(entry & PageWalker.AddressMask, level + 1, rights, false));
                byGuestFrame[table.Key.GuestFrame >> 12].WritesSinceUse = 0; // used as a page table
            }
        }
        // A guest large page: split tables down to 4 KiB pieces.
        for (int level = leafLevel; level < 3; level++)
        {
            int index = (int)((linear >> (39 - 9 * level)) & 511);
            ulong rangeBase = guestPhysical & ~((1UL << (39 - 9 * level)) - 1);
            table = Link(table, index, new ShadowKey(rangeBase, level + 1, rights, true));
        }
        ulong page = guestPhysical & ~0xFFFUL;
        // A write to a shared (copy-on-write) frame gets the page a private copy first; a read leaves it shared.
        ulong hostPage = physicalMap.IsRam(page) ? physicalMap.Touch(page, write) : Nestor.Hypervisor.Devices.Assigned.DeviceMapping.HostPhysical(Devices, page);
        ulong leaf = hostPage | Present | Accessed;
        leaf |= (rights & TranslationRights.User) != 0 ? User : 0;
        leaf |= controls.NoExecute && (rights & TranslationRights.Executable) == 0 ? ExecuteDisable : 0;
        leaf |= (walk.Rights & TranslationRights.Global) != 0 ? Global : 0;
        if ((rights & TranslationRights.Writable) != 0 && (walk.Rights & TranslationRights.Dirty) != 0 && !byGuestFrame.ContainsKey(page >> 12) &&
            !physicalMap.IsWriteProtected(page))
        {
            leaf |= Writable | Dirty;
        }
        SetLeaf(table, (int)((linear >> 12) & 511), leaf, page >> 12);
    }

    /// <summary>Emulates the faulting write with the interpreter, the write-protected page made writable for that one
    /// instruction; then updates the shadows of a guest page table it changed.</summary>
    private VmExitAction Emulate(Cpu cpu, ref VmExit exit, ulong linear, bool counted = false)
    {
        var controls = cpu.Mmu.Controls;
        guestWalker.Walk(new GuestVirtual(linear), AccessKind.Write, (exit.ErrorCode & (uint)PageFaultError.User) != 0, false, controls, out var walk, []);
        ulong guestPage = walk.PhysicalPage + (linear & ((1UL << walk.PageShift) - 1) & ~0xFFFUL);
        ulong frame = guestPage >> 12;
        byte[]? before = byGuestFrame.ContainsKey(frame) ? physicalMap.GuestPage(guestPage, write: false).ToArray() : null;
        // A callout's write is counted by the caller.
        if (!counted && before is not null)
        {
            PageTableWrites++;
        }
        else if (!counted)
        {
            OtherEmulatedWrites++;
        }
        ulong hostPage = physicalMap.Touch(guestPage, write: true);
        for (int attempt = 0; ; attempt++)
        {
            if (cpu.EmulateWithWriteAccess(linear, hostPage) is not { } raised)
            {
                break;
            }
            // The instruction needs another page: a hidden fault to fill, or the guest's own fault.
            if (attempt == 8)
            {
                throw new ShadowPagingException($"the instruction at rip=0x{cpu.Rip:x} writes guest page tables on more than one page, " +
                    "which this VMM's write emulation does not handle");
            }
            if (raised.Vector != ExceptionVector.PageFault)
            {
                exit.Vector = raised.Vector;
                exit.ErrorCode = raised.ErrorCode;
                exit.HasErrorCode = raised.HasErrorCode;
                exit.GuestLinear = raised.FaultAddress;
                return VmExitAction.Inject;
            }
            var error = (PageFaultError)raised.ErrorCode;
            var resolution = Resolve(cpu, raised.FaultAddress, KindOf(error), (error & PageFaultError.User) != 0, out var guestFault);
            FlushIfWriteProtected(cpu);
            if (resolution == Resolution.GuestFault)
            {
                return Reflect(ref exit, guestFault, raised.FaultAddress);
            }
        }
        if (before is not null && byGuestFrame.TryGetValue(frame, out var shadowed))
        {
            Synchronize(cpu, frame, before);
            // Unshadow only a page no shadow entry points at any more (the guest unlinked it: freed, and now being
            // reused): a page table still linked is in use even when only the TLB's hits use it, which the VMM
            // cannot see, and dropping it would only make the next access fault it back in.
            if (++shadowed.WritesSinceUse >= FloodThreshold && !shadowed.Tables.Contains(root!) &&
                shadowed.Tables.TrueForAll(t => t.Parents.Count == 0))
            {
                Unshadow(cpu, frame, shadowed);
            }
        }
        return VmExitAction.Skip;
    }

    /// <summary>After the guest changed entries of its page table at <paramref name="frame"/>: clear the shadow entries
    /// derived from them in every shadow of that table (they refill on the next access), and flush the TLB.</summary>
    private void Synchronize(Cpu cpu, ulong frame, byte[] before)
    {
        var after = physicalMap.GuestPage(frame << 12, write: false);
        bool changed = false;
        for (int i = 0; i < 512; i++)
        {
            if (BitConverter.ToUInt64(before, i * 8) == BitConverter.ToUInt64(after.Slice(i * 8, 8)))
            {
                continue;
            }
            changed = true;
            if (byGuestFrame.TryGetValue(frame, out var shadowed))
            {
                foreach (var shadow in shadowed.Tables)
                {
                    Clear(shadow, i);
                }
            }
        }
        if (changed)
        {
            cpu.Mmu.FlushAll(includingGlobal: true);
        }
        if (VerifyAfterEachChange)
        {
            VerificationProblems.AddRange(Verify(cpu.Mmu.Controls));
        }
    }

    /// <summary>For tests: check every shadow against the guest's tables after each emulated page-table write.</summary>
    public bool VerifyAfterEachChange { get; set; }

    /// <summary>What those checks found (empty while the shadows are coherent).</summary>
    public List<string> VerificationProblems { get; } = [];

    /// <summary>Checks every shadow table reachable from a shadowed top-level table against the guest's own tables
    /// under <paramref name="controls"/>: each present shadow leaf must map the host frame behind the guest-physical page
    /// the guest's tables give for its address, and grant no right they (and the guest's dirty bit, and write
    /// protection) do not. Returns what disagrees; nothing is changed.</summary>
    public IReadOnlyList<string> Verify(in PagingControls controls)
    {
        var problems = new List<string>();
        var walker = new PageWalker(host, new PageWalkCache(0), new MmuCounters(), physicalMap.GuestTables);
        foreach (var top in tables.Values.Where(t => t.Key.Level == 0).ToArray())
        {
            VerifyTable(walker, top, 0, 0, controls with { Cr3 = top.Key.GuestFrame }, problems);
        }
        return problems;
    }

    private void VerifyTable(PageWalker walker, ShadowPageTable table, int level, ulong prefix, in PagingControls guest, List<string> problems)
    {
        for (int i = 0; i < 512; i++)
        {
            ulong entry = host.ReadUInt64(table.HostPhysical + (ulong)i * 8);
            if ((entry & Present) == 0)
            {
                continue;
            }
            ulong linear = prefix | ((ulong)i << (39 - 9 * level));
            if (level == 0 && i >= 256)
            {
                linear |= 0xFFFF_0000_0000_0000; // canonical upper half
            }
            if (level < 3)
            {
                var child = table.Children[i];
                if (child is null || (entry & PageWalker.AddressMask) != child.HostPhysical)
                {
                    problems.Add($"0x{linear:x} (level {level}): a shadow entry points at no shadow table the VMM knows");
                    continue;
                }
                VerifyTable(walker, child, level + 1, linear, guest, problems);
                continue;
            }
            bool user = (entry & User) != 0;
            if (walker.Walk(new GuestVirtual(linear), AccessKind.Read, user, false, guest, out var walk, []) is { } fault)
            {
                problems.Add($"0x{linear:x}: the shadow maps it but the guest's tables fault ({fault}) under CR3 0x{guest.Cr3:x}");
                continue;
            }
            ulong guestPhysical = walk.PhysicalPage | (linear & ((1UL << walk.PageShift) - 1));
            ulong expected = physicalMap.TryHostPhysical(guestPhysical, out ulong h) ? h & ~0xFFFUL : Nestor.Hypervisor.Devices.Assigned.DeviceMapping.HostPhysical(Devices, guestPhysical & ~0xFFFUL);
            if ((entry & PageWalker.AddressMask) != expected)
            {
                problems.Add($"0x{linear:x}: shadow maps host 0x{entry & PageWalker.AddressMask:x}, the guest's tables give guest 0x{guestPhysical:x} = host 0x{expected:x}");
            }
            if ((entry & Writable) != 0 && ((walk.Rights & TranslationRights.Writable) == 0 || (walk.Rights & TranslationRights.Dirty) == 0 ||
                byGuestFrame.ContainsKey(guestPhysical >> 12)))
            {
                problems.Add($"0x{linear:x}: writable in the shadow but not writable, not dirty or a page table in the guest");
            }
            if (guest.NoExecute && (entry & ExecuteDisable) == 0 && (walk.Rights & TranslationRights.Executable) == 0)
            {
                problems.Add($"0x{linear:x}: executable in the shadow but not in the guest");
            }
        }
    }

    private const int FloodThreshold = 3;

    /// <summary>The guest page at <paramref name="frame"/> is a page table no more: drop its shadows (unlinking them
    /// from every shadow entry that pointed at them) so that writing it no longer traps.</summary>
    private void Unshadow(Cpu cpu, ulong frame, ShadowedFrame shadowed)
    {
        Unshadowed++;
        foreach (var table in shadowed.Tables)
        {
            foreach (var (parent, index) in table.Parents.ToArray())
            {
                Clear(parent, index);
            }
            for (int i = 0; i < 512; i++)
            {
                Clear(table, i);
            }
            tables.Remove(table.Key);
            pool.FreeTable(table.HostPhysical);
        }
        byGuestFrame.Remove(frame);
        cpu.Mmu.FlushAll(includingGlobal: true);
    }

    /// <summary>The P2M changed the host frame behind guest frame <paramref name="guestFrame"/> (unmapped, remapped,
    /// shared or given a private copy): every shadow leaf mapping it goes, and refills from the P2M on the next access.
    /// The caller flushes the TLB before the guest runs again.</summary>
    public void BackingChanged(ulong guestFrame)
    {
        if (leafMappings.TryGetValue(guestFrame, out var mappings))
        {
            foreach (var (table, index) in mappings.ToArray())
            {
                Clear(table, index);
            }
        }
    }

    /// <summary>Gives every shadow table back to the host pool (the VM's run is over).</summary>
    internal void ReleaseTables()
    {
        foreach (var table in tables.Values)
        {
            pool.FreeTable(table.HostPhysical);
        }
        tables.Clear();
        byGuestFrame.Clear();
        leafMappings.Clear();
        root = null;
    }

    /// <summary>Drops every shadow table and starts again from the current CR3.</summary>
    public void Reset(Cpu cpu)
    {
        Resets++;
        ReleaseTables();
        Activate(cpu);
    }

    private ShadowPageTable TableFor(ShadowKey key)
    {
        if (tables.TryGetValue(key, out var table))
        {
            return table;
        }
        table = new ShadowPageTable(key, pool.AllocateTable());
        tables[key] = table;
        TablesCreated++;
        if (!key.Split)
        {
            if (!byGuestFrame.TryGetValue(key.GuestFrame >> 12, out var shadowed))
            {
                byGuestFrame[key.GuestFrame >> 12] = shadowed = new ShadowedFrame();
                WriteProtect(key.GuestFrame >> 12);
            }
            shadowed.Tables.Add(table);
        }
        return table;
    }

    /// <summary>A guest page became a shadowed page table: every shadow mapping of it loses write access.</summary>
    private void WriteProtect(ulong frame)
    {
        if (!leafMappings.TryGetValue(frame, out var mappings))
        {
            return;
        }
        foreach (var (table, index) in mappings)
        {
            ulong address = table.HostPhysical + (ulong)index * 8;
            host.WriteUInt64(address, host.ReadUInt64(address) & ~Writable);
        }
        writeProtectionChanged = true;
    }

    // Set when write protection took write access away from shadow entries the TLB may hold: flushed before the
    // guest runs again.
    private bool writeProtectionChanged;

    private void FlushIfWriteProtected(Cpu cpu)
    {
        if (writeProtectionChanged)
        {
            writeProtectionChanged = false;
            cpu.Mmu.FlushAll(includingGlobal: true);
        }
    }

    /// <summary>Points entry <paramref name="index"/> of <paramref name="parent"/> at the shadow for <paramref name="key"/>.</summary>
    private ShadowPageTable Link(ShadowPageTable parent, int index, ShadowKey key)
    {
        var current = parent.Children[index];
        if (current is not null && current.Key == key)
        {
            return current;
        }
        var child = TableFor(key);
        if (current is not null)
        {
            current.Parents.Remove((parent, index));
        }
        parent.Children[index] = child;
        child.Parents.Add((parent, index));
        host.WriteUInt64(parent.HostPhysical + (ulong)index * 8, child.HostPhysical | UpperEntryBits);
        return child;
    }

    private void SetLeaf(ShadowPageTable table, int index, ulong entry, ulong frame)
    {
        ulong previous = table.LeafFrames[index];
        if (previous != frame + 1)
        {
            if (previous != 0)
            {
                leafMappings[previous - 1].Remove((table, index));
            }
            if (!leafMappings.TryGetValue(frame, out var list))
            {
                leafMappings[frame] = list = [];
            }
            list.Add((table, index));
            table.LeafFrames[index] = frame + 1;
        }
        host.WriteUInt64(table.HostPhysical + (ulong)index * 8, entry);
    }

    /// <summary>Clears one shadow entry: a link to a lower shadow table, or a leaf.</summary>
    private void Clear(ShadowPageTable table, int index)
    {
        if (table.Key.Level < 3)
        {
            if (table.Children[index] is { } child)
            {
                child.Parents.Remove((table, index));
                table.Children[index] = null;
            }
        }
        else if (table.LeafFrames[index] != 0)
        {
            leafMappings[table.LeafFrames[index] - 1].Remove((table, index));
            table.LeafFrames[index] = 0;
        }
        host.WriteUInt64(table.HostPhysical + (ulong)index * 8, 0);
    }

    private static void RequirePagingOn(ulong cr0)
    {
        if ((cr0 & Cr0.Paging) == 0)
        {
            throw new ShadowPagingException("the guest runs with paging off, which this shadow-paging VMM does not virtualize " +
                "(a VT-x VMM without unrestricted guest would need an identity-mapped shadow): boot it by the Nestor boot protocol, " +
                "or use --technique hw --mmu nested");
        }
    }
}

/// <summary>A guest page that holds guest page tables: its shadows, and how often it was written since it was last
/// used as a page table.</summary>
internal sealed class ShadowedFrame
{
    public List<ShadowPageTable> Tables { get; } = [];
    public int WritesSinceUse { get; set; }
}

/// <summary>The shadow-paging VMM met a guest state it cannot virtualize.</summary>
public sealed class ShadowPagingException(string message) : Exception(message);
