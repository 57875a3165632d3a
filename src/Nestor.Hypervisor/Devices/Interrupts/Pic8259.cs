using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>The PC/AT's pair of Intel 8259A programmable interrupt controllers (8259A data sheet): the master at ports
/// 0x20/0x21 takes ISA IRQs 0–7, the slave at 0xA0/0xA1 IRQs 8–15, its INT output cascaded into the master's IR2; the
/// edge/level control registers (ELCR, PIIX's 0x4D0/0x4D1) pick level-sensitive lines. The master's INT is the CPU's
/// INTR pin (<see cref="IExternalInterruptController"/>): the bootstrap processor's local APIC takes it on LINT0 in
/// ExtINT mode, or directly when the APIC is hardware-disabled (SDM Vol. 3A §10.5.1, §10.4.3), and the interrupt
/// acknowledge cycle (<see cref="Acknowledge"/>) returns the vector: ICW2's base plus the line, the slave's through
/// the master's cascade. Every ISA line also goes to its I/O APIC pin (<see cref="IsaInterruptRouting"/>), as on a PC;
/// a kernel that masks the 8259s (every APIC kernel does first) sees only the I/O APIC.</summary>
public sealed class Pic8259Pair : IPortDevice, Persistence.ISnapshottable, IExternalInterruptController
{
    public const ushort MasterCommand = 0x20, MasterData = 0x21, SlaveCommand = 0xA0, SlaveData = 0xA1;

    /// <summary>PIIX's edge/level control registers, one per 8259 (bit n: IRQ n of that chip is level-sensitive).</summary>
    public const ushort ElcrMaster = 0x4D0, ElcrSlave = 0x4D1;

    /// <summary>The master's input the slave's INT drives (PC/AT: IR2).</summary>
    public const int CascadeLine = 2;

    public Pic8259Pair()
    {
        ElcrPorts = new ElcrDevice(this);
    }

    public string Name => "pic";

    /// <summary>The master controller.</summary>
    public Pic8259 Master { get; } = new(master: true);

    /// <summary>The slave controller.</summary>
    public Pic8259 Slave { get; } = new(master: false);

    /// <summary>Ports 0x4D0/0x4D1 (the ELCR), claimed beside the 8259s.</summary>
    public IPortDevice ElcrPorts { get; }

    /// <summary>Called whenever the master's INT output may have changed (the engine points it at the CPU's
    /// <see cref="Cpu.InterruptStateChanged"/>, so that the run loop looks at INTR before the next instruction).</summary>
    public Action? OutputChanged { get; set; }

    /// <summary>Interrupt acknowledge cycles answered (INTA), spurious ones included.</summary>
    public long Acknowledges { get; private set; }

    /// <summary>Acknowledges that found no request left (the spurious IRQ 7 or IRQ 15 of the data sheet).</summary>
    public long SpuriousAcknowledges { get; private set; }

    /// <inheritdoc/>
    public bool InterruptRequested => Master.Output;

    /// <summary>ISA IRQ <paramref name="irq"/> (0–15) is now at <paramref name="level"/>.</summary>
    public void SetIrq(int irq, bool level)
    {
        if ((uint)irq >= 16)
        {
            throw new ArgumentOutOfRangeException(nameof(irq), irq, "the 8259 pair has ISA IRQs 0-15");
        }
        if (irq < 8)
        {
            Master.SetInput(irq, level);
        }
        else
        {
            Slave.SetInput(irq - 8, level);
        }
        Update();
    }

    /// <summary>The interrupt acknowledge cycle (8259A data sheet, "Interrupt sequence"): the master's highest-priority
    /// request goes in service and its vector is returned; a request on the cascade line is the slave's to answer. No
    /// request left by the time of the acknowledge (it was masked or, edge-triggered, withdrawn) answers IR7's vector
    /// without setting ISR: the spurious interrupt.</summary>
    public int Acknowledge()
    {
        Acknowledges++;
        int line = Master.AcknowledgeLine();
        int vector;
        if (line < 0)
        {
            SpuriousAcknowledges++;
            vector = Master.VectorBase + 7;
        }
        else if (line == CascadeLine && (Master.Cascade & (1 << CascadeLine)) != 0)
        {
            int slaveLine = Slave.AcknowledgeLine();
            if (slaveLine < 0)
            {
                SpuriousAcknowledges++;
                slaveLine = 7; // spurious IRQ 15; the master's IR2 stays in service and needs its EOI
            }
            vector = Slave.VectorBase + slaveLine;
        }
        else
        {
            vector = Master.VectorBase + line;
        }
        Update();
        return vector;
    }

    public uint Read(ushort port, int size)
    {
        var chip = port >= SlaveCommand ? Slave : Master;
        uint value = chip.Read(command: (port & 1) == 0);
        Update();
        return value;
    }

    public void Write(ushort port, int size, uint value)
    {
        var chip = port >= SlaveCommand ? Slave : Master;
        if ((port & 1) == 0)
        {
            chip.WriteCommand((byte)value);
        }
        else
        {
            chip.WriteData((byte)value);
        }
        Update();
    }

    // The slave's INT is the master's IR2 input; then the CPU is told that INTR may have changed.
    private void Update()
    {
        Master.SetInput(CascadeLine, Slave.Output);
        OutputChanged?.Invoke();
    }

    /// <inheritdoc/>
    public string SectionTag => "PIC ";

    /// <inheritdoc/>
    public ushort SectionVersion => 2;

    /// <summary>Both 8259s, master first, then the counters.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        Master.Save(writer);
        Slave.Save(writer);
        writer.WriteInt64(Acknowledges);
        writer.WriteInt64(SpuriousAcknowledges);
    }

    /// <summary>Version 1 (before the 8259s delivered anything) held the initialization state and the registers only:
    /// its IRR, ISR, ELCR and priority are those of an idle chip.</summary>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        if (version is < 1 or > 2)
        {
            throw reader.Invalid($"8259 state of version {version}, which this Nestor does not know (it reads 1 and 2)");
        }
        Master.Restore(reader, version);
        Slave.Restore(reader, version);
        if (version >= 2)
        {
            Acknowledges = reader.ReadInt64();
            SpuriousAcknowledges = reader.ReadInt64();
        }
        OutputChanged?.Invoke();
    }

    private sealed class ElcrDevice(Pic8259Pair pair) : IPortDevice
    {
        public string Name => "elcr";

        // A wider access is split into byte accesses, as QEMU's byte-wide ELCR region is.
        public uint Read(ushort port, int size)
        {
            uint value = 0;
            for (int i = 0; i < size; i++)
            {
                int at = port + i;
                uint part = at == ElcrMaster ? pair.Master.EdgeLevel : at == ElcrSlave ? pair.Slave.EdgeLevel : 0xFFu;
                value |= part << (8 * i);
            }
            return value;
        }

        public void Write(ushort port, int size, uint value)
        {
            // PIIX: IRQs 0, 1, 2 (master) and 8, 13 (slave) are always edge-triggered; their ELCR bits read 0.
            for (int i = 0; i < size; i++)
            {
                byte part = (byte)(value >> (8 * i));
                if (port + i == ElcrMaster)
                {
                    pair.Master.EdgeLevel = (byte)(part & 0xF8);
                }
                else if (port + i == ElcrSlave)
                {
                    pair.Slave.EdgeLevel = (byte)(part & 0xDE);
                }
            }
            pair.Update();
        }
    }
}
