using System.Buffers.Binary;
using Nestor.Hypervisor.Devices.Assigned.Iommu;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Assigned;

/// <summary>The dedicated disk controller ("NDMA", docs/devices.md, "Dedicated"): a DMA controller given to one VM
/// whole, whose registers the VMM maps into the guest (<see cref="IDirectMmioDevice"/>: under a VMM on the software
/// machine its driver's register accesses cause no VM exit) and whose DMA goes through an IOMMU
/// (<see cref="AssignedDeviceDma"/>). The guest submits 32-byte requests in a ring in its memory; on a write of SUBMIT
/// the controller processes them in order, writes each one's status, advances COMPLETED and, when asked, raises its
/// level interrupt until INTERRUPT_STATUS is cleared.</summary>
/// <remarks>The interrupt still goes through the VMM: the line reaches the I/O APIC, and under a VMM an external
/// interrupt exits and is injected (there are no posted interrupts in this machine, which would let it reach the guest
/// without an exit, as VT-d's posted interrupts with APICv do).</remarks>
public sealed class AssignedDiskController : IDirectMmioDevice, ISnapshottable, IDisposable
{
    /// <summary>Where controller 0's registers are; controller n is <see cref="RegisterStride"/> × n above.</summary>
    public const ulong BaseAddress = 0xFEA0_0000;

    /// <summary>Bytes between controllers, and the size of each one's register window.</summary>
    public const ulong RegisterStride = 0x1000;

    /// <summary>Controller n's interrupt is GSI <see cref="FirstGsi"/> + n.</summary>
    public const int FirstGsi = 10;

    /// <summary>Controllers the platform has room for.</summary>
    public const int MaximumControllers = 2;

    /// <summary>The ID register's value: "NDMA" in little-endian ASCII.</summary>
    public const uint Identifier = 0x414D_444E;

    /// <summary>Register offsets (docs/devices.md).</summary>
    public const int IdRegister = 0x00, VersionRegister = 0x04, CapacityRegister = 0x08, RingBaseRegister = 0x10, RingSizeRegister = 0x18,
        ControlRegister = 0x1C, SubmitRegister = 0x20, CompletedRegister = 0x24, InterruptStatusRegister = 0x28,
        FaultAddressLowRegister = 0x2C, FaultAddressHighRegister = 0x30, ReadOnlyRegister = 0x34;

    /// <summary>CONTROL bits.</summary>
    public const uint ControlEnable = 1, ControlInterruptOnCompletion = 2;

    /// <summary>INTERRUPT_STATUS bits.</summary>
    public const uint InterruptCompletion = 1, InterruptDmaFault = 2;

    /// <summary>Request operations.</summary>
    public const byte OperationRead = 0, OperationWrite = 1, OperationFlush = 2;

    /// <summary>Request statuses.</summary>
    public const byte StatusDone = 0, StatusIoError = 1, StatusDmaFault = 2, StatusBadRequest = 3, StatusWriteProtected = 4;

    /// <summary>Bytes of one request in the ring.</summary>
    public const int RequestSize = 32;

    /// <summary>The largest transfer of one request.</summary>
    public const int MaximumTransfer = 1 << 20;

    /// <summary>The most entries a ring may have.</summary>
    public const uint MaximumRingSize = 128;

    private const int SectorSize = IBlockBackend.SectorSize;

    private readonly IBlockBackend backend;
    private readonly DiskStatistics statistics;
    private readonly IInterruptLine line;
    private readonly AssignedDeviceDma dma;
    private readonly ulong registerBase;
    // One transfer's buffer and its pages' host addresses, allocated once: processing a request allocates nothing.
    private readonly byte[] transfer = new byte[MaximumTransfer];
    private readonly ulong[] hostPages = new ulong[MaximumTransfer / 0x1000 + 1];
    private readonly ulong[] entryPage = new ulong[1];
    private readonly byte[] entry = new byte[RequestSize];

    // Registers.
    private ulong ringBase;
    private uint ringSize;
    private uint control;
    private uint completed;
    private uint interruptStatus;
    private ulong faultAddress;
    // The ring as CONTROL.enable latched it.
    private ulong activeRingBase;
    private uint activeRingSize;

