using Iced.Intel;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Hosting;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Virtio;

/// <summary>One element of a descriptor chain a test guest builds: guest-physical address, length, device-writable.</summary>
internal readonly record struct Element(ulong Address, uint Length, bool Writable);

/// <summary>Emits a ring-0 virtio-mmio driver into an Iced-assembled test guest, written from the spec as NestorOS's
/// is: the §3.1 initialization, one split virtqueue (§2.7) set up in guest memory by the guest itself, chains made
/// available with direct or indirect descriptors, a notify, then waiting for the used ring by polling or by the
/// interrupt through the I/O APIC (an IDT handler that reads InterruptStatus, acknowledges it and sends EOI). It
/// counts the MMIO accesses it emits, so that a test computes the exits it expects from what the guest did.
/// Registers: r15 = results, r12 = the device's registers, rbx = local APIC, rsi = I/O APIC.</summary>
internal sealed class VirtioGuest
{
    public const ulong Idt = 0x190000, Results = 0x191000, Scratch = 0x192000;
    public const ulong Descriptors = 0x200000, Available = 0x201000, Used = 0x202000, IndirectTables = 0x203000,
        Headers = 0x204000, Statuses = 0x205000, Data = 0x210000;
    public const ushort MarkPort = 0xE0;
    public const int Vector = 0x50;

    // Result slots (8 bytes each at Results).
    public const int Magic = 0, Version = 1, DeviceId = 2, FeaturesLow = 3, FeaturesHigh = 4, StatusAfterFeatures = 5,
        QueueSizeMax = 6, QueueReady = 7, ConfigLow = 8, ConfigHigh = 9, HandlerCount = 10, LastInterruptStatus = 11,
        FinalStatus = 12, FinalInterruptStatus = 13, First = 14, Second = 15, PollsLeft = 16;

    /// <summary>MMIO accesses the interrupt handler makes each time it runs (InterruptStatus, InterruptACK).</summary>
    public const int HandlerMmioAccesses = 2;

    private readonly Assembler a;
    private readonly ulong registers;
    private readonly ushort queueSize;
    private ushort availableIndex, usedIndex;
    private bool eventIndex, interrupts;

    public VirtioGuest(Assembler assembler, int slot, ushort queueSize)
    {
        a = assembler;
        registers = VirtioSlots.BaseOf(slot);
        this.queueSize = queueSize;
        Gsi = VirtioSlots.FirstGsi + slot;
    }

    /// <summary>The device's interrupt line.</summary>
    public int Gsi { get; }

    /// <summary>MMIO accesses emitted in straight-line code so far (the handler's not included).</summary>
    public int MmioAccesses { get; private set; }

    public void WriteRegister(int offset, uint value)
    {
        a.mov(__dword_ptr[r12 + offset], value);
        MmioAccesses++;
    }

    public void ReadRegister(int offset, int slot)
    {
        a.mov(eax, __dword_ptr[r12 + offset]);
        a.mov(__qword_ptr[r15 + slot * 8], rax);
        MmioAccesses++;
    }

    /// <summary>Registers, and with <paramref name="withInterrupts"/> the IDT gate, the masked 8259s, the local APIC
    /// and the I/O APIC entry (level-triggered) for the device's line.</summary>
    public void Prologue(bool withInterrupts)
    {
        interrupts = withInterrupts;
        var handler = a.CreateLabel();
        var start = a.CreateLabel();
        a.jmp(start);
        a.Label(ref handler);
        a.push(rax);
        a.mov(eax, __dword_ptr[r12 + 0x60]);                   // InterruptStatus
        a.mov(__dword_ptr[r12 + 0x64], eax);                   // InterruptACK: the line goes down
        a.mov(__qword_ptr[r15 + LastInterruptStatus * 8], rax);
        a.inc(__qword_ptr[r15 + HandlerCount * 8]);
        a.mov(__dword_ptr[rbx + 0xB0], 0);                     // EOI: the level entry's remote IRR clears
        a.pop(rax);
        a.iretq();

        a.Label(ref start);
        a.mov(r15, Results);
        a.mov(r12, registers);
        a.mov(rbx, 0xFEE0_0000UL);
        a.mov(rsi, 0xFEC0_0000UL);
        if (!withInterrupts)
        {
            return;
        }
        GuestInterruptSetup.Emit(a, Idt, Vector, handler, Scratch, rbx);
        GuestInterruptSetup.RouteIoApicPin(a, rsi, Gsi, Vector | (1u << 15)); // level-triggered, active high, unmasked
    }

