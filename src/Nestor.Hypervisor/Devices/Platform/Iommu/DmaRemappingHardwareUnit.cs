using Nestor.Hypervisor.Devices.DmaRemapping;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform.Iommu;

/// <summary>An Intel VT-d DMA-remapping hardware unit for the guest at 0xFED90000 (where QEMU's q35 <c>intel-iommu</c>
/// is; VT-d specification rev. 4, §10 "Register Descriptions"): DMA remapping in legacy mode with the tables in guest
/// memory (<see cref="SecondLevelWalk"/>), fault recording, the invalidation queue (§6.5.2) and interrupt remapping
/// (§5, <see cref="InterruptRemapping"/>). There are no caches (no context cache, IOTLB or interrupt entry cache):
/// every request reads the tables, so every invalidation completes at once. Registers are read and written as 32- or
/// 64-bit values (§10.2).</summary>
public sealed class DmaRemappingHardwareUnit : IMmioDevice, ISnapshottable
{
    /// <summary>Register base and size (one 4 KiB page).</summary>
    public const ulong BaseAddress = 0xFED9_0000, Length = 0x1000;

    /// <summary>Register offsets (§10.4).</summary>
    public const int Version = 0x00, Capability = 0x08, ExtendedCapability = 0x10, GlobalCommand = 0x18,
        GlobalStatus = 0x1C, RootTableAddress = 0x20, ContextCommand = 0x28, FaultStatus = 0x34, FaultEventControl = 0x38,
        FaultEventData = 0x3C, FaultEventAddress = 0x40, FaultEventUpperAddress = 0x44, QueueHead = 0x80, QueueTail = 0x88,
        QueueAddress = 0x90, InvalidationCompletionStatus = 0x9C, InvalidationEventControl = 0xA0,
        InterruptRemappingTableAddress = 0xB8, InvalidateAddress = 0xF0, IotlbInvalidate = 0xF8, FaultRecording = 0x220;

    /// <summary>Global command/status bits (§10.4.4, §10.4.5): translation enable, set root table pointer, set fault
    /// log, enable advanced fault logging, write buffer flush, queued invalidation enable, interrupt remapping enable,
    /// set interrupt remap table pointer, compatibility format interrupts.</summary>
    public const uint TranslationEnable = 1u << 31, SetRootTablePointer = 1u << 30, SetFaultLog = 1u << 29,
        AdvancedFaultLog = 1u << 28, WriteBufferFlush = 1u << 27, QueuedInvalidationEnable = 1u << 26,
        InterruptRemappingEnable = 1u << 25, SetInterruptRemapTablePointer = 1u << 24, CompatibilityFormatInterrupts = 1u << 23;

    /// <summary>The widest DMA address the unit translates (CAP.MGAW + 1 bits), as the DMAR table reports it.</summary>
    public const int AddressWidth = 48;

    /// <summary>VER: architecture version 1.0 (major in bits 7:4).</summary>
    public const uint VersionValue = 0x10;

    /// <summary>CAP (§10.4.2): ND = 6 (65536 domains), SAGAW 39- and 48-bit (bits 9, 10), MGAW 48 bits (47), FRO =
    /// 0x22 (fault recording at 0x220), SLLPS 2 MiB and 1 GiB (bits 34, 35), NFR 0 (one recording register).</summary>
    public const ulong CapabilityValue = 6 | (0b110UL << 8) | ((ulong)(AddressWidth - 1) << 16) | ((ulong)(FaultRecording / 16) << 24) | (1UL << 34) | (1UL << 35);

    /// <summary>ECAP bits (§10.4.3): queued invalidation (1), interrupt remapping (3), extended interrupt mode (4);
    /// IRO (bits 17:8) = 0xF: the IOTLB registers at 0xF0.</summary>
    public const ulong QueuedInvalidation = 1 << 1, InterruptRemappingSupport = 1 << 3, ExtendedInterruptMode = 1 << 4;

    // Fault status bits (§10.4.9): primary fault overflow, primary pending fault (read-only), invalidation queue error,
    // invalidation completion error, invalidation time-out error.
    private const uint PrimaryFaultOverflow = 1, PrimaryPendingFault = 2, QueueError = 1 << 4, CompletionError = 1 << 5, TimeoutError = 1 << 6;
    private const uint InterruptMask = 1u << 31, InterruptPending = 1u << 30;

    private readonly GuestMemory memory;
    private readonly IoApic ioApic;
    private uint status, faultStatus, faultControl = InterruptMask, faultData, faultAddress, faultUpperAddress;
    private uint completionStatus, invalidationControl = InterruptMask;
    private ulong rootTableRegister, rootTable, contextCommand, queueHead, queueTail, queueAddress;
    private ulong remapTableRegister, remapTable, invalidateAddress, iotlbCommand, recordLow, recordHigh;

