using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Hypervisor.Techniques.TrapAndEmulate;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.Paravirtual;

/// <summary>Paravirtualization (Barham et al., "Xen and the Art of Virtualization", SOSP 2003): the guest kernel knows
/// it runs on a VMM (CPUID leaf 0x40000001) and asks it by hypercall for what it would do with privileged instructions:
/// page-table updates, CR3 loads, INVLPG, its virtual IF. Its kernel still runs in ring 1, so what it does not
/// paravirtualize traps and is emulated as under trap-and-emulate.</summary>
public sealed class ParavirtualTechnique(Vm vm, VmControlStructure vmcs, IMemoryVirtualization memory, GuestPhysicalMap physicalMap)
    : TrapAndEmulateTechnique(vmcs, memory)
{
    /// <summary>The result of a refused hypercall: -1 in RAX.</summary>
    public const ulong Refused = ulong.MaxValue;

    // The largest batch of MMU_UPDATE: one page table's worth of entries.
    private const ulong MaximumUpdates = 512;

    private ShadowPaging Shadow => Memory.Shadow ?? throw new InvalidOperationException("paravirtualization without shadow paging");

    /// <inheritdoc/>
    public override Technique Kind => Technique.Paravirtual;

    /// <summary>Hypercalls the guest made (refused ones too).</summary>
    public long Hypercalls { get; private set; }

    /// <summary>Hypercalls refused: an unknown number, or arguments outside guest RAM or too many.</summary>
    public long RefusedHypercalls { get; private set; }

    /// <summary>A VMCALL is a hypercall (the model's hypercall gate, which needs no control).</summary>
    protected override VmExitAction Other(Cpu cpu, ref VmExit exit, out VmExitReason? reason)
    {
        if (exit.Reason != ExitReason.Vmcall)
        {
            return base.Other(cpu, ref exit, out reason);
        }
        Hypercalls++;
        reason = VmExitReason.Hypercall;
        ulong result = Call(cpu, (Hypercall)cpu.Registers[0], cpu.Registers[7], cpu.Registers[6]);
        if (result == Refused)
        {
            RefusedHypercalls++;
        }
        cpu.Registers[0] = result;
        cpu.Rip += (ulong)exit.InstructionLength;
        return VmExitAction.Skip;
    }

    /// <summary>Carries out one hypercall with arguments <paramref name="a"/> (RDI) and <paramref name="b"/> (RSI); its
    /// result for RAX.</summary>
    private ulong Call(Cpu cpu, Hypercall number, ulong a, ulong b)
    {
        switch (number)
        {
            case Hypercall.MmuUpdate:
                {
                    if (b > MaximumUpdates || !physicalMap.IsRam(a) || !physicalMap.IsRam(a + b * 16 - 1))
                    {
                        return Refused;
                    }
                    var updates = new List<(ulong, ulong)>((int)b);
                    for (ulong k = 0; k < b; k++)
                    {
                        updates.Add((vm.Memory.ReadUInt64(new GuestPhysical(a + k * 16)), vm.Memory.ReadUInt64(new GuestPhysical(a + k * 16 + 8))));
                    }
                    return (ulong)Shadow.ApplyGuestWrites(cpu, updates);
                }
            case Hypercall.SetCr3:
                Shadow.SwitchAddressSpace(cpu, a);
                cpu.LoadCr3(a);
                return 0;
            case Hypercall.Invlpg:
                Shadow.Invalidate(a);
                cpu.Mmu.InvalidatePage(new Nestor.Machine.Addresses.GuestVirtual(a));
                return 0;
            case Hypercall.VcpuInfo:
                {
                    // The virtual CPU as the guest kernel would see it on bare metal (struct vcpu_info, docs/paravirt.md).
                    ulong[] info = [0, cpu.GdtLimit, cpu.GdtBase, cpu.IdtLimit, cpu.IdtBase, cpu.Ldtr.Selector, cpu.Tr.Selector, cpu.Cr0];
                    if (!physicalMap.IsRam(a) || !physicalMap.IsRam(a + 8 * 8 - 1))
                    {
                        return Refused;
                    }
                    for (int k = 0; k < info.Length; k++)
                    {
                        vm.Memory.WriteUInt64(new GuestPhysical(a + (ulong)k * 8), info[k]);
                    }
                    return 0;
                }
            case Hypercall.SetInterrupts:
                {
                    ulong previous = (cpu.Rflags >> 9) & 1;
                    cpu.Rflags = a != 0 ? cpu.Rflags | FlagBits.Interrupt : cpu.Rflags & ~FlagBits.Interrupt;
                    return previous;
                }
            case Hypercall.ReleaseTable:
                return Shadow.Release(cpu, a) ? 1UL : 0;
            case Hypercall.EventsPending:
                return InterruptPending ? 1UL : 0;
            default:
                return Refused; // -1: no such hypercall
        }
    }
}
