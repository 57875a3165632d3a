namespace Nestor.Hypervisor.Devices.Legacy.Ata;

/// <summary>Bits of the Status register (ATA/ATAPI-6 §7.15; the Alternate Status register holds the same).</summary>
public static class AtaStatus
{
    /// <summary>BSY: the device owns the registers.</summary>
    public const byte Busy = 0x80;

    /// <summary>DRDY: the device accepts commands.</summary>
    public const byte DeviceReady = 0x40;

    /// <summary>DF: device fault.</summary>
    public const byte DeviceFault = 0x20;

    /// <summary>Bit 4: DSC (device seek complete) before ATA-6, command dependent since; set whenever the device is
    /// ready, as drives and QEMU's IDE report it (status 0x50 when idle).</summary>
    public const byte SeekComplete = 0x10;

    /// <summary>DRQ: the device is ready to transfer a block of data through the Data register.</summary>
    public const byte DataRequest = 0x08;

    /// <summary>ERR: the command ended in an error; the Error register says which.</summary>
    public const byte Error = 0x01;

    /// <summary>What an idle device that passed its diagnostics shows.</summary>
    public const byte Ready = DeviceReady | SeekComplete;
}

/// <summary>Bits of the Error register (ATA/ATAPI-6 §7.9).</summary>
public static class AtaError
{
    /// <summary>UNC: data could not be read (here: the host's read of the image failed).</summary>
    public const byte Uncorrectable = 0x40;

    /// <summary>IDNF: the address is outside the user-addressable sectors.</summary>
    public const byte IdNotFound = 0x10;

    /// <summary>ABRT: the command was aborted (not supported, invalid parameters, write-protected medium).</summary>
    public const byte Aborted = 0x04;

    /// <summary>After a reset or EXECUTE DEVICE DIAGNOSTIC: the diagnostic code "device 0 passed, device 1 passed or
    /// not present" (§8.11, Table 10).</summary>
    public const byte DiagnosticsPassed = 0x01;
}

/// <summary>The Device Control register's bits (ATA/ATAPI-6 §7.8).</summary>
public static class AtaDeviceControl
{
    /// <summary>HOB: reads of the command block return the previous ("high order") bytes of 48-bit commands.</summary>
    public const byte HighOrderByte = 0x80;

    /// <summary>SRST: software reset of both devices while set.</summary>
    public const byte SoftwareReset = 0x04;

    /// <summary>nIEN: the selected device does not assert INTRQ.</summary>
    public const byte InterruptDisable = 0x02;
}

/// <summary>The commands the emulated disk executes (ATA/ATAPI-6 §8); every other command ends with ABRT.</summary>
public static class AtaCommand
{
    public const byte ReadSectors = 0x20;
    public const byte ReadSectorsExt = 0x24;
    public const byte ReadMultipleExt = 0x29;
    public const byte WriteSectors = 0x30;
    public const byte WriteSectorsExt = 0x34;
    public const byte WriteMultipleExt = 0x39;
    public const byte ExecuteDeviceDiagnostic = 0x90;
    public const byte ReadMultiple = 0xC4;
    public const byte WriteMultiple = 0xC5;
    public const byte SetMultipleMode = 0xC6;
    public const byte FlushCache = 0xE7;
    public const byte FlushCacheExt = 0xEA;
    public const byte IdentifyDevice = 0xEC;
    public const byte SetFeatures = 0xEF;
}