    /// <param name="memory">Guest memory, where the tables and the queue are.</param>
    /// <param name="ioApic">The path interrupt messages take to the local APICs.</param>
    /// <param name="extendedInterruptMode">ECAP.EIM (x2APIC destinations in IRTEs); QEMU's <c>eim=</c>.</param>
    public DmaRemappingHardwareUnit(GuestMemory memory, IoApic ioApic, bool extendedInterruptMode = false)
    {
        this.memory = memory;
        this.ioApic = ioApic;
        ExtendedCapabilityValue = QueuedInvalidation | InterruptRemappingSupport | (extendedInterruptMode ? ExtendedInterruptMode : 0)
            | ((ulong)(InvalidateAddress / 16) << 8);
        Interrupts = new InterruptRemapping(memory, ioApic);
    }

    public string Name => "intel-iommu";

    /// <summary>ECAP's value.</summary>
    public ulong ExtendedCapabilityValue { get; }

    /// <summary>The interrupt-remapping half.</summary>
    public InterruptRemapping Interrupts { get; }

    /// <summary>GSTS.</summary>
    public uint Status => status;

    /// <summary>DMA translations asked for, and those blocked.</summary>
    public long Translations { get; private set; }

    /// <summary>DMA requests blocked (recorded or not).</summary>
    public long Faults { get; private set; }

    /// <summary>Second-level table entries read (root and context entries included).</summary>
    public long WalkReferences { get; private set; }

    /// <summary>Descriptors the invalidation queue has processed.</summary>
    public long DescriptorsProcessed { get; private set; }

    /// <summary>Translates a DMA request of <paramref name="source"/> (bus/device/function) at
    /// <paramref name="address"/>: with translation off (GSTS.TES = 0) the address is used as it is (§3.1); else the
    /// tables decide and a blocked request is recorded as a fault unless its context entry disables that.</summary>
    public DmaTranslation Translate(ushort source, ulong address, bool write)
    {
        Translations++;
        if ((status & TranslationEnable) == 0)
        {
            return new(address, 0);
        }
        var result = SecondLevelWalk.Translate(memory, rootTable, source, address, write, out bool suppressed, out int references);
        WalkReferences += references;
        if (!result.Translated)
        {
            Faults++;
            if (!suppressed)
            {
                RecordFault(source, address, write, result.Reason);
            }
        }
        return result;
    }

    /// <summary>Sends a PCI device's MSI (address 0xFEExxxxx, data) from <paramref name="source"/>, remapped when
    /// interrupt remapping is on (GSTS.IRES, §5.1.2).</summary>
    public bool DeliverMessage(ulong address, uint data, ushort? source) =>
        Interrupts.Deliver(address, data, source, (status & InterruptRemappingEnable) != 0,
            (status & CompatibilityFormatInterrupts) != 0, remapTable, remapTableRegister);

    // §7.2: one fault recording register; a fault while its F bit is set is an overflow.
    private void RecordFault(ushort source, ulong address, bool write, byte reason)
    {
        if ((recordHigh & (1UL << 63)) != 0)
        {
            faultStatus |= PrimaryFaultOverflow;
            return;
        }
        recordLow = address & ~0xFFFUL;
        recordHigh = source | ((ulong)reason << 32) | (write ? 0 : 1UL << 62) | (1UL << 63);
        faultStatus |= PrimaryPendingFault; // §10.4.9: PPF follows the F bits of the recording registers
        FaultEvent();
    }

    // §7.3: a fault event is an interrupt (FEDATA/FEADDR) unless masked, when it stays pending (FECTL.IP).
    private void FaultEvent()
    {
        if ((faultControl & InterruptMask) != 0)
        {
            faultControl |= InterruptPending;
            return;
        }
        MessageSignalledInterrupt.Deliver(ioApic, faultAddress, faultData);
    }

    public ulong Read(ulong address, int size)
    {
        int offset = (int)(address - BaseAddress);
        ulong register = Register(offset & ~7);
        ulong value = (offset & 4) != 0 ? register >> 32 : register;
        return size == 8 ? value : value & ((1UL << (8 * size)) - 1);
    }

