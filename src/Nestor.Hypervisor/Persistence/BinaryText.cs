using System.Text;

namespace Nestor.Hypervisor.Persistence;

/// <summary>A string in Nestor's binary formats (the snapshot file, the migration stream): its UTF-8 length as a
/// 32-bit integer, then the bytes. A reader refuses a length that is negative or runs past the end, so that a
/// corrupt length cannot make it allocate or read what is not there.</summary>
internal static class BinaryText
{
    public static void Write(BinaryWriter w, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        w.Write(bytes.Length);
        w.Write(bytes);
    }

    /// <param name="bad">Makes the format's own exception from what was wrong.</param>
    public static string Read(BinaryReader r, Func<string, Exception> bad)
    {
        int length = r.ReadInt32();
        if (length < 0 || length > r.BaseStream.Length - r.BaseStream.Position)
        {
            throw bad($"a text of {length} bytes");
        }
        return Encoding.UTF8.GetString(r.ReadBytes(length));
    }
}
