using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Smp;

/// <summary>A multiprocessor guest, as an SMP kernel starts its processors (Intel SDM Vol. 3A §8.4.4, "MP
/// initialization example"): the BSP builds an IDT, enables its APIC and sends INIT, SIPI, SIPI (vector 8) to all
/// excluding self; each AP runs the real-mode trampoline at 0x8000 (LGDT, CR0.PE, far JMP to 32-bit code, PAE, the
/// BSP's CR3, EFER.LME, paging, far JMP to 64-bit code), takes a stack by its APIC ID, loads the BSP's IDT, enables its
/// APIC, adds 1 to a shared counter with LOCK XADD, sends the BSP an IPI (vector 0x40) and idles in STI; HLT. The
/// BSP waits for every AP's increment and IPI, then broadcasts vector 0x41 to all excluding self (each AP counts it),
/// sends itself vector 0x42, and exits with status 0.
/// Before that exit comes a change of mapping seen by every vCPU: each AP reads the probe page (<see cref="Probe"/>)
/// after counting itself, so that its TLB holds the page's translation; the BSP then writes <see cref="RemapPort"/>
/// (where a test may install a device that changes what the VMM maps behind the probe page, <see cref="RemapDevice"/>),
/// sets a go flag, and each AP reads the probe page again into its slot of <see cref="ProbeAfter"/> and counts itself
/// done; the BSP waits for all of them.</summary>
internal static class SmpGuest
{
    /// <summary>Where the guest keeps its counters (a page of the free boot-data area).</summary>
    public const ulong Started = 0x5000, IpisToBsp = 0x5008, Broadcasts = 0x5010, SelfIpis = 0x5018, StartOrder = 0x5100;

    /// <summary>The probe phase: the go flag, the count of APs done, the value each AP read from the probe page before
    /// and after the BSP's remap request (by APIC ID, 8 bytes each), the probe page and the page whose frame a
    /// <see cref="RemapDevice"/> maps behind it, their first quadwords, and the port of the request.</summary>
    public const ulong Go = 0x5020, Done = 0x5028, ProbeBefore = 0x5200, ProbeAfter = 0x5300, Probe = 0x6000, Replacement = 0x7000;

    /// <inheritdoc cref="Go"/>
    public const ulong ProbeValue = 0x1111_1111_1111_1111, ReplacementValue = 0x2222_2222_2222_2222;

    /// <inheritdoc cref="Go"/>
    public const ushort RemapPort = 0xE8;

    private const ulong IdtPointer = 0x8F00 + 0xE0; // in the trampoline's data page, below its slots
    private const ulong Idt = 0x9000;
    private const uint Apic = 0xFEE0_0000;

    public static VmConfig Config(int cpus, bool deterministic = false, Techniques.SimOptions? sim = null, TimeSpan? timeout = null, GuestClock? clock = null) => new()
    {
        Clock = clock,
        Sim = sim ?? new Techniques.SimOptions(),
        Kernel = GuestAssembler.Flat("smp", Kernel(cpus, out _)),
        MemoryBytes = 32UL << 20,
        Cpus = cpus,
        Deterministic = deterministic,
        SerialOutput = Stream.Null,
        Timeout = timeout ?? TimeSpan.FromSeconds(60),
    };

    /// <summary>Writes the trampoline, its GDT and the slots the BSP's code reads into <paramref name="vm"/>'s RAM (as a
    /// boot loader places an SMP kernel's low-memory trampoline).</summary>
    public static void Install(Vm vm)
    {
        Kernel(vm.Vcpus.Count, out ulong apEntry);
        vm.Memory.Write(new(ApTrampoline.Trampoline), ApTrampoline.LowMemory());
        vm.Memory.WriteUInt64(new(ApTrampoline.Cr3Slot), vm.InitialState.Cr3);
        vm.Memory.WriteUInt64(new(ApTrampoline.EntrySlot), apEntry);
        vm.Memory.WriteUInt64(new(Probe), ProbeValue);
        vm.Memory.WriteUInt64(new(Replacement), ReplacementValue);
    }

    /// <summary>The VMM's change of mapping on the BSP's request: the probe page is backed by the replacement page's host
    /// frame from then on (<see cref="Paging.GuestPhysicalMap.Remap(Machine.Addresses.GuestPhysical, Machine.Addresses.HostPhysical)"/>,
    /// which unmaps the nested entry and shoots down every vCPU's cached translations of it).</summary>
    public sealed class RemapDevice(Vm vm) : IPortDevice
    {
        /// <summary>Remap requests served.</summary>
        public int Remaps { get; private set; }

        /// <inheritdoc/>
        public string Name => "remap";

        /// <inheritdoc/>
        public uint Read(ushort port, int size) => 0;

        /// <inheritdoc/>
        public void Write(ushort port, int size, uint value)
        {
            var map = vm.Host.PhysicalMapOf(vm) ?? throw new InvalidOperationException("the VM runs without a VMM: there is no P2M to change");
            map.Remap(new Machine.Addresses.GuestPhysical(Probe), map.Touch(new Machine.Addresses.GuestPhysical(Replacement)));
            Remaps++;
        }
    }