    private ulong Register(int offset) => offset switch
    {
        Version => VersionValue,
        Capability => CapabilityValue,
        ExtendedCapability => ExtendedCapabilityValue,
        GlobalCommand => (ulong)status << 32, // GCMD reads as 0; GSTS is the high half of this quadword
        RootTableAddress => rootTableRegister,
        ContextCommand => contextCommand,
        0x30 => (ulong)faultStatus << 32 | 0,
        FaultEventControl => faultControl | ((ulong)faultData << 32),
        FaultEventAddress => faultAddress | ((ulong)faultUpperAddress << 32),
        QueueHead => queueHead,
        QueueTail => queueTail,
        QueueAddress => queueAddress,
        0x98 => (ulong)completionStatus << 32,
        InvalidationEventControl => invalidationControl,
        InterruptRemappingTableAddress => remapTableRegister,
        InvalidateAddress => invalidateAddress,
        IotlbInvalidate => iotlbCommand,
        FaultRecording => recordLow,
        FaultRecording + 8 => recordHigh,
        _ => 0,
    };

    public void Write(ulong address, int size, ulong value)
    {
        int offset = (int)(address - BaseAddress);
        if (size == 8)
        {
            WriteRegister(offset, (uint)value);
            WriteRegister(offset + 4, (uint)(value >> 32));
            return;
        }
        WriteRegister(offset, (uint)value);
    }

    private void WriteRegister(int offset, uint value)
    {
        switch (offset)
        {
            case GlobalCommand:
                Command(value);
                break;
            case RootTableAddress: rootTableRegister = Low(rootTableRegister, value & ~0x3FFu); break;
            case RootTableAddress + 4: rootTableRegister = High(rootTableRegister, value); break;
            case ContextCommand: contextCommand = Low(contextCommand, value); break;
            case ContextCommand + 4:
                contextCommand = High(contextCommand, value);
                if ((contextCommand & (1UL << 63)) != 0)
                {
                    // §10.4.7: ICC set starts an invalidation; done at once (no context cache), with CAIG = CIRG.
                    ulong granularity = (contextCommand >> 61) & 3;
                    contextCommand = (contextCommand & ~((1UL << 63) | (3UL << 59))) | (granularity << 59);
                }
                break;
            case FaultStatus:
                faultStatus &= ~(value & (PrimaryFaultOverflow | QueueError | CompletionError | TimeoutError)); // RW1C
                break;
            case FaultEventControl: faultControl = (value & InterruptMask) | (faultControl & InterruptPending & ((value & InterruptMask) != 0 ? ~0u : 0)); break;
            case FaultEventData: faultData = value; break;
            case FaultEventAddress: faultAddress = value & ~3u; break;
            case FaultEventUpperAddress: faultUpperAddress = value; break;
            case QueueTail: queueTail = value & 0x7FFF0; ProcessQueue(); break;
            case QueueAddress: queueAddress = Low(queueAddress, value & ~0xFF8u); break;
            case QueueAddress + 4: queueAddress = High(queueAddress, value); break;
            case InvalidationCompletionStatus: completionStatus &= ~(value & 1); break; // IWC, RW1C
            case InvalidationEventControl: invalidationControl = value & InterruptMask; break;
            case InterruptRemappingTableAddress: remapTableRegister = Low(remapTableRegister, value & ~0x7F0u); break;
            case InterruptRemappingTableAddress + 4: remapTableRegister = High(remapTableRegister, value); break;
            case InvalidateAddress: invalidateAddress = Low(invalidateAddress, value); break;
            case InvalidateAddress + 4: invalidateAddress = High(invalidateAddress, value); break;
            case IotlbInvalidate: iotlbCommand = Low(iotlbCommand, value); break;
            case IotlbInvalidate + 4:
                iotlbCommand = High(iotlbCommand, value);
                if ((iotlbCommand & (1UL << 63)) != 0)
                {
                    // §10.4.8.1: IVT set starts an IOTLB invalidation; done at once (no IOTLB), IAIG = IIRG.
                    ulong granularity = (iotlbCommand >> 60) & 3;
                    iotlbCommand = (iotlbCommand & ~((1UL << 63) | (3UL << 57))) | (granularity << 57);
                }
                break;
            case FaultRecording + 12:
                if ((value & (1u << 31)) != 0)
                {
                    recordHigh &= ~(1UL << 63); // F is RW1C (§10.4.14)
                }
                break;
        }
        if ((recordHigh & (1UL << 63)) != 0)
        {
            faultStatus |= PrimaryPendingFault;
        }
        else
        {
            faultStatus &= ~PrimaryPendingFault;
        }
    }