    /// <summary>§3.1.1: reset, ACKNOWLEDGE, DRIVER, read the features, write <paramref name="driverFeatures"/>,
    /// FEATURES_OK and read it back, set up queue 0 and make it ready, read the first 8 configuration bytes, then
    /// DRIVER_OK (unless <paramref name="driverOk"/> is false).</summary>
    public void Initialize(ulong driverFeatures, bool driverOk = true)
    {
        eventIndex = (driverFeatures & VirtioFeatures.EventIndex) != 0;
        availableIndex = usedIndex = 0;
        ReadRegister(0x000, Magic);
        ReadRegister(0x004, Version);
        ReadRegister(0x008, DeviceId);
        WriteRegister(0x070, 0);
        WriteRegister(0x070, 1);
        WriteRegister(0x070, 3);
        WriteRegister(0x014, 0);
        ReadRegister(0x010, FeaturesLow);
        WriteRegister(0x014, 1);
        ReadRegister(0x010, FeaturesHigh);
        WriteRegister(0x024, 0);
        WriteRegister(0x020, (uint)driverFeatures);
        WriteRegister(0x024, 1);
        WriteRegister(0x020, (uint)(driverFeatures >> 32));
        WriteRegister(0x070, 0xB);
        ReadRegister(0x070, StatusAfterFeatures);
        // The rings: zeroed by the driver (flags, idx), then given to the device.
        a.mov(rdi, Available);
        a.mov(__qword_ptr[rdi], 0);
        a.mov(rdi, Used);
        a.mov(__qword_ptr[rdi], 0);
        if (!eventIndex && !interrupts)
        {
            a.mov(rdi, Available);
            a.mov(__word_ptr[rdi], 1);                         // VIRTQ_AVAIL_F_NO_INTERRUPT: the driver polls
        }
        WriteRegister(0x030, 0);
        ReadRegister(0x034, QueueSizeMax);
        WriteRegister(0x038, queueSize);
        WriteRegister(0x080, (uint)Descriptors);
        WriteRegister(0x084, 0);
        WriteRegister(0x090, (uint)Available);
        WriteRegister(0x094, 0);
        WriteRegister(0x0A0, (uint)Used);
        WriteRegister(0x0A4, 0);
        WriteRegister(0x044, 1);
        ReadRegister(0x044, QueueReady);
        ReadRegister(0x100, ConfigLow);
        ReadRegister(0x104, ConfigHigh);
        if (driverOk)
        {
            WriteRegister(0x070, 0xF);
        }
    }

    /// <summary>Writes a 16-byte virtio-blk request header at <see cref="Headers"/> + 16 × <paramref name="index"/> and
    /// presets its status byte to 0xFF; returns the header's and the status byte's addresses.</summary>
    public (ulong Header, ulong Status) BlockHeader(int index, uint type, ulong sector)
    {
        ulong header = Headers + 16 * (ulong)index, status = Statuses + (ulong)index;
        a.mov(rdi, header);
        a.mov(__dword_ptr[rdi], type);
        a.mov(__dword_ptr[rdi + 4], 0);
        a.mov(rax, sector);
        a.mov(__qword_ptr[rdi + 8], rax);
        a.mov(rdi, status);
        a.mov(__byte_ptr[rdi], 0xFF);
        return (header, status);
    }

    /// <summary>Writes descriptor <paramref name="index"/> of the table at <paramref name="table"/>.</summary>
    public void Descriptor(ulong table, int index, ulong address, uint length, ushort flags, ushort next)
    {
        a.mov(rdi, table + 16 * (ulong)index);
        a.mov(rax, address);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(__dword_ptr[rdi + 8], length);
        a.mov(__word_ptr[rdi + 12], flags);
        a.mov(__word_ptr[rdi + 14], next);
    }

