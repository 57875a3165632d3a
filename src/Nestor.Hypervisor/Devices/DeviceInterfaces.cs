namespace Nestor.Hypervisor.Devices;

/// <summary>A device on the I/O-port bus. Access sizes are 1, 2 or 4 bytes.</summary>
public interface IPortDevice
{
    /// <summary>Short name for statistics and diagnostics, e.g. <c>com1</c>.</summary>
    string Name { get; }

    /// <summary>An IN from <paramref name="port"/>; the result is truncated to <paramref name="size"/> bytes.</summary>
    uint Read(ushort port, int size);

    /// <summary>An OUT of <paramref name="value"/> (already truncated to <paramref name="size"/> bytes) to <paramref name="port"/>.</summary>
    void Write(ushort port, int size, uint value);
}

/// <summary>A device mapped at guest-physical addresses outside RAM (memory-mapped I/O). Size is 1, 2, 4 or 8 bytes.</summary>
public interface IMmioDevice
{
    string Name { get; }

    ulong Read(ulong address, int size);

    void Write(ulong address, int size, ulong value);
}