    /// <param name="vm">The VM the controller is assigned to (its memory, host and diagnostics).</param>
    /// <param name="backend">The disk.</param>
    /// <param name="index">Which controller slot (0 or 1): the register window and GSI of docs/devices.md.</param>
    /// <param name="statistics">The disk's counters, as every disk interface keeps them (<c>--stats</c>).</param>
    public AssignedDiskController(Vm vm, IBlockBackend backend, int index, DiskStatistics? statistics = null)
    {
        this.statistics = statistics ?? new DiskStatistics();
        if ((uint)index >= MaximumControllers)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"the platform has {MaximumControllers} assigned-controller slots");
        }
        this.backend = backend;
        Index = index;
        registerBase = BaseAddress + (ulong)index * RegisterStride;
        line = vm.Interrupts[FirstGsi + index];
        // One requester ID per controller, each behind its own remapping unit (a platform may have several, each with
        // its own device scope: ACPI DMAR's DRHD structures, VT-d §8.3).
        dma = new AssignedDeviceDma(vm, new SourceId(0, (byte)(0x10 + index), 0));
        Name = $"ndma{index}";
    }

    /// <summary>The controller slot.</summary>
    public int Index { get; }

    /// <inheritdoc/>
    public string Name { get; }

    /// <summary>Guest-physical address of the register window.</summary>
    public ulong RegisterBase => registerBase;

    /// <summary>The DMA path: the remapping unit, its counts and its fault records.</summary>
    public AssignedDeviceDma Dma => dma;

    /// <summary>Requests completed (every status), over the controller's life.</summary>
    public long Requests { get; private set; }

    /// <summary>The disk's counters shared with the other interfaces' (reads, writes, flushes, errors, bytes,
    /// interrupts).</summary>
    public DiskStatistics Statistics => statistics;

    /// <summary>Bytes read from and written to the disk.</summary>
    public long BytesRead => statistics.BytesRead;

    /// <inheritdoc cref="BytesRead"/>
    public long BytesWritten => statistics.BytesWritten;

    /// <summary>Requests refused: bad request (status 3), write-protected (4), DMA fault (2), I/O error (1).</summary>
    public long BadRequests { get; private set; }

    /// <inheritdoc cref="BadRequests"/>
    public long WriteProtectedRequests { get; private set; }

    /// <inheritdoc cref="BadRequests"/>
    public long DmaFaultRequests { get; private set; }

    /// <inheritdoc cref="BadRequests"/>
    public long IoErrors { get; private set; }

    /// <summary>Driver errors that are no request's: a doorbell more than RING_SIZE ahead of COMPLETED, an enable with
    /// an unusable ring, an access of a size or at an offset the registers do not have.</summary>
    public long ProtocolErrors { get; private set; }

    /// <summary>Register reads and writes, however they arrived (directly or trapped).</summary>
    public long RegisterReads { get; private set; }

    /// <inheritdoc cref="RegisterReads"/>
    public long RegisterWrites { get; private set; }

    /// <inheritdoc/>
    public ulong Read(ulong address, int size)
    {
        RegisterReads++;
        int offset = (int)(address - registerBase);
        if (size == 8 && offset is CapacityRegister or RingBaseRegister)
        {
            return Register(offset) | ((ulong)Register(offset + 4) << 32);
        }
        if (size == 4 && (offset & 3) == 0)
        {
            return Register(offset);
        }
        // Narrower or unaligned reads see the bytes of the 32-bit registers they fall in.
        ulong value = 0;
        for (int i = 0; i < size; i++)
        {
            int at = offset + i;
            value |= (ulong)(byte)(Register(at & ~3) >> (8 * (at & 3))) << (8 * i);
        }
        return value;
    }

    /// <inheritdoc/>
    public void Write(ulong address, int size, ulong value)
    {
        RegisterWrites++;
        int offset = (int)(address - registerBase);
        if (size == 8 && offset == RingBaseRegister)
        {
            ringBase = value;
            return;
        }
        if (size != 4 || (offset & 3) != 0)
        {
            ProtocolErrors++;
            return;
        }
        uint v = (uint)value;
        switch (offset)
        {
            case RingBaseRegister:
                ringBase = (ringBase & ~0xFFFF_FFFFUL) | v;
                break;
            case RingBaseRegister + 4:
                ringBase = (ringBase & 0xFFFF_FFFFUL) | ((ulong)v << 32);
                break;
            case RingSizeRegister:
                ringSize = v;
                break;
            case ControlRegister:
                WriteControl(v);
                break;
            case SubmitRegister:
                Submit(v);
                break;
            case InterruptStatusRegister:
                interruptStatus &= ~v; // write 1 to clear
                UpdateLine();
                break;
            default:
                ProtocolErrors++; // a read-only register, or none
                break;
        }
    }

    private uint Register(int offset) => offset switch
    {
        IdRegister => Identifier,
        VersionRegister => 1,
        CapacityRegister => (uint)backend.SectorCount,
        CapacityRegister + 4 => (uint)((ulong)backend.SectorCount >> 32),
        RingBaseRegister => (uint)ringBase,
        RingBaseRegister + 4 => (uint)(ringBase >> 32),
        RingSizeRegister => ringSize,
        ControlRegister => control,
        CompletedRegister => completed,
        InterruptStatusRegister => interruptStatus,
        FaultAddressLowRegister => (uint)faultAddress,
        FaultAddressHighRegister => (uint)(faultAddress >> 32),
        ReadOnlyRegister => backend.ReadOnly ? 1u : 0u,
        _ => 0, // SUBMIT is write-only; the rest of the window reads as zero
    };

    private void WriteControl(uint value)
    {
        bool enabling = (value & ControlEnable) != 0 && (control & ControlEnable) == 0;
        if (enabling)
        {
            if ((ringBase & 0xFFF) != 0 || ringSize == 0 || ringSize > MaximumRingSize || (ringSize & (ringSize - 1)) != 0)
            {
                // An unusable ring: the controller stays disabled (CONTROL bit 0 reads 0), which the driver can see.
                ProtocolErrors++;
                value &= ~ControlEnable;
            }
            else
            {
                activeRingBase = ringBase;
                activeRingSize = ringSize;
                completed = 0;
                // The VMM's mapping is made now, before any DMA (see AssignedDeviceDma).
                dma.Program();
            }
        }
        control = value & (ControlEnable | ControlInterruptOnCompletion);
        UpdateLine();
    }

    private void Submit(uint index)
    {
        if ((control & ControlEnable) == 0)
        {
            ProtocolErrors++;
            return;
        }
        uint pending = index - completed;
        if (pending > activeRingSize)
        {
            // More than the ring holds: a driver error; the controller processes one ring's worth, so that a hostile
            // doorbell cannot make it loop for 2^32 requests.
            ProtocolErrors++;
            pending = activeRingSize;
        }
        bool any = false;
        for (uint i = 0; i < pending; i++)
        {
            Process(activeRingBase + (completed & (activeRingSize - 1)) * RequestSize);
            completed++;
            Requests++;
            any = true;
        }
        if (any)
        {
            interruptStatus |= InterruptCompletion;
            UpdateLine();
        }
    }

    private void Process(ulong entryAddress)
    {
        // The request itself is read by DMA too: a ring outside the VM's memory faults like a buffer there. A request
        // the controller cannot read, or whose status it cannot write, still counts as completed (the driver sees
        // INTERRUPT_STATUS bit 1 and FAULT_ADDRESS).
        if (!dma.TryTranslate(entryAddress, RequestSize, deviceWrites: false, hostPages, out _, out ulong fault))
        {
            Fault(fault);
            return;
        }
        dma.Read(entryAddress, hostPages, entry);
        byte status = Execute(entry);
        Count(entry[0], status);
        if (!dma.TryTranslate(entryAddress + 1, 1, deviceWrites: true, entryPage, out _, out fault))
        {
            Fault(fault);
            return;
        }
        dma.Write(entryAddress + 1, entryPage, [status]);
    }

    private void Count(byte operation, byte status)
    {
        if (status != StatusDone)
        {
            statistics.Errors++;
        }
        else if (operation == OperationRead)
        {
            statistics.Reads++;
        }
        else if (operation == OperationWrite)
        {
            statistics.Writes++;
        }
        else
        {
            statistics.Flushes++;
        }
    }

    private byte Execute(ReadOnlySpan<byte> request)
    {
        byte operation = request[0];
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(request[4..]);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(request[8..]);
        ulong buffer = BinaryPrimitives.ReadUInt64LittleEndian(request[16..]);
        if (operation == OperationFlush)
        {
            return Flush();
        }
        if (operation is not (OperationRead or OperationWrite) || length == 0 || length % SectorSize != 0 || length > MaximumTransfer ||
            sector > (ulong)backend.SectorCount || length / SectorSize > (ulong)backend.SectorCount - sector)
        {
            BadRequests++;
            return StatusBadRequest;
        }
        if (operation == OperationWrite && backend.ReadOnly)
        {
            WriteProtectedRequests++;
            return StatusWriteProtected;
        }
        bool isRead = operation == OperationRead;
        // Every page of the buffer is translated before a byte moves, so a blocked page leaves memory and disk as they
        // were (the whole request fails with a DMA fault).
        if (!dma.TryTranslate(buffer, (int)length, deviceWrites: isRead, hostPages, out _, out ulong fault))
        {
            Fault(fault);
            DmaFaultRequests++;
            return StatusDmaFault;
        }
        var data = transfer.AsSpan(0, (int)length);
        try
        {
            if (isRead)
            {
                backend.Read((long)sector, data);
                dma.Write(buffer, hostPages, data);
                statistics.BytesRead += length;
            }
            else
            {
                dma.Read(buffer, hostPages, data);
                backend.Write((long)sector, data);
                statistics.BytesWritten += length;
            }
            return StatusDone;
        }
        catch (IOException)
        {
            IoErrors++;
            return StatusIoError;
        }
    }

    private byte Flush()
    {
        try
        {
            backend.Flush();
            return StatusDone;
        }
        catch (IOException)
        {
            IoErrors++;
            return StatusIoError;
        }
    }

    private void Fault(ulong address)
    {
        faultAddress = address;
        interruptStatus |= InterruptDmaFault;
        UpdateLine();
    }

    // The level line: asserted while an enabled interrupt cause is pending.
    private void UpdateLine()
    {
        if ((control & ControlInterruptOnCompletion) != 0 && interruptStatus != 0)
        {
            if (!line.Asserted)
            {
                statistics.Interrupts++;
            }
            line.Raise();
        }
        else
        {
            line.Lower();
        }
    }

    /// <summary>Gives the IOMMU's tables back (the VM is going).</summary>
    public void Dispose() => dma.Dispose();

    /// <inheritdoc/>
    public string SectionTag => $"NDM{Index}";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <summary>The registers and the latched ring; the IOMMU's tables are the VMM's and are programmed again.</summary>
    public void Save(SnapshotWriter writer)
    {
        writer.WriteUInt64(ringBase);
        writer.WriteUInt32(ringSize);
        writer.WriteUInt32(control);
        writer.WriteUInt32(completed);
        writer.WriteUInt32(interruptStatus);
        writer.WriteUInt64(faultAddress);
        writer.WriteUInt64(activeRingBase);
        writer.WriteUInt32(activeRingSize);
    }

    /// <inheritdoc/>
    public void Restore(SnapshotReader reader, ushort version)
    {
        ulong savedRingBase = reader.ReadUInt64();
        uint savedRingSize = reader.ReadUInt32();
        uint savedControl = reader.ReadUInt32();
        uint savedCompleted = reader.ReadUInt32();
        uint savedStatus = reader.ReadUInt32();
        ulong savedFault = reader.ReadUInt64();
        ulong savedActiveBase = reader.ReadUInt64();
        uint savedActiveSize = reader.ReadUInt32();
        if ((savedControl & ~(ControlEnable | ControlInterruptOnCompletion)) != 0 || (savedStatus & ~(InterruptCompletion | InterruptDmaFault)) != 0 ||
            ((savedControl & ControlEnable) != 0 && (savedActiveSize == 0 || savedActiveSize > MaximumRingSize ||
                                                     (savedActiveSize & (savedActiveSize - 1)) != 0 || (savedActiveBase & 0xFFF) != 0)))
        {
            throw reader.Invalid($"controller state control=0x{savedControl:x} status=0x{savedStatus:x} ring=0x{savedActiveBase:x}/{savedActiveSize} is impossible");
        }
        (ringBase, ringSize, control, completed, interruptStatus, faultAddress, activeRingBase, activeRingSize) =
            (savedRingBase, savedRingSize, savedControl, savedCompleted, savedStatus, savedFault, savedActiveBase, savedActiveSize);
        UpdateLine();
    }
}