    /// <summary>The kernel (BSP code, the APs' 64-bit code and the handlers); <paramref name="apEntry"/> is where
    /// the trampoline's 64-bit code jumps.</summary>
    private static byte[] Kernel(int cpus, out ulong apEntry)
    {
        // BSP and APs enter at the kernel's first byte; IA32_APIC_BASE.BSP (bit 8) tells them apart.
        ulong entry = Nestor.Hypervisor.Memory.GuestMemoryLayout.DefaultFlatLoadAddress.Value;
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var ap = a.CreateLabel();
            var toBsp = a.CreateLabel();
            var broadcast = a.CreateLabel();
            var self = a.CreateLabel();
            a.mov(ecx, 0x1B);
            a.rdmsr();
            a.test(eax, 0x100);
            a.jz(ap);
            // The IDT: three interrupt gates, selector 8.
            void Gate(int vector, Label handler)
            {
                ulong gate = Idt + (ulong)vector * 16;
                a.lea(rax, __[handler]);
                a.mov(__word_ptr[(long)gate], ax);
                a.mov(__word_ptr[(long)gate + 2], 8);
                a.mov(__word_ptr[(long)gate + 4], 0x8E00);
                a.shr(rax, 16);
                a.mov(__word_ptr[(long)gate + 6], ax);
                a.mov(__dword_ptr[(long)gate + 8], 0);
            }
            Gate(0x40, toBsp);
            Gate(0x41, broadcast);
            Gate(0x42, self);
            a.mov(__word_ptr[(long)IdtPointer], 0xFFF);
            a.mov(__qword_ptr[(long)IdtPointer + 2], (int)Idt);
            a.lidt(__[(long)IdtPointer]);
            a.mov(eax, Apic + 0xF0);
            a.mov(__dword_ptr[rax], 0x1FF);
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x000C_4500);          // INIT, all excluding self
            a.mov(__dword_ptr[rax], 0x000C_4608);          // start-up, vector 8 (0x8000)
            a.mov(__dword_ptr[rax], 0x000C_4608);          // the second SIPI (§8.4.4.1)
            a.sti();
            var waitStarted = a.CreateLabel();
            a.Label(ref waitStarted);
            a.pause();
            a.cmp(__qword_ptr[(long)Started], cpus - 1);
            a.jne(waitStarted);
            var waitIpis = a.CreateLabel();
            a.Label(ref waitIpis);
            a.cmp(__qword_ptr[(long)IpisToBsp], cpus - 1);
            a.jne(waitIpis);
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x000C_4041);          // fixed 0x41, all excluding self
            var waitBroadcast = a.CreateLabel();
            a.Label(ref waitBroadcast);
            a.cmp(__qword_ptr[(long)Broadcasts], cpus - 1);
            a.jne(waitBroadcast);
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x0004_4042);          // fixed 0x42, self
            var waitSelf = a.CreateLabel();
            a.Label(ref waitSelf);
            a.cmp(__qword_ptr[(long)SelfIpis], 1);
            a.jne(waitSelf);
            a.mov(dx, RemapPort);
            a.@out(dx, al);                                // the VMM may change the probe page's mapping now
            a.mov(__qword_ptr[(long)Go], 1);
            var waitDone = a.CreateLabel();
            a.Label(ref waitDone);
            a.pause();
            a.cmp(__qword_ptr[(long)Done], cpus - 1);
            a.jne(waitDone);
            a.mov(dx, DebugExitPort.Port);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.hlt();

            // The APs, in 64-bit mode from the trampoline: a stack by APIC ID, the IDT, the APIC, the count, the IPI.
            a.Label(ref ap);
            a.mov(eax, Apic + 0x20);
            a.mov(ebx, __dword_ptr[rax]);
            a.shr(ebx, 24);
            a.mov(eax, ebx);
            a.shl(eax, 12);
            a.add(eax, 0x20_1000);
            a.mov(rsp, rax);
            a.lidt(__[(long)IdtPointer]);
            a.mov(eax, Apic + 0xF0);
            a.mov(__dword_ptr[rax], 0x1FF);
            a.mov(eax, 1);
            a.@lock.xadd(__qword_ptr[(long)Started], rax);  // RAX: how many started before this one
            a.mov(__byte_ptr[rax + (long)StartOrder], bl);   // who came in which place
            a.mov(rcx, __qword_ptr[(long)Probe]);           // the probe page's translation is now in this AP's TLB
            a.mov(__qword_ptr[rbx * 8 + (long)ProbeBefore], rcx);
            // One IRR bit per vector (SDM Vol. 3A §10.8.4): IPIs of one vector sent before the BSP took the first would
            // merge, so each AP waits for the IPIs of those before it to be taken.
            var myTurn = a.CreateLabel();
            a.Label(ref myTurn);
            a.pause();
            a.cmp(__qword_ptr[(long)IpisToBsp], rax);
            a.jne(myTurn);
            a.mov(eax, Apic + 0x310);
            a.mov(__dword_ptr[rax], 0);                    // to APIC 0
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x0000_4040);          // fixed 0x40
            a.sti();                                       // the broadcast comes while the AP waits to go
            var waitGo = a.CreateLabel();
            a.Label(ref waitGo);
            a.pause();
            a.cmp(__qword_ptr[(long)Go], 0);
            a.je(waitGo);
            a.mov(rcx, __qword_ptr[(long)Probe]);
            a.mov(__qword_ptr[rbx * 8 + (long)ProbeAfter], rcx);
            a.@lock.inc(__qword_ptr[(long)Done]);
            var idle = a.CreateLabel();
            a.Label(ref idle);
            a.sti();
            a.hlt();
            a.jmp(idle);

            void Counting(Label handler, ulong counter)
            {
                a.Label(ref handler);
                a.push(rax);
                a.@lock.inc(__qword_ptr[(long)counter]);
                a.mov(eax, Apic + 0xB0);
                a.mov(__dword_ptr[rax], 0);                // EOI
                a.pop(rax);
                a.iretq();
            }
            Counting(toBsp, IpisToBsp);
            Counting(broadcast, Broadcasts);
            Counting(self, SelfIpis);
        });
        apEntry = entry;
        return code;
    }
}
