using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests;

/// <summary>Host frames shared copy-on-write and unmapped under a running guest: a small Iced-assembled guest on the
/// software machine's real CPU, MMU and TLBs, under nested paging and under shadow paging. The VMM's changes happen
/// in the middle of the run, from a port the guest writes, so that the guest's TLB entries for the pages exist and the
/// shootdown and shadow invalidation are what makes the guest see the change.</summary>
public class CopyOnWriteGuestTests
{
    private const ulong PageA = 0x40_0000, PageB = 0x40_1000;
    private const ushort SharePort = 0xE0, UnmapPort = 0xE1;
    private const ulong ValueA = 0x1111_AAAA, ValueB = 0x2222_BBBB, Written = 0x3333_CCCC;

    public static TheoryData<Technique, MemoryVirtualization, bool> Configurations => new()
    {
        { Technique.HardwareAssist, MemoryVirtualization.Nested, false },
        { Technique.HardwareAssist, MemoryVirtualization.Nested, true },
        { Technique.HardwareAssist, MemoryVirtualization.Shadow, false },
        { Technique.TrapAndEmulate, MemoryVirtualization.Shadow, false },
    };

    /// <summary>Reads A, writes B; port 0xE0 (the VMM shares A's frame with B); reads B into RCX, writes B, reads it
    /// into R11 and A into RSI; port 0xE1 (the VMM unmaps A); reads A into RDI; exits.</summary>
    private static byte[] Guest() => GuestAssembler.Assemble(a =>
    {
        a.mov(r8, PageA);
        a.mov(r9, PageB);
        a.mov(rax, __qword_ptr[r8]);
        a.mov(r10, ValueB);
        a.mov(__qword_ptr[r9], r10);
        a.mov(dx, SharePort);
        a.@out(dx, al);
        a.mov(rcx, __qword_ptr[r9]);
        a.mov(r10, Written);
        a.mov(__qword_ptr[r9], r10);
        a.mov(r11, __qword_ptr[r9]);
        a.mov(rsi, __qword_ptr[r8]);
        a.mov(dx, UnmapPort);
        a.@out(dx, al);
        a.mov(rdi, __qword_ptr[r8]);
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, 0);
        a.@out(dx, eax);
    });

    /// <summary>A port that runs the VMM's action when the guest writes it.</summary>
    private sealed class VmmPort(Action<ushort> action) : IPortDevice
    {
        public string Name => "vmm-test";
        public uint Read(ushort port, int size) => 0;
        public void Write(ushort port, int size, uint value) => action(port);
    }

    private static VmConfig Config(byte[] code) => new()
    {
        Kernel = GuestAssembler.Flat("cow", code),
        MemoryBytes = 32UL << 20,
        SerialOutput = Stream.Null,
        Timeout = TimeSpan.FromSeconds(60),
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public void A_guest_write_to_a_shared_frame_gets_a_private_copy_and_an_unmapped_frame_refaults(
        Technique technique, MemoryVirtualization memory, bool largeNestedPages)
    {
        using var vm = Vm.Create(Config(Guest()));
        vm.Memory.WriteUInt64(new(PageA), ValueA);
        var engine = new SimEngine(new SimOptions { Technique = technique, Memory = memory, LargeNestedPages = largeNestedPages });
        GuestPhysicalMap? map = null;
        ulong shared = 0;
        int referencesWhenShared = 0;
        long faultsAtUnmap = 0;
        bool mappedAfterUnmap = true, sharedFrameFreed = false;
        vm.Bus.Claim(new VmmPort(port =>
        {
            map = vm.Host.PhysicalMapOf(vm)!;
            if (port == SharePort)
            {
                shared = map.Share(PageA, map, PageB);
                referencesWhenShared = map.Pool.ReferenceCount(shared);
            }
            else
            {
                Assert.True(map.Unmap(PageA));
                mappedAfterUnmap = map.TryHostPhysical(PageA, out _);
                // The unmap dropped the last reference to the shared frame, which went back to the host.
                sharedFrameFreed = map.Pool.ReferenceCount(shared) == 0 && !map.Pool.IsStoreResident(shared);
                faultsAtUnmap = Faults(vm);
            }
        }), SharePort, 2);

        var outcome = vm.Run(engine).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        var state = outcome.FinalState!;
        Assert.Equal(ValueA, state.Rcx); // B reads A's bytes once they share a frame
        Assert.Equal(Written, state.R11); // B's write went to its private copy
        Assert.Equal(ValueA, state.Rsi); // A, the other sharer, still sees the old bytes
        Assert.Equal(ValueA, state.Rdi); // A unmapped, refaulted and remapped, with its bytes
        Assert.NotNull(map);
        Assert.Equal(2, referencesWhenShared);
        Assert.Equal(1, map.CopyOnWriteBreaks);
        Assert.True(map.TryHostPhysical(PageB, out ulong b));
        Assert.NotEqual(shared, b & ~0xFFFUL);
        Assert.Equal(Written, BitConverter.ToUInt64(map.PageContents(PageB)));
        Assert.Equal(Written, vm.Memory.ReadUInt64(new(PageB)));
        Assert.False(mappedAfterUnmap);
        Assert.True(map.TryHostPhysical(PageA, out _), "the refault mapped A again");
        Assert.True(Faults(vm) > faultsAtUnmap, "the access after the unmap faulted into the VMM");
        Assert.True(sharedFrameFreed, "the unmap freed the shared frame and gave its memory back");
    }

    /// <summary>Page faults that reached the VMM: EPT violations under nested paging, intercepted page faults under
    /// shadow paging, as the VMM counts its exits (readable while the guest runs).</summary>
    private static long Faults(Vm vm) =>
        vm.Exits.Count(Nestor.Hypervisor.Exits.VmExitReason.NestedPageFault) + vm.Exits.Count(Nestor.Hypervisor.Exits.VmExitReason.Exception);

    [Theory]
    [InlineData(MemoryVirtualization.Nested)]
    [InlineData(MemoryVirtualization.Shadow)]
    public void Two_vms_on_one_host_share_a_frame_and_a_write_by_one_leaves_the_other_unchanged(MemoryVirtualization memory)
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        var options = new SimOptions { Technique = Technique.HardwareAssist, Memory = memory };
        // The first VM writes a value into its page A and stops.
        using var one = Vm.Create(Config(GuestAssembler.Assemble(a =>
        {
            a.mov(r8, PageA);
            a.mov(r10, ValueA);
            a.mov(__qword_ptr[r8], r10);
            a.mov(dx, DebugExitPort.Port);
            a.mov(eax, 0);
            a.@out(dx, eax);
        })), host);
        Assert.Equal(VmOutcomeKind.DebugExit, one.Run(new SimEngine(options)).Outcome.Kind);
        var first = host.PhysicalMapOf(one)!;

        // The second reads its page B, has the VMM share A of the first with it, reads it again and writes it.
        using var two = Vm.Create(Config(GuestAssembler.Assemble(a =>
        {
            a.mov(r9, PageB);
            a.mov(rax, __qword_ptr[r9]);
            a.mov(dx, SharePort);
            a.@out(dx, al);
            a.mov(rcx, __qword_ptr[r9]);
            a.mov(r10, Written);
            a.mov(__qword_ptr[r9], r10);
            a.mov(rsi, __qword_ptr[r9]);
            a.mov(dx, DebugExitPort.Port);
            a.mov(eax, 0);
            a.@out(dx, eax);
        })), host);
        Assert.Same(one.Host.FramePool, two.Host.FramePool);
        IReadOnlyList<Memory.GuestFrameMapping> mappings = [];
        ulong shared = 0;
        two.Bus.Claim(new VmmPort(_ =>
        {
            var second = host.PhysicalMapOf(two)!;
            shared = first.Share(PageA, second, PageB);
            mappings = host.FramePool.MappingsOf(shared);
        }), SharePort, 1);

        var outcome = two.Run(new SimEngine(options)).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        Assert.Equal(ValueA, outcome.FinalState!.Rcx);
        Assert.Equal(Written, outcome.FinalState.Rsi);
        var second = host.PhysicalMapOf(two)!;
        Assert.Equal([new(first, PageA >> 12), new(second, PageB >> 12)], mappings.OrderBy(m => m.Map == first ? 0 : 1));
        Assert.Equal([new Memory.GuestFrameMapping(first, PageA >> 12)], host.FramePool.MappingsOf(shared));
        Assert.Equal(ValueA, BitConverter.ToUInt64(first.PageContents(PageA)));
        Assert.Equal(ValueA, one.Memory.ReadUInt64(new(PageA)));
        Assert.Equal(Written, two.Memory.ReadUInt64(new(PageB)));
    }

    [Fact]
    public void A_run_s_frames_and_tables_go_back_to_the_host_pool_when_its_engine_is_disposed()
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        using var vm = Vm.Create(Config(Guest()), host);
        using var own = Vm.Create(Config(Guest()));
        Assert.Equal([vm], host.Vms);
        Assert.Equal([own], own.Host.Vms); // Vm.Create(config) makes a private host
        vm.Bus.Claim(new VmmPort(_ => { }), SharePort, 2);
        var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
        var map = host.PhysicalMapOf(vm)!;
        Assert.True(map.TouchedPages > 0);
        Assert.Equal(map.TouchedPages, host.FramePool.GuestFrames);
        Assert.True(host.FramePool.TableFrames > 0);

        engine.Dispose();

        Assert.Null(host.PhysicalMapOf(vm));
        Assert.Equal(0, host.FramePool.GuestFrames);
        Assert.Equal(0, host.FramePool.TableFrames);
        Assert.Equal(Written, vm.Memory.ReadUInt64(new(PageB))); // the VM's RAM keeps what the guest wrote
        vm.Dispose();
        Assert.Empty(host.Vms);
    }
}