    // §10.4.4: TE, QIE, IRE and CFI are states the status follows; SRTP and SIRTP are one-shot commands whose status
    // bits (RTPS, IRTPS) are set when the pointer is latched and stay set; WBF (CAP.RWBF = 0) and SFL/EAFL (no
    // advanced fault logging) do nothing.
    private void Command(uint value)
    {
        if ((value & SetRootTablePointer) != 0)
        {
            rootTable = rootTableRegister & ~0xFFFUL;
            status |= SetRootTablePointer;
        }
        if ((value & SetInterruptRemapTablePointer) != 0)
        {
            remapTable = remapTableRegister;
            status |= SetInterruptRemapTablePointer;
        }
        bool queueWasOn = (status & QueuedInvalidationEnable) != 0;
        const uint states = TranslationEnable | QueuedInvalidationEnable | InterruptRemappingEnable | CompatibilityFormatInterrupts;
        status = (status & ~states) | (value & states);
        if (!queueWasOn && (status & QueuedInvalidationEnable) != 0)
        {
            queueHead = 0; // §6.5.2: enabling the queue starts it at the head register's value, which software zeroed
        }
        else if (queueWasOn && (status & QueuedInvalidationEnable) == 0)
        {
            queueHead = 0; // disabling clears the head (§10.4.22)
        }
    }

    // §6.5.2: descriptors from IQH to IQT, 128 bits each, in a queue of 2^(QS) 4 KiB pages at IQA.
    private void ProcessQueue()
    {
        if ((status & QueuedInvalidationEnable) == 0 || (faultStatus & QueueError) != 0)
        {
            return;
        }
        ulong entries = 256UL << (int)(queueAddress & 7);
        ulong baseAddress = queueAddress & ~0xFFFUL;
        while (queueHead != queueTail)
        {
            ulong index = queueHead >> 4;
            var at = new GuestPhysical(baseAddress + index * 16);
            if (!memory.IsRam(at, 16))
            {
                faultStatus |= QueueError;
                return;
            }
            ulong low = memory.ReadUInt64(at), high = memory.ReadUInt64(at + 8);
            switch (low & 0xF)
            {
                case 1: // context-cache invalidate (§6.5.2.1)
                case 2: // IOTLB invalidate (§6.5.2.2)
                case 3: // device-TLB invalidate (§6.5.2.5)
                case 4: // interrupt entry cache invalidate (§6.5.2.7)
                    break; // nothing cached: complete at once
                case 5: // invalidation wait (§6.5.2.8): status write (SW, bit 5) and/or interrupt flag (IF, bit 4)
                    if ((low & (1 << 5)) != 0)
                    {
                        var statusAddress = new GuestPhysical(high & ~3UL);
                        if (memory.IsRam(statusAddress, 4))
                        {
                            memory.WriteUInt32(statusAddress, (uint)(low >> 32));
                        }
                    }
                    if ((low & (1 << 4)) != 0)
                    {
                        completionStatus |= 1; // ICS.IWC; the completion event interrupt is not modelled
                    }
                    break;
                default:
                    faultStatus |= QueueError; // §6.5.2.10: an invalid descriptor stops the queue at it
                    FaultEvent();
                    return;
            }
            DescriptorsProcessed++;
            queueHead = ((index + 1) % entries) << 4;
        }
    }

    private static ulong Low(ulong register, uint value) => (register & ~0xFFFF_FFFFUL) | value;

    private static ulong High(ulong register, uint value) => (register & 0xFFFF_FFFFUL) | ((ulong)value << 32);

    public string SectionTag => "VTDU";

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer)
    {
        foreach (uint v in (uint[])[status, faultStatus, faultControl, faultData, faultAddress, faultUpperAddress, completionStatus, invalidationControl])
        {
            writer.WriteUInt32(v);
        }
        foreach (ulong v in (ulong[])[rootTableRegister, rootTable, contextCommand, queueHead, queueTail, queueAddress,
            remapTableRegister, remapTable, invalidateAddress, iotlbCommand, recordLow, recordHigh])
        {
            writer.WriteUInt64(v);
        }
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        status = reader.ReadUInt32(); faultStatus = reader.ReadUInt32(); faultControl = reader.ReadUInt32();
        faultData = reader.ReadUInt32(); faultAddress = reader.ReadUInt32(); faultUpperAddress = reader.ReadUInt32();
        completionStatus = reader.ReadUInt32(); invalidationControl = reader.ReadUInt32();
        rootTableRegister = reader.ReadUInt64(); rootTable = reader.ReadUInt64(); contextCommand = reader.ReadUInt64();
        queueHead = reader.ReadUInt64(); queueTail = reader.ReadUInt64(); queueAddress = reader.ReadUInt64();
        remapTableRegister = reader.ReadUInt64(); remapTable = reader.ReadUInt64(); invalidateAddress = reader.ReadUInt64();
        iotlbCommand = reader.ReadUInt64(); recordLow = reader.ReadUInt64(); recordHigh = reader.ReadUInt64();
    }
}
