using Iced.Intel;

namespace Nestor.Hypervisor.Engines;

/// <summary>Turns instruction bytes into assembly text for diagnostics.</summary>
public static class InstructionText
{
    /// <summary>Disassembles the first instruction of <paramref name="bytes"/> at <paramref name="address"/>, or
    /// returns null when the bytes are not a valid instruction.</summary>
    public static string? Disassemble(ReadOnlySpan<byte> bytes, ulong address, int bitness = 64)
    {
        if (bytes.IsEmpty)
        {
            return null;
        }
        var decoder = Decoder.Create(bitness, new ByteArrayCodeReader(bytes.ToArray()), address);
        decoder.Decode(out var instruction);
        if (instruction.IsInvalid)
        {
            return null;
        }
        var output = new StringOutput();
        new IntelFormatter().Format(instruction, output);
        return output.ToStringAndReset();
    }

    /// <summary>Length of the first instruction in <paramref name="bytes"/>, or 0 if invalid.</summary>
    public static int Length(ReadOnlySpan<byte> bytes, int bitness = 64)
    {
        var decoder = Decoder.Create(bitness, new ByteArrayCodeReader(bytes.ToArray()), 0);
        decoder.Decode(out var instruction);
        return instruction.IsInvalid ? 0 : instruction.Length;
    }

    /// <summary>Bytes as <c>0f 0b 90</c>.</summary>
    public static string Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexString(bytes).ToLowerInvariant() is var h
        ? string.Join(' ', Enumerable.Range(0, bytes.Length).Select(i => h.Substring(i * 2, 2)))
        : "";
}