    /// <summary>Puts <paramref name="chains"/> in the descriptor table (from index 0; with
    /// <paramref name="indirect"/> each chain in its own indirect table behind one descriptor) and makes them all
    /// available at once: one batch.</summary>
    public void MakeAvailable(IReadOnlyList<Element[]> chains, bool indirect)
    {
        int next = 0;
        for (int c = 0; c < chains.Count; c++)
        {
            var chain = chains[c];
            int head = next;
            if (indirect)
            {
                ulong table = IndirectTables + 0x100 * (ulong)c;
                for (int i = 0; i < chain.Length; i++)
                {
                    ushort flags = (ushort)((chain[i].Writable ? 2 : 0) | (i + 1 < chain.Length ? 1 : 0));
                    Descriptor(table, i, chain[i].Address, chain[i].Length, flags, (ushort)(i + 1 < chain.Length ? i + 1 : 0));
                }
                Descriptor(Descriptors, next++, table, (uint)(16 * chain.Length), 4, 0);
            }
            else
            {
                for (int i = 0; i < chain.Length; i++, next++)
                {
                    ushort flags = (ushort)((chain[i].Writable ? 2 : 0) | (i + 1 < chain.Length ? 1 : 0));
                    Descriptor(Descriptors, next, chain[i].Address, chain[i].Length, flags, (ushort)(i + 1 < chain.Length ? next + 1 : 0));
                }
            }
            a.mov(rdi, Available + 4 + 2 * (ulong)(availableIndex % queueSize));
            a.mov(__word_ptr[rdi], (ushort)head);
            availableIndex++;
        }
        if (eventIndex)
        {
            // used_event: interrupt when the batch's last chain is used, or (polling) never: an index half the ring
            // space away, which the used index does not pass.
            ushort usedEvent = interrupts ? (ushort)(usedIndex + chains.Count - 1) : (ushort)(usedIndex + 0x8000);
            a.mov(rdi, Available + 4 + 2 * (ulong)queueSize);
            a.mov(__word_ptr[rdi], usedEvent);
        }
        a.mov(rdi, Available);
        a.mov(__word_ptr[rdi + 2], availableIndex);
    }

    /// <summary>Makes the chain at descriptor <paramref name="head"/> available as it stands (a test writes the
    /// descriptors itself, malformed on purpose), with the available index moved by <paramref name="step"/>.</summary>
    public void MakeAvailableAsIs(ushort head, ushort step = 1)
    {
        a.mov(rdi, Available + 4 + 2 * (ulong)(availableIndex % queueSize));
        a.mov(__word_ptr[rdi], head);
        availableIndex = (ushort)(availableIndex + step);
        a.mov(rdi, Available);
        a.mov(__word_ptr[rdi + 2], availableIndex);
    }

    /// <summary>Notifies queue 0 without waiting (the device will not answer a malformed chain).</summary>
    public void Notify() => WriteRegister(0x050, 0);

    /// <summary>A port write the test's mark device sees (phase boundaries for counting).</summary>
    public void Mark(int value)
    {
        a.mov(dx, MarkPort);
        a.mov(eax, value);
        a.@out(dx, eax);
    }

    /// <summary>Notifies queue 0 and waits until the device has used <paramref name="count"/> more chains: by polling
    /// the used index, or (with interrupts) with IF clear around the notify and STI; HLT, which the interrupt ends.</summary>
    public void NotifyAndWait(int count)
    {
        usedIndex = (ushort)(usedIndex + count);
        if (interrupts)
        {
            a.cli();
            WriteRegister(0x050, 0);
            a.sti();
            a.hlt();
            a.cli();
        }
        else
        {
            WriteRegister(0x050, 0);
        }
        var poll = a.CreateLabel();
        var done = a.CreateLabel();
        a.mov(ecx, 100_000);
        a.mov(rdi, Used);
        a.Label(ref poll);
        a.movzx(eax, __word_ptr[rdi + 2]);
        a.cmp(eax, usedIndex);
        a.je(done);
        a.pause();
        a.dec(ecx);
        a.jnz(poll);
        a.Label(ref done);
        a.mov(__qword_ptr[r15 + PollsLeft * 8], rcx);
    }

    /// <summary>Reads Status and InterruptStatus into the result slots, then the debug exit with status 0.</summary>
    public void Finish()
    {
        ReadRegister(0x070, FinalStatus);
        ReadRegister(0x060, FinalInterruptStatus);
        a.mov(dx, 0xF4);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();
    }
}
