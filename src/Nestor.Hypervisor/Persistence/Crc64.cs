namespace Nestor.Hypervisor.Persistence;

/// <summary>CRC-64 with the polynomial Firecracker's snapshots use (its <c>crc64</c> crate, since 1.x the
/// <c>Crc64Redis</c> algorithm): Jones' polynomial 0xAD93D23594C935A9, reflected input and output, initial value 0,
/// no final XOR — the catalogue's CRC-64/REDIS, whose check value (the CRC of the ASCII bytes "123456789") is
/// 0xE9C6D914C4B8D9CA. Table-driven, a byte at a time (Sarwate's method): reflected, so the table holds the
/// remainder of each byte shifted out of the low end.</summary>
public static class Crc64
{
    /// <summary>Jones' polynomial in reflected (LSB-first) form.</summary>
    public const ulong ReflectedPolynomial = 0x95AC9329AC4BC9B5;

    private static readonly ulong[] Table = BuildTable();

    /// <summary>The CRC of <paramref name="data"/>, continuing from <paramref name="crc"/> (0 to start).</summary>
    public static ulong Compute(ReadOnlySpan<byte> data, ulong crc = 0)
    {
        var table = Table;
        foreach (byte b in data)
        {
            crc = table[(byte)(crc ^ b)] ^ (crc >> 8);
        }
        return crc;
    }

    private static ulong[] BuildTable()
    {
        var table = new ulong[256];
        for (int i = 0; i < 256; i++)
        {
            ulong r = (ulong)i;
            for (int bit = 0; bit < 8; bit++)
            {
                r = (r & 1) != 0 ? (r >> 1) ^ ReflectedPolynomial : r >> 1;
            }
            table[i] = r;
        }
        return table;
    }
}
