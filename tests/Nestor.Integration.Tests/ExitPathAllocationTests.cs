using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>The VM-exit path is a hot path: handling a port write must not allocate. Two runs that differ only in
/// the number of exits must allocate the same on the vCPU thread.</summary>
public class ExitPathAllocationTests
{
    private static long AllocatedFor(int writes)
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, writes);
            a.mov(dx, 0x3FF);
            a.Label(ref loop);
            a.@out(dx, al);
            a.sub(ecx, 1);
            a.jnz(loop);
            a.mov(dx, 0xF4);
            a.xor(eax, eax);
            a.@out(dx, eax);
        });
        using var vm = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("loop", code), MemoryBytes = 4 << 20 });
        var engine = new KvmEngine();
        long before = GC.GetAllocatedBytesForCurrentThread();
        var outcome = vm.Run(engine).Outcome;
        long after = GC.GetAllocatedBytesForCurrentThread();
        Assert.Equal(VmOutcomeKind.DebugExit, outcome.Kind);
        Assert.Equal(writes + 1, vm.Exits.Count(VmExitReason.PortWrite));
        return after - before;
    }

    [Fact]
    public void Port_write_exits_allocate_nothing()
    {
        NestorProcess.RequireKvm();
        AllocatedFor(100); // warm up: first-call paths
        long few = AllocatedFor(1_000);
        long many = AllocatedFor(21_000);
        double perExit = (many - few) / 20_000.0;
        Assert.True(perExit < 0.5, $"{perExit:0.00} bytes allocated per VM exit ({few} B for 1,000 exits, {many} B for 21,000)");
    }
}
