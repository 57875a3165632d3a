using System.Buffers.Binary;

namespace Nestor.Hypervisor.Devices.Virtio.Console;

/// <summary>virtio-console (virtio 1.2 §5.3, device ID 3) with one port: queue 0 is port 0's receiveq, queue 1 its
/// transmitq. What the guest transmits goes to the VM's console output (<see cref="Configuration.VmConfig.SerialOutput"/>,
/// where COM1 writes, after COM1's buffered line so that the two stay in order); the receiveq is filled from
/// <see cref="Configuration.VmConfig.VirtioConsoleInput"/>, read when the driver makes receive buffers available (a
/// notify, or DRIVER_OK): the input is read without waiting, so it suits a stream whose bytes are all there (a file,
/// a test's memory), not a terminal. It offers VIRTIO_CONSOLE_F_EMERG_WRITE (§5.3.4): a byte written to emerg_wr is
/// output at once, with no queue.</summary>
public sealed class VirtioConsole : IVirtioDevice
{
    /// <summary>VIRTIO_CONSOLE_F_EMERG_WRITE (2).</summary>
    public const ulong FeatureEmergencyWrite = 1UL << 2;

    /// <summary>Queue indices of port 0 (§5.3.2).</summary>
    public const int ReceiveQueue = 0, TransmitQueue = 1;

    /// <summary>Each queue's size.</summary>
    public const ushort QueueSize = 64;

    private const int ConfigLength = 12; // cols, rows, max_nr_ports, emerg_wr (§5.3.4)
    private const int BufferBytes = 4096;

    private readonly Stream output;
    private readonly Stream input;
    private readonly Action? beforeOutput;
    private readonly byte[] transmitBuffer = new byte[BufferBytes];
    private readonly byte[] pendingInput = new byte[BufferBytes];
    private int pendingCount;

    /// <summary>A console writing to <paramref name="output"/> (after <paramref name="beforeOutput"/>, which flushes
    /// what else shares it) and reading <paramref name="input"/>.</summary>
    public VirtioConsole(Stream output, Stream input, Action? beforeOutput = null)
    {
        this.output = output;
        this.input = input;
        this.beforeOutput = beforeOutput;
    }

    public string Name => "virtio-console";

    public VirtioDeviceType DeviceType => VirtioDeviceType.Console;

    public ulong DeviceFeatures => FeatureEmergencyWrite;

    public int QueueCount => 2;

    public ushort MaximumQueueSize(int queue) => QueueSize;

    public int ConfigSize => ConfigLength;

    /// <summary>Bytes the guest transmitted (queue and emergency write).</summary>
    public long BytesTransmitted { get; private set; }

    /// <summary>Bytes given to the guest through the receiveq.</summary>
    public long BytesReceived { get; private set; }

    /// <summary>Attaches a virtio-console to the next free virtio-mmio slot (after the virtio-blk disks) when the
    /// configuration asks for one (<see cref="Configuration.VmConfig.VirtioConsole"/>).</summary>
    internal static void AttachIfConfigured(Vm vm)
    {
        if (!vm.Config.VirtioConsole)
        {
            return;
        }
        int slot = vm.Config.Disks.Count(d => d.Interface == Storage.DiskInterface.Virtio);
        VirtioSlots.Attach(vm, new VirtioConsole(vm.Config.SerialOutput, vm.Config.VirtioConsoleInput, vm.Serial.Flush), slot);
    }

    public void ReadConfig(int offset, Span<byte> destination)
    {
        // cols and rows are VIRTIO_CONSOLE_F_SIZE's, max_nr_ports VIRTIO_CONSOLE_F_MULTIPORT's (neither offered): 0;
        // emerg_wr is write-only and reads 0.
        Span<byte> config = stackalloc byte[ConfigLength];
        config.Clear();
        config.Slice(offset, destination.Length).CopyTo(destination);
    }

    public void WriteConfig(int offset, ReadOnlySpan<byte> source)
    {
        // §5.3.4: a write to emerg_wr (offset 8) outputs its low byte, the character.
        if (offset == 8)
        {
            Span<byte> character = [source[0]];
            Emit(character);
            output.Flush();
        }
    }

    public void Activate(ulong negotiated)
    {
    }

    public void Reset()
    {
    }

    public void Process(int index, SplitVirtqueue queue)
    {
        if (index == TransmitQueue)
        {
            Transmit(queue);
        }
        else
        {
            Receive(queue);
        }
    }

    private void Transmit(SplitVirtqueue queue)
    {
        bool any = false;
        while (queue.TryTake(out var chain))
        {
            for (long done = 0; done < chain.ReadableLength;)
            {
                int n = (int)Math.Min(BufferBytes, chain.ReadableLength - done);
                var bytes = transmitBuffer.AsSpan(0, n);
                if (!chain.Read(done, bytes))
                {
                    queue.Fail(VirtqueueFault.OutsideRam);
                    return;
                }
                Emit(bytes);
                done += n;
            }
            any = true;
            queue.Complete(chain, 0);
        }
        if (any)
        {
            output.Flush();
        }
    }

    private void Emit(ReadOnlySpan<byte> bytes)
    {
        beforeOutput?.Invoke();
        output.Write(bytes);
        BytesTransmitted += bytes.Length;
    }

    private void Receive(SplitVirtqueue queue)
    {
        while (true)
        {
            if (pendingCount == 0)
            {
                pendingCount = input.Read(pendingInput, 0, pendingInput.Length);
                if (pendingCount <= 0)
                {
                    pendingCount = 0;
                    return; // nothing to give: the buffers wait
                }
            }
            if (!queue.TryTake(out var chain))
            {
                return;
            }
            int n = (int)Math.Min(pendingCount, chain.WritableLength);
            if (!chain.Write(0, pendingInput.AsSpan(0, n)))
            {
                queue.Fail(VirtqueueFault.OutsideRam);
                return;
            }
            pendingInput.AsSpan(n, pendingCount - n).CopyTo(pendingInput);
            pendingCount -= n;
            BytesReceived += n;
            queue.Complete(chain, (uint)n);
        }
    }

    /// <summary>The counters and the input read but not yet given to the guest.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteInt64(BytesTransmitted);
        writer.WriteInt64(BytesReceived);
        writer.WriteInt32(pendingCount);
        writer.WriteBytes(pendingInput.AsSpan(0, pendingCount));
    }

    public void Restore(Persistence.SnapshotReader reader)
    {
        BytesTransmitted = reader.ReadInt64();
        BytesReceived = reader.ReadInt64();
        int count = reader.ReadInt32();
        if (count is < 0 or > BufferBytes)
        {
            throw reader.Invalid($"{count} bytes of console input pending, more than the {BufferBytes} the device holds");
        }
        reader.ReadBytes(count).CopyTo(pendingInput);
        pendingCount = count;
    }
}
